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
ARGS="train --train-file /tmp/oldrun/data.csv --model /tmp/oldrun/model --max-steps 12 --batch-size 16 --save-every 2 --eval-every 6 --threads 1 --max-length 32 --log-every 1"
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

# --- Part 2 (issue 34): runs written by 8f04a1e, the last commit before the package layout (flat
# modules: bertfit.job, bertfit.checkpoints, bertfit.pretraining.job), read by the current code.
# For a classification run and a pretraining run: the old code is killed after step 5, the current
# code resumes it, and the result must equal the old code's uninterrupted run (losses, batch hashes,
# weights bit for bit); a finished old classification run must predict identically under both codes.
OLD=8f04a1e
git worktree add -f /tmp/oldrun/pre $OLD -q 2>/dev/null || true
$PY - <<'PY'
import sys; sys.path.insert(0, "tests")
from conftest import synthetic_rows
with open("/tmp/oldrun/corpus.txt", "w") as f:
    for i, (text, _) in enumerate(synthetic_rows(400, seed=2)):
        f.write(text + ("\n\n" if i % 5 == 4 else "\n"))
PY
compare() {  # compare RUN REF: losses and batch hashes, then weights
$PY - "$1" "$2" <<'PY'
import json, sys
from safetensors.torch import load_file
def losses(p): return [(r["step"], r["loss"], r.get("batch_hash")) for r in map(json.loads, open(p)) if r.get("kind") == "train"]
run, ref = sys.argv[1], sys.argv[2]
a, b = losses(f"{run}/metrics.jsonl"), losses(f"{ref}/metrics.jsonl")
x, y = load_file(f"{run}/model.safetensors"), load_file(f"{ref}/model.safetensors")
print(f"{run}: resumed == uninterrupted old run: {a == b} ({len(a)} steps); max weight diff:",
      max(float((x[k] - y[k]).abs().max()) for k in x))
PY
}
CLS="train --train-file /tmp/oldrun/data.csv --model /tmp/oldrun/model --max-steps 12 --batch-size 16 --save-every 2 --eval-every 6 --threads 1 --max-length 32 --log-every 1"
PRE="pretrain --corpus /tmp/oldrun/corpus.txt --model /tmp/oldrun/model --max-steps 12 --batch-size 8 --save-every 2 --threads 1 --max-length 32 --log-every 1"
for job in CLS PRE; do
  args=${!job}; name=$(echo $job | tr A-Z a-z)
  BERTFIT_KILL_AT_STEP=5 PYTHONPATH=/tmp/oldrun/pre/src $PY -m bertfit $args --output-dir /tmp/oldrun/pre-$name || echo "old $name run killed (exit $?)"
  command=${args%% *}
  PYTHONPATH="$ROOT/src" $PY -m bertfit $command --resume /tmp/oldrun/pre-$name 2>&1 | tail -2
  PYTHONPATH=/tmp/oldrun/pre/src $PY -m bertfit $args --output-dir /tmp/oldrun/pre-$name-ref > /dev/null 2>&1
  compare /tmp/oldrun/pre-$name /tmp/oldrun/pre-$name-ref
done
# an old finished run predicts the same under the old and the current code (PyTorch engine: exact)
PYTHONPATH=/tmp/oldrun/pre/src $PY -m bertfit predict /tmp/oldrun/pre-cls-ref --file /tmp/oldrun/data.csv --engine pytorch --output /tmp/oldrun/old-pred.csv > /dev/null 2>&1
PYTHONPATH="$ROOT/src" $PY -m bertfit predict /tmp/oldrun/pre-cls-ref --file /tmp/oldrun/data.csv --engine pytorch --output /tmp/oldrun/new-pred.csv > /dev/null 2>&1
cmp /tmp/oldrun/old-pred.csv /tmp/oldrun/new-pred.csv && echo "old run predicts identically under the current code ($(wc -l < /tmp/oldrun/new-pred.csv) lines)"
