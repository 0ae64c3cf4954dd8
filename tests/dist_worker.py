"""Run under torchrun by tests/test_distributed.py (2 processes, gloo): the checks that need each
rank's own view. Each rank writes what it saw to OUT/rank<R>.json; the test compares them.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/dist_worker.py SPEC.json OUT

SPEC: {"model": tiny model directory, "jobs": [{"name": ..., "config": TrainConfig fields}, ...]}; a job
with "pretrain": PretrainSettings fields runs `bertfit pretrain`'s job instead of fine_tune.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch


def gathered_evaluation(d, model_dir: Path) -> dict:
    """dist.map_sharded over 7, 40 and 101 texts: every output once, in input order, equal to one process's."""
    from bertfit.weights import load_model
    from bertfit.inference import predict_logits
    from bertfit.tokenizer import WordPieceTokenizer

    torch.manual_seed(0)
    model = load_model(model_dir, ["a", "b", "c"])
    d.broadcast_module(model, "test weights")
    tokenizer = WordPieceTokenizer.from_dir(model_dir)
    rng = np.random.default_rng(5)
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import NEGATIVE, POSITIVE, WORDS

    words = WORDS + POSITIVE + NEGATIVE
    out = {}
    for n in (7, 40, 101):
        texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 30)))) for _ in range(n)]
        encoded = tokenizer.encode(texts, None, max_length=48)
        whole = predict_logits(model, encoded, tokenizer.pad_id, torch.device("cpu"), 4096)
        mine: list[int] = []

        def run(idx: list[int]) -> np.ndarray:
            mine.extend(idx)
            return predict_logits(model, [encoded[i] for i in idx], tokenizer.pad_id, torch.device("cpu"), 4096)

        sharded = d.map_sharded(n, run, f"test gather {n}")
        order = d.map_sharded(n, lambda idx: [int(i) for i in idx], f"test order {n}")
        out[str(n)] = {"max_diff": float(np.abs(sharded - whole).max()), "shape": list(sharded.shape),
                       "order": order, "mine": mine}
    return out


def agreement(d) -> dict:
    """on_writer: rank 0's result, or rank 0's error, on every rank; all_reduce_sum sums."""
    from bertfit.errors import DataError

    result = d.on_writer(lambda: {"from": d.rank}, "test decision")
    try:
        d.on_writer(lambda: (_ for _ in ()).throw(DataError("rank 0 refused")), "test refusal")
        error = None
    except DataError as exc:
        error = str(exc)
    return {"result": result, "error": error, "sum": d.all_reduce_sum([d.rank + 1, 0.5], "test sum")}


def train_jobs(jobs: list[dict]) -> dict[str, list[str]]:
    """Each job's fine_tune (or pretrain), with every function that writes the run directory (and the
    progress callback) wrapped: per job, the names this rank called."""
    import bertfit.artifact as artifact
    import bertfit.io as io
    import bertfit.train.finetune as job
    import bertfit.weights as weights
    from bertfit.train.pretrain import PretrainSettings, pretrain
    from bertfit.train.run_dir import RunDir
    from bertfit.train.config import TrainConfig

    called: list[str] = []

    def spy(owner, name):
        real = getattr(owner, name)

        def wrapper(*args, **kwargs):
            called.append(name)
            return real(*args, **kwargs)

        setattr(owner, name, wrapper)

    for name in ("create", "append_log", "sync_log", "save_checkpoint", "truncate_log", "set_aside_after", "replace"):
        spy(RunDir, name)
    for name in ("write_json_atomic", "save_model", "write_task"):
        spy(job, name)
    import bertfit.report as report

    spy(report, "write_report")  # job imports it when it writes the report
    # pretrain imports these when it runs
    for owner, name in ((io, "write_json_atomic"), (weights, "save_model"), (artifact, "write_task")):
        spy(owner, name)
    writes = {}
    for spec in jobs:
        called.clear()
        progress = lambda record, state, total: called.append("progress")  # noqa: E731
        if "pretrain" in spec:
            pretrain(TrainConfig(**spec["config"]), PretrainSettings(**spec["pretrain"]), callback=progress)
        else:
            job.fine_tune(TrainConfig(**spec["config"]), callback=progress)
        writes[spec["name"]] = list(called)
    return writes


def main() -> None:
    spec_path, out = Path(sys.argv[1]), Path(sys.argv[2])
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    from bertfit.train import dist

    d = dist.init(torch.device("cpu"))
    rank = d.rank
    report = {"rank": rank, "world": d.world, "gather": gathered_evaluation(d, Path(spec["model"])),
              "agreement": agreement(d)}
    report["writes"] = train_jobs(spec["jobs"])  # fine_tune adopts this process group
    (out / f"rank{rank}.json").write_text(json.dumps(report), encoding="utf-8")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    main()
