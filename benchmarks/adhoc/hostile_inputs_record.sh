#!/usr/bin/env bash
# Runs benchmarks/hostile_inputs.py on CPU 1 and records its exit code, commit and output tail as JSON
# (/work/runs/hostile_inputs.json, copied to benchmarks/hostile_inputs.json; issue 32).
cd /work/wt-32f
commit=$(git rev-parse HEAD)
taskset -c 1 env OMP_NUM_THREADS=1 PYTHONPATH=$PWD/src /work/main/.venv/bin/python benchmarks/hostile_inputs.py > /work/runs/hostile.out 2>&1
rc=$?
/work/main/.venv/bin/python - "$commit" "$rc" <<'PY'
import json, sys
out = open("/work/runs/hostile.out").read()
json.dump({"command": "taskset -c 1 env OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/hostile_inputs.py",
           "commit": sys.argv[1], "exit_code": int(sys.argv[2]), "stdout_tail": out[-4000:]},
          open("/work/runs/hostile_inputs.json", "w"), indent=2)
PY
