"""One writer per run directory (train/run_lock.py): a second trainer, `--resume` and `--overwrite` of a
run that is being trained are refused with a message naming the holder, the holder is unharmed, and
a trainer killed with SIGKILL leaves no lock behind that blocks the next run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bertfit.train.run_dir import RunDir
from bertfit.train.run_lock import LOCK_FILE, RunLock, RunLockedError, hold_run, release_run
from conftest import synthetic_rows, write_csv


def train_args(model_dir: Path, csv: Path, run: Path) -> list[str]:
    return ["train", "--model", str(model_dir), "--train-file", str(csv), "--output-dir", str(run), "--max-length", "32",
            "--batch-size", "16", "--log-every", "1", "--save-every", "1", "--epochs", "1", "--threads", "1"]


def bertfit(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("BERTFIT_HANG") and k != "BERTFIT_KILL_AT_STEP"}
    return subprocess.run([sys.executable, "-m", "bertfit", *args], env={**full, **(env or {})}, capture_output=True,
                          text=True, timeout=300)


def start_hanging_trainer(args: list[str], run: Path) -> subprocess.Popen:
    """A trainer that stops at step 2 and waits there (BERTFIT_HANG_AT_STEP), holding the run's lock."""
    env = {**os.environ, "BERTFIT_HANG_AT_STEP": "2"}
    process = subprocess.Popen([sys.executable, "-m", "bertfit", *args], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        if RunDir(run).checkpoint_steps():  # step 1 checkpointed: it is at step 2 now, or about to be
            return process
        if process.poll() is not None:
            raise AssertionError(f"the first trainer ended early: {process.stderr.read()[-2000:]}")
        time.sleep(0.2)
    process.kill()
    raise AssertionError("the first trainer never reached its first checkpoint")


def test_a_lock_is_exclusive_names_its_holder_and_is_given_back(tmp_path):
    run = tmp_path / "run"
    first = RunLock(run, "train")
    first.acquire()
    holder = json.loads((run / LOCK_FILE).read_text())
    assert holder["pid"] == os.getpid() and holder["command"] == "train"
    with pytest.raises(RunLockedError, match=f"process {os.getpid()} on .*bertfit train"):
        RunLock(run, "pretrain").acquire()  # flock is per open file: a second descriptor conflicts, in one process too
    first.release()
    assert not run.exists()  # the lock made the directory, nothing else was written: nothing is left behind
    hold_run(run, "train")
    hold_run(run, "train")  # re-entrant within the process
    release_run(run)
    with pytest.raises(RunLockedError):
        RunLock(run, "train").acquire()
    release_run(run)
    RunLock(run, "train").acquire()  # free again


def test_two_trainers_resume_and_overwrite_while_training_are_refused_and_a_killed_trainer_blocks_nothing(
        tmp_path, tiny_model_dir):
    csv = write_csv(tmp_path / "reviews.csv", synthetic_rows(120, seed=5))
    other = write_csv(tmp_path / "other.csv", synthetic_rows(80, seed=9))
    run = tmp_path / "run"
    first = start_hanging_trainer(train_args(tiny_model_dir, csv, run), run)
    try:
        config_before = (run / "train_config.json").read_bytes()
        entries_before = RunDir(run).entries()
        for args in (train_args(tiny_model_dir, csv, run),  # a second trainer, same settings
                     train_args(tiny_model_dir, other, run) + ["--overwrite"],  # other data, replacing the run
                     ["train", "--resume", str(run)]):  # a resume of the run that is training
            out = bertfit(args)
            assert out.returncode == 3, (args, out.stderr[-2000:])
            assert f"is being written by process {first.pid}" in out.stderr, out.stderr[-2000:]
            assert "Traceback" not in out.stderr
            assert first.poll() is None  # the first trainer is unharmed ...
            assert (run / "train_config.json").read_bytes() == config_before  # ... and so is its run
            assert RunDir(run).entries() == entries_before
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    assert (run / LOCK_FILE).exists()  # a kill -9 leaves the file, but no lock: the kernel dropped it
    resumed = bertfit(["train", "--resume", str(run)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (run / "metrics.json").is_file()
    assert not (run / LOCK_FILE).exists()  # a run that ends gives its lock back


def test_overwrite_keeps_user_files_inside_plots_and_checkpoints(tmp_path):
    run = RunDir(tmp_path / "run")
    run.create()
    (run.path / "train_config.json").write_text("{}")
    (run.path / "report.md").write_text("![loss](plots/loss.png)\n")
    (run.path / "plots").mkdir()
    for name in ("loss.png", "mine.png", "notes.txt"):
        (run.path / "plots" / name).write_text(name)
    (run.checkpoint_path(4)).mkdir()
    (run.checkpoints / "my-notes.txt").write_text("keep")
    (run.checkpoints / "best-by-hand").mkdir()
    (run.path / "notes.md").write_text("mine")
    run.replace()
    left = sorted(str(p.relative_to(run.path)) for p in run.path.rglob("*"))
    assert left == ["checkpoints", "checkpoints/best-by-hand", "checkpoints/my-notes.txt", "notes.md", "plots",
                    "plots/mine.png", "plots/notes.txt"]


def test_a_distributed_job_into_a_locked_run_ends_on_every_rank(tmp_path, tiny_model_dir):
    """Only rank 0 takes the lock, inside on_writer: its refusal reaches every rank, so the job ends at
    once with the message, instead of rank 1 waiting for a rank 0 that left."""
    csv = write_csv(tmp_path / "reviews.csv", synthetic_rows(60, seed=5))
    run = tmp_path / "run"
    hold_run(run, "test")
    try:
        started = time.time()
        out = bertfit([*train_args(tiny_model_dir, csv, run), "--nproc", "2", "--dist-timeout", "120"])
        assert out.returncode != 0 and f"is being written by process {os.getpid()}" in out.stderr, out.stderr[-3000:]
        assert time.time() - started < 110  # ended by the refusal, not by the distributed timeout
        assert "Traceback" not in out.stderr
    finally:
        release_run(run)
