# Sourced by the adhoc example scripts: writes "$OUT/machine.json" (commit, lscpu model and the flags that
# decide kernels, the cores this process may use, OMP_NUM_THREADS) beside their outputs. Needs $PY and $OUT.
"$PY" - "$OUT/machine.json" <<'PYEOF'
import json, subprocess, sys, os
lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
model = next(l.split(":", 1)[1].strip() for l in lscpu.splitlines() if l.startswith("Model name"))
flags = next(l.split(":", 1)[1].split() for l in lscpu.splitlines() if l.startswith("Flags"))
record = {"commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
          "cpu_model": model, "cpu_flags": [f for f in flags if f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")],
          "cpu_affinity": sorted(os.sched_getaffinity(0)), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
open(sys.argv[1], "w").write(json.dumps(record, indent=2) + "\n")
PYEOF
