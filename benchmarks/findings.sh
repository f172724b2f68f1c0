#!/usr/bin/env bash
# The sweeps behind docs/findings.md: every task the harness runs here, three seeds each, one process per seed
# (a killed run keeps the seeds already written). One thread on one core, so that timings do not depend on what
# else the machine runs:  CORE=1 benchmarks/findings.sh [seeds...]   then   python benchmarks/findings.py
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
CORE=${CORE:-1}
OUT=${OUT:-results/findings}
SEEDS=${*:-0 1 2}
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
run() {  # run <folder> <seed> <recycle bench arguments...>
  local folder=$1 seed=$2; shift 2
  if ls "$OUT/$folder"/*-seed"$seed".json >/dev/null 2>&1; then echo "skip $folder seed $seed (done)"; return; fi
  echo "== $folder seed $seed  $(date -u +%H:%M:%S)"
  taskset -c "$CORE" "$BIN/recycle" bench "$@" --seeds "$seed," --out "$OUT/$folder.part"
  mkdir -p "$OUT/$folder" && mv "$OUT/$folder.part"/*.json "$OUT/$folder/" && rm -rf "$OUT/$folder.part"
}
RT="--task seq-cls --dataset rotten_tomatoes --model minilm --train 3000 --test 1000 --epochs 2 --max-length 64"
WNUT="--task token-cls --dataset wnut16 --model minilm --epochs 3 --max-length 64 --lr 1e-4 --codecs '' --no-lora"
FMNIST="--task image-cls --dataset fashion_mnist --model efficientnet-lite0 --train 4000 --test 1000 --epochs 2 --lr 1e-3 --codecs ''"
MPNET="--task seq-cls --dataset rotten_tomatoes --model mpnet --train 1000 --test 500 --epochs 2 --max-length 64 --levels 0.25,0.5,0.75 --codecs '' --no-lora"
IMDB="--task seq-cls --dataset imdb --model minilm --train 1000 --test 500 --epochs 2 --max-length 256 --codecs '' --no-lora"
for seed in $SEEDS; do run rt-minilm "$seed" $RT; done
for seed in $SEEDS; do
  eval run wnut16-minilm "$seed" $WNUT
  eval run fashion_mnist-efficientnet-lite0 "$seed" $FMNIST
  eval run rt-mpnet "$seed" $MPNET
  eval run imdb-minilm "$seed" $IMDB
done
