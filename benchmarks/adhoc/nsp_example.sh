#!/usr/bin/env bash
# The README's short NSP / fill-mask example, re-run as printed there with its outputs kept (issue 32).
#   taskset -c 1 env OMP_NUM_THREADS=1 bash benchmarks/adhoc/nsp_example.sh RUN_DIR OUT_DIR
# Quality output only (no timing): OUT_DIR/{commit.txt,pretrain.log,nsp.txt,fill_mask.txt,metrics.json}.
set -euo pipefail
RUN=${1:?run directory}; OUT=${2:?output directory}
PY=${PYTHON:-/work/main/.venv/bin/python}
export PYTHONPATH=$PWD/src
DATA=../shared/data/unlabelled
mkdir -p "$OUT"
{ git rev-parse HEAD; lscpu | grep 'Model name'; echo "OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset} --threads 1"; } > "$OUT/commit.txt"
"$PY" -m bertfit pretrain --corpus $DATA/wnut17_raw_gurez.10000.txt $DATA/wnut17_raw_yt-filter.txt --max-documents 4000 \
    --max-length 64 --batch-size 16 --max-steps 60 --lr 1e-4 --eval-every 30 --threads 1 --output-dir "$RUN" \
    > "$OUT/pretrain.log" 2>&1
"$PY" -m bertfit nsp "$RUN" "I took my umbrella this morning." "It rained all day." > "$OUT/nsp.txt" 2>&1
"$PY" -m bertfit fill-mask "$RUN" "That's [MASK] she [MASK]." --top-k 3 > "$OUT/fill_mask.txt" 2>&1
cp "$RUN/metrics.json" "$OUT/metrics.json"
