#!/bin/bash
# A run written by the code before the task seam (806cb43, the last commit of single-label-only bertfit),
# killed by kill -9 after step 5, resumed by the current code: the resumed log and final weights must equal
# the old code's uninterrupted run (measured: identical losses and batch hashes, max weight diff 0.0).
# Run from the repository: bash benchmarks/adhoc/old_run_resume.sh
rm -rf /tmp/oldrun && mkdir -p /tmp/oldrun
ROOT=$(git rev-parse --show-toplevel); cd "$ROOT"
git worktree add -f /tmp/oldrun/old 806cb43 -q 2>/dev/null || true
PY="$ROOT/.venv/bin/python"
$PY - <<'PY'
import sys; sys.path.insert(0, "tests")
from pathlib import Path
from conftest import build_tiny_model_dir, synthetic_rows, write_csv
build_tiny_model_dir(Path("/tmp/oldrun/model"))
write_csv(Path("/tmp/oldrun/data.csv"), synthetic_rows(300, seed=1))
PY
ARGS="train --train-file /tmp/oldrun/data.csv --model /tmp/oldrun/model --max-steps 12 --batch-size 16 --save-every 2 --eval-every 6 --threads 1 --max-length 32"
# old code, killed right after step 5
BERTFIT_KILL_AT_STEP=5 PYTHONPATH=/tmp/oldrun/old/src $PY -m bertfit $ARGS --output-dir /tmp/oldrun/run || echo "old run killed (exit $?)"
ls /tmp/oldrun/run/checkpoints
# new code resumes it
PYTHONPATH="$ROOT/src" $PY -m bertfit train --resume /tmp/oldrun/run 2>&1 | tail -5
# reference: the old code uninterrupted
PYTHONPATH=/tmp/oldrun/old/src $PY -m bertfit $ARGS --output-dir /tmp/oldrun/ref > /dev/null 2>&1
$PY - <<'PY'
import json
def losses(p): return [(r["step"], r["loss"], r.get("batch_hash")) for r in map(json.loads, open(p)) if r.get("kind") == "train"]
a, b = losses("/tmp/oldrun/run/metrics.jsonl"), losses("/tmp/oldrun/ref/metrics.jsonl")
print("resumed == uninterrupted old run:", a == b, len(a))
from safetensors.torch import load_file
x, y = load_file("/tmp/oldrun/run/model.safetensors"), load_file("/tmp/oldrun/ref/model.safetensors")
print("max weight diff:", max(float((x[k] - y[k]).abs().max()) for k in x))
PY
