"""--report-to: each tracker read back with its own library (TensorBoard's event reader, MlflowClient,
W&B's offline run files), across a kill -9 and a resume; a failing tracker never stops training;
the hub's queue never makes the loop wait."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import synthetic_rows, write_csv
from bertfit.errors import ConfigError
from bertfit.tracking import parse_report_to
from bertfit.tracking.base import Tracker
from bertfit.tracking.hub import Tracking
from bertfit.train.run_dir import RunDir

STEPS = 8


def bertfit(*args, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           **(env_extra or {})}
    for key in ("BERTFIT_KILL_AT_STEP", "BERTFIT_CRASH_AT"):
        if key not in (env_extra or {}):
            env.pop(key, None)
    return subprocess.run([sys.executable, "-m", "bertfit", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env)


def train_args(model_dir: Path, data: Path, run: Path, *extra) -> list:
    return ["train", "--model", model_dir, "--train-file", data, "--output-dir", run, "--max-length", 32,
            "--batch-size", 16, "--lr", "5e-4", "--threads", 1, "--log-every", 1, "--max-steps", STEPS,
            "--eval-every", 4, "--save-every", 4, *extra]


def train_log(run: Path) -> list[dict]:
    return [r for r in RunDir(run).read_log() if r["kind"] == "train"]


def reported_step_6(run: Path, client) -> bool:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    try:
        run_id = json.loads((run / "tracking.json").read_text())["runs"]["mlflow"]["run_id"]
        events = EventAccumulator(str(run / "tensorboard"))
        events.Reload()
        return (max(s.step for s in events.Scalars("train/loss")) >= 6
                and max(m.step for m in client.get_metric_history(run_id, "train/loss")) >= 6)
    except (OSError, KeyError, ValueError):
        return False


@pytest.fixture
def data(tmp_path) -> Path:
    return write_csv(tmp_path / "d.csv", synthetic_rows(200, seed=3))


def test_tensorboard_and_mlflow_read_back_across_a_kill_and_resume(tmp_path, tiny_model_dir, data, monkeypatch):
    """Killed after step 7 (checkpoint at step 4, steps 5 and 6 already reported), then resumed: TensorBoard's
    reader and MlflowClient each hold every step once, with metrics.jsonl's values; MLflow has the
    settings, final metrics and the run's files, in one run."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    env = {"MLFLOW_TRACKING_URI": f"file:{tmp_path / 'mlruns'}", "MLFLOW_ALLOW_FILE_STORE": "true",
           "MLFLOW_EXPERIMENT_NAME": "bertfit-tests"}
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    args = train_args(tiny_model_dir, data, run, "--report-to", "tensorboard", "mlflow")
    # Held after step 7 (checkpoint at 4) until both trackers show step 6, then killed: the resume must
    # neither log steps 5 and 6 twice nor lose any.
    job = subprocess.Popen([sys.executable, "-m", "bertfit", *map(str, args)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env={**os.environ, **env, "BERTFIT_HANG_AT_STEP": "7"})
    try:
        deadline = time.monotonic() + 240
        while not reported_step_6(run, client):
            assert job.poll() is None and time.monotonic() < deadline, "the trackers never got step 6"
            time.sleep(0.5)
    finally:
        job.kill()
        job.wait()
    out = bertfit("train", "--resume", run, env_extra=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "failed" not in out.stderr, out.stderr[-3000:]
    log = train_log(run)
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    for key, field in (("train/loss", "loss"), ("train/learning_rate", "lr"), ("train/grad_norm", "grad_norm")):
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == list(range(1, STEPS + 1)), key  # each step once: none twice, none lost
        assert [s.value for s in scalars] == pytest.approx([r[field] for r in log], rel=1e-6), key
    assert [s.step for s in events.Scalars("train/tokens_per_s")] == list(range(1, STEPS + 1))
    assert [s.step for s in events.Scalars("eval/macro_f1")] == [4, 8]  # the task's own metric names

    experiment = client.get_experiment_by_name("bertfit-tests")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1  # the resume continued the same tracked run
    tracked = runs[0]
    assert json.loads((run / "tracking.json").read_text())["runs"]["mlflow"]["run_id"] == tracked.info.run_id
    assert tracked.info.status == "FINISHED"
    assert tracked.data.params["lr"] == "0.0005" and tracked.data.params["max_steps"] == str(STEPS)
    assert tracked.data.params["report_to"] == "tensorboard,mlflow"
    assert tracked.data.params["precision.device"] == "cpu" and tracked.data.params["processor"]
    history = client.get_metric_history(tracked.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, STEPS + 1))
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx([r["loss"] for r in log], rel=1e-6)
    assert sorted(m.step for m in client.get_metric_history(tracked.info.run_id, "eval/accuracy")) == [4, 8]
    final = json.loads((run / "metrics.json").read_text())
    assert tracked.data.metrics["final/test/accuracy"] == pytest.approx(final["test"]["accuracy"])
    files = {f.path for f in client.list_artifacts(tracked.info.run_id)}
    assert {"report.md", "report.html", "metrics.json", "README.md", "trainer_state.json", "plots"} <= files


def test_wandb_offline_writes_its_run_and_a_failing_tracker_never_stops_training(tmp_path, tiny_model_dir, data):
    """W&B in offline mode writes its run (history and the run's files) under RUN/wandb; an MLflow
    server that is down is warned about once, and the run finishes as without it."""
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    run = tmp_path / "run"
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}
    out = bertfit(*train_args(tiny_model_dir, data, run, "--report-to", "wandb", "mlflow"), env_extra=env)
    assert out.returncode == 0, out.stderr[-3000:]
    warnings = [line for line in out.stderr.splitlines() if line.startswith("--report-to mlflow")]
    assert len(warnings) == 1 and "training goes on" in warnings[0], out.stderr[-3000:]
    assert (run / "metrics.json").is_file() and (run / "README.md").is_file()
    saved = json.loads((run / "tracking.json").read_text())["runs"]
    assert "mlflow" not in saved
    run_id = saved["wandb"]["id"]
    offline = list((run / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(offline) == 1
    history = (offline[0] / f"run-{run_id}.wandb").read_bytes()
    for key in (b"train/loss", b"train/grad_norm", b"eval/macro_f1", b"final/test/accuracy"):
        assert key in history, key
    kept = {p.relative_to(offline[0] / "files").as_posix() for p in (offline[0] / "files").rglob("*")}
    assert {"report.md", "metrics.json", "README.md", "plots/training_curves.png"} <= kept
    assert saved["wandb"]["logged"]["train/loss"] == STEPS


def test_report_to_parses_and_refuses(tmp_path):
    assert parse_report_to(None) == () and parse_report_to("none") == () and parse_report_to(["none"]) == ()
    assert parse_report_to("tensorboard,mlflow") == ("tensorboard", "mlflow")
    assert parse_report_to(["wandb", "wandb", "tensorboard"]) == ("wandb", "tensorboard")
    with pytest.raises(ConfigError, match="unknown tracker 'comet'"):
        parse_report_to(["comet"])
    with pytest.raises(ConfigError, match="'none' cannot be combined"):
        parse_report_to(["none", "wandb"])
    out = bertfit("train", "--report-to", "comet", "--output-dir", tmp_path / "r")
    assert out.returncode == 2 and "invalid choice: 'comet'" in out.stderr


class Recording(Tracker):
    name = "recording"

    def __init__(self, run_dir, saved, fail: bool = False, hang: threading.Event | None = None) -> None:
        super().__init__(run_dir, saved)
        self.fail, self.hang, self.logged = fail, hang, []

    def start(self, title, params, resume_step):
        return {"id": "r1"}

    def log(self, metrics, step):
        if self.hang is not None:
            self.hang.wait(10)
        if self.fail:
            raise OSError(28, "No space left on device")
        self.logged.append((step, dict(metrics)))

    def close(self, failed=False):
        pass


def hub(tmp_path, *trackers: Tracker) -> Tracking:
    tracking = Tracking(tmp_path, ["tensorboard"])
    tracking.trackers = list(trackers)  # stand-ins, started by hand (the hub's thread does the rest)
    tracking._state = {"report_to": ["recording"], "runs": {}}
    tracking._thread = threading.Thread(target=tracking._work, daemon=True)
    tracking._thread.start()
    tracking._put("start", "title", {}, None)
    return tracking


def test_a_failing_tracker_warns_once_and_the_others_get_every_record(tmp_path, caplog):
    good, bad = Recording(tmp_path, {}), Recording(tmp_path, {}, fail=True)
    bad.name = "broken"
    tracking = hub(tmp_path, bad, good)
    with caplog.at_level(logging.WARNING):
        for step in range(1, 6):
            tracking({"kind": "train", "step": step, "loss": 1.0 / step, "lr": 0.1, "batch_hash": "x"}, None, 5)
        tracking.finish()
    assert [s for s, _ in good.logged] == [1, 2, 3, 4, 5]
    assert good.logged[0][1] == {"train/loss": 1.0, "train/learning_rate": 0.1}
    warned = [r.getMessage() for r in caplog.records if "broken" in r.getMessage()]
    assert len(warned) == 1 and "No space left on device" in warned[0]


def test_a_hung_tracker_never_makes_the_loop_wait(tmp_path):
    release = threading.Event()
    tracker = Recording(tmp_path, {}, hang=release)
    tracking = hub(tmp_path, tracker)
    for step in range(1, 201):
        tracking({"kind": "train", "step": step, "loss": 0.5, "lr": 0.1}, None, 200)
    assert tracker.logged == []  # every call returned while the tracker was still stuck on the first record
    release.set()
    tracking.finish()
    assert [s for s, _ in tracker.logged] == list(range(1, 201))  # then it got them all, in order
