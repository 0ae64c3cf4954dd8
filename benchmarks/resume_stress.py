"""Resume stress test: kill -9 at random steps, crashes at every point inside a checkpoint save,
and hundreds of random checkpoint corruptions. Results go in benchmarks/RESUME_RESULTS.md.

    .venv/bin/python benchmarks/resume_stress.py                     # 20 kills, 2x7 crashes, 300 corruptions
    .venv/bin/python benchmarks/resume_stress.py --kills 5 --corruptions 50 --crash-rounds 0   # quick

Every training run is a real `bertfit train` subprocess on a tiny random BERT (2 layers, hidden 32)
and synthetic sentiment data, one thread, so runs are bit-for-bit comparable on one machine:

1. one uninterrupted reference run;
2. for each of --kills random steps k: a fresh run killed with SIGKILL right after step k's
   optimizer update (BERTFIT_KILL_AT_STEP=k), then `bertfit train --resume RUN` to the end; the
   per-step log (loss, lr, batch hash, epoch), every evaluation, the final and best weights, the
   final optimizer state and metrics.json must be bit-identical to the reference;
3. for each crash point inside a checkpoint save (BERTFIT_CRASH_AT=point@step, at random save
   steps, --crash-rounds times): the crash, a check that every checkpoint left is complete, a
   resume, and the same bit-identity check;
4. --corruptions random corruptions of the newest checkpoint of the reference run (raw damage to
   any file of it, or content damage with a re-signed manifest; the catalogue of
   tests/test_faults.py): each must be detected, with a warning, and the previous checkpoint used.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from bertfit.train.run_dir import CRASH_POINTS, RunDir  # noqa: E402
from bertfit.train.config import TrainConfig  # noqa: E402
from conftest import build_tiny_model_dir, synthetic_rows, write_csv  # noqa: E402
from test_faults import checkpoint_validator, corrupt, corruption_kinds, detects  # noqa: E402

TIMING = ("tokens_per_s", "examples_per_s")


def train_args(model_dir: Path, csv: Path, run: Path, a: argparse.Namespace) -> list[str]:
    return ["--model", str(model_dir), "--train-file", str(csv), "--output-dir", str(run), "--max-length", "32",
            "--batch-size", "16", "--lr", "5e-4", "--log-every", "1", "--save-every", str(a.save_every),
            "--epochs", str(a.epochs), "--eval-every", str(a.eval_every), "--threads", "1"]


def bertfit(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("BERTFIT_KILL_AT_STEP", "BERTFIT_CRASH_AT")}
    full.update(env or {})
    full.setdefault("HF_HUB_OFFLINE", "1")
    return subprocess.run([sys.executable, "-m", "bertfit", "-q", "train", *args], env=full, capture_output=True,
                          text=True, timeout=900)


def differences(run: Path, reference: Path, total: int) -> list[str]:
    """Everything that differs from the reference run (empty: bit-identical)."""
    out = []
    strip = lambda r: {k: v for k, v in r.items() if k not in TIMING}  # noqa: E731
    got, want = [strip(r) for r in RunDir(run).read_log()], [strip(r) for r in RunDir(reference).read_log()]
    if got != want:
        bad = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        out.append(f"log differs from record {bad} ({len(got)} vs {len(want)} records)")
    for name in ("model.safetensors", f"checkpoints/step-{total:08d}/model.safetensors"):
        try:
            a, b = load_file(str(run / name)), load_file(str(reference / name))
        except Exception as exc:  # noqa: BLE001
            out.append(f"{name}: {exc}")
            continue
        if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
            out.append(f"{name} differs")
    pt = f"checkpoints/step-{total:08d}/trainer.pt"
    try:
        oa = torch.load(run / pt, weights_only=True)["optimizer"]["state"]
        ob = torch.load(reference / pt, weights_only=True)["optimizer"]["state"]
        if oa.keys() != ob.keys() or not all(torch.equal(oa[i][k], ob[i][k]) for i in ob for k in ob[i]):
            out.append("final optimizer state differs")
    except Exception as exc:  # noqa: BLE001
        out.append(f"{pt}: {exc}")
    try:
        if json.loads((run / "metrics.json").read_text()) != json.loads((reference / "metrics.json").read_text()):
            out.append("metrics.json differs")
    except OSError as exc:
        out.append(f"metrics.json: {exc}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20, help="random kill -9 points (each a kill + a resume)")
    parser.add_argument("--crash-rounds", type=int, default=2, help="rounds over every crash point inside a save")
    parser.add_argument("--corruptions", type=int, default=300, help="random checkpoint corruptions")
    parser.add_argument("--rows", type=int, default=500, help="synthetic rows (80%% train)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--save-every", type=int, default=4)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--workdir", help="scratch directory (default: a temporary one, removed at the end)")
    parser.add_argument("--json", help="also write the figures here as JSON")
    a = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    rng = random.Random(a.seed)
    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="resume-stress-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, Python {platform.python_version()}")

    model_dir = build_tiny_model_dir(work / "tiny-bert")
    csv = write_csv(work / "reviews.csv", synthetic_rows(a.rows, seed=7))
    reference = work / "reference"
    shutil.rmtree(reference, ignore_errors=True)
    t = time.perf_counter()
    out = bertfit(train_args(model_dir, csv, reference, a))
    if out.returncode != 0:
        print(out.stderr[-3000:])
        return 1
    total = max(r["step"] for r in RunDir(reference).read_log() if r["kind"] == "train")
    saves = [s for s in range(1, total + 1) if s % a.save_every == 0]
    print(f"reference run: {total} steps, checkpoints every {a.save_every} steps, {time.perf_counter() - t:.1f} s")
    figures: dict = {"total_steps": total, "seed": a.seed}

    # -- 1. kill -9 at random steps --------------------------------------------------------
    kill_points = sorted(rng.sample(range(a.save_every + 1, total), min(a.kills, total - a.save_every - 1)))
    identical, failures = 0, []
    t = time.perf_counter()
    for k in kill_points:
        run = work / "kill"
        shutil.rmtree(run, ignore_errors=True)
        killed = bertfit(train_args(model_dir, csv, run, a), {"BERTFIT_KILL_AT_STEP": str(k)})
        resumed = bertfit(["--resume", str(run)])
        problems = []
        if killed.returncode != -9:
            problems.append(f"the kill at step {k} exited {killed.returncode}")
        if resumed.returncode != 0:
            problems.append(f"resume exited {resumed.returncode}: {resumed.stderr[-500:]}")
        problems += differences(run, reference, total) if not problems else []
        identical += not problems
        print(f"  kill -9 after step {k:3d}: {'bit-identical' if not problems else '; '.join(problems)}", flush=True)
        if problems:
            failures.append((k, problems))
    figures["kills"] = {"points": kill_points, "identical": identical, "total": len(kill_points),
                        "seconds": round(time.perf_counter() - t, 1)}
    print(f"kill -9 at random steps: {identical} of {len(kill_points)} bit-identical after resume")

    # -- 2. crash at every point inside a checkpoint save ----------------------------------
    crash_ok, crash_total, crash_lines = 0, 0, []
    t = time.perf_counter()
    for _ in range(a.crash_rounds):
        for point in CRASH_POINTS:
            candidates = [s for s in saves if s > a.save_every]
            if point == "during_prune":  # a prune happens once more than keep_checkpoints (2) + best exist
                candidates = [s for s in candidates if s >= 4 * a.save_every]
            step = rng.choice(candidates)
            run = work / "crash"
            shutil.rmtree(run, ignore_errors=True)
            crashed = bertfit(train_args(model_dir, csv, run, a), {"BERTFIT_CRASH_AT": f"{point}@{step}"})
            rundir = RunDir(run)
            latest = rundir.latest_good_checkpoint()
            problems = []
            if crashed.returncode != 137:
                problems.append(f"exited {crashed.returncode}")
            if latest is None or rundir.skipped:
                problems.append(f"no complete checkpoint to resume from ({rundir.skipped})")
            resumed = bertfit(["--resume", str(run)])
            if resumed.returncode != 0:
                problems.append(f"resume exited {resumed.returncode}: {resumed.stderr[-500:]}")
            else:
                problems += differences(run, reference, total)
            crash_total += 1
            crash_ok += not problems
            line = (f"  crash at {point}@{step}: resumed from step {latest.step if latest else None}, "
                    f"{'bit-identical' if not problems else '; '.join(problems)}")
            crash_lines.append(line)
            print(line, flush=True)
    figures["crashes"] = {"ok": crash_ok, "total": crash_total, "seconds": round(time.perf_counter() - t, 1)}
    if crash_total:
        print(f"crash inside a checkpoint save: {crash_ok} of {crash_total} resumed from a complete checkpoint, bit-identical")

    # -- 3. random corruptions --------------------------------------------------------------
    t = time.perf_counter()
    config = TrainConfig.from_dict(json.loads((reference / "train_config.json").read_text()))
    scratch = work / "corrupt"
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(reference, scratch)
    config = config.replace(output_dir=str(scratch))
    validator = checkpoint_validator(config)
    newest_step = RunDir(scratch).checkpoint_steps()[-1]
    newest = RunDir(scratch).checkpoint_path(newest_step)
    pristine = work / "pristine"
    shutil.rmtree(pristine, ignore_errors=True)
    shutil.copytree(newest, pristine)
    kinds = corruption_kinds()
    detected, by_kind, missed = 0, Counter(), []
    logging.getLogger("bertfit.train.run_dir").setLevel(logging.CRITICAL)  # one warning per corruption otherwise
    for i in range(a.corruptions):
        shutil.rmtree(newest)
        shutil.copytree(pristine, newest)
        kind = rng.choice(kinds)
        corrupt(newest, kind, rng)
        try:
            ok, problem = detects(scratch, validator, newest_step)
        except Exception as exc:  # noqa: BLE001 - a crash of the loader counts as a miss
            ok, problem = False, f"loader raised {type(exc).__name__}: {exc}"
        detected += ok
        by_kind[kind.split(":")[0] if ":" in kind else "content (re-signed)"] += 1
        if not ok:
            missed.append((kind, problem))
            print(f"  MISSED {kind}: {problem}")
    figures["corruptions"] = {"detected": detected, "total": a.corruptions, "by_kind": dict(by_kind),
                              "distinct_kinds": len(kinds), "seconds": round(time.perf_counter() - t, 1)}
    print(f"random checkpoint corruptions: {detected} of {a.corruptions} detected "
          f"({', '.join(f'{k} {n}' for k, n in sorted(by_kind.items()))}; {len(kinds)} distinct kinds)")
    figures["wall_s"] = round(time.perf_counter() - started, 1)
    print(f"wall time: {figures['wall_s']:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps(figures, indent=2) + "\n")
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)
    ok = identical == len(kill_points) and crash_ok == crash_total and detected == a.corruptions
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
