"""The README's small figures about the ONNX Runtime engine, measured and kept (issue 32):
the first-use export's time and size for a MiniLM classifier, and how far ONNX Runtime's
probabilities are from PyTorch's on real tweets.

    flock /work/bench.lock taskset -c 0 env OMP_NUM_THREADS=1 PYTHONPATH=src \\
        .venv/bin/python benchmarks/adhoc/small_claims.py RUN --texts 1000 --out benchmarks/small_claims.json

RUN: a fine-tuned MiniLM run directory (the README's quick job). The export goes into a fresh,
empty cache (``BERTFIT_CACHE`` set to a temporary folder), so it is timed as a first use.
The texts are the first ``--texts`` tweets of the bundled corpus' test split (seed 0).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def machine() -> dict:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    model = next(line.split(":", 1)[1].strip() for line in lscpu if line.startswith("Model name"))
    flags = next(line.split(":", 1)[1].split() for line in lscpu if line.startswith("Flags"))
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent).stdout.strip()
    return {"commit": commit, "cpu_model": model, "cpu_flags": [f for f in flags if f in wanted],
            "cpu_affinity": sorted(os.sched_getaffinity(0)), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    cache = tempfile.mkdtemp(prefix="small-claims-cache-")
    os.environ["BERTFIT_CACHE"] = cache  # read by bertfit.io.cache_dir at call time

    import numpy as np
    import torch

    from bertfit.predict.export import cached_export
    from bertfit.predict.predictor import Predictor
    from bertfit.train.config import TrainConfig
    from bertfit.train.finetune import prepare_data

    texts = [e.text for e in prepare_data(TrainConfig(seed=0)).test[: args.texts]]
    pytorch = Predictor.load(args.run, engine="pytorch")
    started = time.perf_counter()
    exported = cached_export(args.run)  # first use: export, check against PyTorch on the probes, load
    export_s = time.perf_counter() - started
    folders = [p for p in (Path(cache) / "onnx-fp32").iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    files = {p.name: p.stat().st_size for p in folders[0].iterdir() if p.is_file()}
    onnx = Predictor.from_export(exported)
    p_torch, p_onnx = pytorch.predict_proba(texts), onnx.predict_proba(texts)
    l_torch, l_onnx = np.asarray(pytorch.predict_logits(texts)), np.asarray(onnx.predict_logits(texts))
    result = {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "machine": machine(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "run": str(Path(args.run).resolve()),
        "export_first_use_s": export_s,
        "export_files_bytes": files,
        "export_total_mb": sum(files.values()) / 1e6,
        "model_onnx_mb": files.get("model.onnx", 0) / 1e6,
        "texts": len(texts),
        "max_abs_probability_diff": float(np.abs(p_torch - p_onnx).max()),
        "max_abs_logit_diff": float(np.abs(l_torch - l_onnx).max()),
        "label_agreement": float((p_torch.argmax(1) == p_onnx.argmax(1)).mean()),
        "export_check": json.loads((folders[0] / "export.json").read_text()),
    }
    text = json.dumps(result, indent=2)
    print(text)
    args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
