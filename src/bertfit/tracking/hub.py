"""The trackers of one run, behind the training loop's record callback.

Why a thread: a tracker may be slow (a remote MLflow server, a sqlite store's fsync) or down; the
loop only puts its records on a queue and never waits. Why every call is wrapped: a tracker that
fails (server down, disk full) is warned about once and training goes on; a full queue (a tracker
that hangs) drops records, also with one warning. tracking.json in the run directory keeps each
tracker's run id, so a resumed run continues the same tracked run.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import math
import os
import queue
import threading
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from bertfit.errors import ConfigError
from bertfit.tracking import TRACKERS
from bertfit.tracking.base import Tracker

logger = logging.getLogger(__name__)

STATE_FILE = "tracking.json"
# Records waiting for the trackers; beyond this a hung tracker makes the hub drop, not block.
QUEUE_SIZE = 10_000
# How long the end of a run waits for the trackers to take the last records and the files.
CLOSE_TIMEOUT_S = 120.0
# Train-record fields that are not scalars to chart.
_NOT_SCALARS = ("kind", "split", "step", "batch_hash", "best", "early_stop", "collapsed")
# The names transformers' Trainer reports, so dashboards built for it read bertfit's runs.
_TRAIN_NAMES = {"lr": "learning_rate"}


def check_available(names: Sequence[str]) -> None:
    """Each tracker's library must be installed: a clear error before training, not a lost report."""
    for name in names:
        package = TRACKERS[name][1]
        if importlib.util.find_spec(name) is None:
            raise ConfigError(f"--report-to {name} needs the {package} package: pip install 'bertfit[tracking]' "
                              f"(or pip install {package})")


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """A metrics.jsonl record -> the tracker's scalars: train/loss, train/learning_rate, ...;
    eval/<the task's metric names>."""
    prefix = "train" if record.get("kind") == "train" else "eval"
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in _NOT_SCALARS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[f"{prefix}/{_TRAIN_NAMES.get(key, key) if prefix == 'train' else key}"] = float(value)
    return out


def final_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """{split: {metric: value}} -> {"final/test/accuracy": ...}: the top-level numbers of each split."""
    out: dict[str, float] = {}
    for split, values in metrics.items():
        if not isinstance(values, Mapping):
            continue
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                out[f"final/{split}/{key}"] = float(value)
    return out


def flat_params(settings: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Settings as tracker parameters: nested mappings flattened with dots, every value as text."""
    out: dict[str, str] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flat_params(value, name + "."))
        elif isinstance(value, (list, tuple)):
            out[name] = ",".join(str(v) for v in value)
        else:
            out[name] = "" if value is None else str(value)
    return out


class Tracking:
    """The run's trackers. Call it as the trainer's callback (record, state, total); then
    ``log_final`` and ``finish``. With no trackers (the default) every method does nothing."""

    def __init__(self, run_dir: Path, names: Sequence[str], *, chain: Callable[..., None] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.names = tuple(names)
        self.chain = chain  # the caller's own callback (the CLI's progress bar), called first
        self.trackers: list[Tracker] = []
        self._queue: queue.Queue[tuple[str, tuple[Any, ...]] | None] = queue.Queue(QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self._warned: set[str] = set()
        self._logged: dict[str, dict[str, int] | None] = {}
        self._state: dict[str, Any] = {}
        self.last_step = 0

    # -- starting -----------------------------------------------------------------------------
    def start(self, title: str, params: Mapping[str, Any], resume_step: int | None,
              replay: Sequence[Mapping[str, Any]] = ()) -> "Tracking":
        """Open every tracker's run (in the background: the first training steps do not wait).
        A resumed run passes its log up to the checkpoint (``replay``): the records a kill -9 caught
        in the queue reach the trackers now, and those they hold already are not sent twice."""
        if not self.names:
            return self
        check_available(self.names)
        saved = self._read_state() if resume_step is not None else {}
        self._state = {"report_to": list(self.names), "runs": dict(saved.get("runs", {}))}
        for name in self.names:
            module = importlib.import_module(TRACKERS[name][0])
            self.trackers.append(module.TRACKER(self.run_dir, self._state["runs"].get(name, {})))
        self._thread = threading.Thread(target=self._work, name="bertfit-tracking", daemon=True)
        self._thread.start()
        self._put("start", title, flat_params(params), resume_step)
        for record in replay:
            self(record, None, 0, chain=False)
        return self

    # -- the loop's hook ----------------------------------------------------------------------
    def __call__(self, record: Mapping[str, Any], state: Any, total: int, chain: bool = True) -> None:
        if chain and self.chain is not None:
            self.chain(record, state, total)
        if self.trackers and record.get("kind") in ("train", "eval"):
            step = int(record["step"])
            self.last_step = max(self.last_step, step)
            self._put("log", scalars(record), step)

    def log_final(self, metrics: Mapping[str, Any], extra: Mapping[str, float] | None = None) -> None:
        """The final validation and test metrics (and e.g. the wall time), at the run's last step."""
        if self.trackers:
            self._put("summary", {**final_scalars(metrics), **(extra or {})}, self.last_step)

    def finish(self, files: Sequence[Path] = (), failed: bool = False) -> None:
        """Attach the run's files (where the tracker keeps files), close every tracker (as failed: the
        training raised), wait for them."""
        if not self.trackers or self._thread is None:
            return
        self._put("files", [Path(f) for f in files if Path(f).exists()])
        self._put("close", failed)
        self._queue.put(None)
        self._thread.join(CLOSE_TIMEOUT_S)
        if self._thread.is_alive():
            logger.warning("the trackers (%s) did not finish within %.0f s; the run directory is complete, the "
                           "tracked runs may miss their last records", ", ".join(self.names), CLOSE_TIMEOUT_S)

    # -- the worker ---------------------------------------------------------------------------
    def _put(self, what: str, *args: Any) -> None:
        try:
            self._queue.put_nowait((what, args))
        except queue.Full:
            self._warn_once("queue", f"the trackers ({', '.join(self.names)}) are not keeping up; records are "
                                     "dropped from them (training goes on; metrics.jsonl has every record)")

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            what, args = item
            for tracker in self.trackers:
                try:
                    self._do(tracker, what, args)
                except Exception as exc:  # noqa: BLE001 - a tracker never stops training
                    self._warn_once(tracker.name, f"--report-to {tracker.name}: {what} failed ({type(exc).__name__}: "
                                                  f"{exc}); training goes on, this tracker may miss records "
                                                  "(metrics.jsonl has them all)")

    def _do(self, tracker: Tracker, what: str, args: tuple[Any, ...]) -> None:
        if what == "start":
            title, params, resume_step = args
            tracker.saved = self._state["runs"][tracker.name] = tracker.start(title, params, resume_step)
            self._logged[tracker.name] = tracker.logged_steps() if resume_step is not None else None
            self._write_state()
        elif what in ("log", "summary"):
            metrics, step = args
            already = self._logged.get(tracker.name)
            if already:  # a resumed run logs again the steps after its checkpoint: the tracker has those
                metrics = {k: v for k, v in metrics.items() if step > already.get(k, -1)}
            if metrics:
                saved = tracker.saved
                (tracker.log if what == "log" else tracker.log_summary)(metrics, step)
                if tracker.saved is not saved:  # what the tracker needs to resume changed (W&B: its last steps)
                    self._state["runs"][tracker.name] = tracker.saved
                    self._write_state()
        elif what == "files":
            tracker.log_files(args[0])
        elif what == "close":
            tracker.close(failed=args[0])

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning("%s", message)

    def _read_state(self) -> dict[str, Any]:
        try:
            raw = json.loads((self.run_dir / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return raw if isinstance(raw, dict) else {}

    def _write_state(self) -> None:
        path = self.run_dir / STATE_FILE
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self._state, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)

