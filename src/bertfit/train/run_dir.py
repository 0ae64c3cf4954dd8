"""The run directory: atomic resumable checkpoints, their manifest, and the metrics log.

Layout of a run::

    RUN/config.json, model.safetensors, tokenizer.json, vocab.txt ...   the best model (HF format)
    RUN/train_config.json  data.json  metrics.json  metrics.jsonl  report.md  plots/
    RUN/checkpoints/step-00000200/  model.safetensors  trainer.pt  state.json  manifest.json
    RUN/.bertfit-run                                                      the marker: bertfit made this

Replacing a run (``--overwrite``) never touches what bertfit did not write. A directory is a run when
it holds the marker :data:`MARKER` (written by :meth:`RunDir.create`), or, for runs made before the
marker existed, when it holds ``train_config.json`` and nothing but names bertfit writes
(:data:`RUN_ENTRIES`). Anything else is refused with a message that names what is there. Replacing
a marked run deletes only bertfit's own entries; anything a user put there is kept (and logged).

A checkpoint is written into a temporary directory beside its final name, every file fsynced, a
manifest of SHA-256 checksums written last, the directory renamed into place and its parent
fsynced. A crash at any point leaves either no new checkpoint or a complete one; one that fails
its checksums or its checks is skipped (with a warning) in favour of the previous one.

Loading never runs code: weights come from safetensors, the optimizer/scheduler/RNG tensors from
``torch.load(weights_only=True)``, the bookkeeping from JSON. Only the last ``keep`` checkpoints
are kept, plus the one of the best evaluation (so the best step can be resumed from, too).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from bertfit.errors import BertfitError, CheckpointError
from bertfit.io import fsync_dir, fsync_file, json_default, sha256_file, write_bytes_durably

logger = logging.getLogger(__name__)

CHECKPOINT = re.compile(r"^step-(\d{8})$")
TEMPORARY_PREFIX = ".tmp-"
UNUSABLE_PREFIX = "unusable-"
CHECKPOINT_FILES = ("model.safetensors", "trainer.pt", "state.json")
MANIFEST_FORMAT = 1

#: The file that says "bertfit created this directory"; --overwrite replaces nothing without it
#: (except a run from before the marker, made only of RUN_ENTRIES and holding train_config.json).
MARKER = ".bertfit-run"
#: Every name bertfit writes at the top of a run directory. Add a name here when bertfit starts
#: writing a new one: replacing a run deletes these and keeps everything else.
RUN_ENTRIES = frozenset({
    MARKER, "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
    "special_tokens_map.json", "train_config.json", "data.json", "split.json", "metrics.json",
    "metrics.jsonl", "report.md", "report.html", "plots", "checkpoints", "task.json", "precision.json",
    "seeds",  # `train --seeds N`: one run per seed (seeds.py)
    # the model card (report/card.py: README.bertfit.md when the user edited README.md), the transformers-style
    # trainer state, and the trackers' ids and files (tracking/)
    "README.md", "README.bertfit.md", "card.json", "trainer_state.json", "tracking.json", "tensorboard", "wandb",
})

# Every place inside a checkpoint save where BERTFIT_CRASH_AT can kill the process (in order).
CRASH_POINTS = ("after_weights", "after_trainer_state", "before_manifest", "after_manifest", "before_rename",
                "after_rename", "during_prune")


def _crash_point(name: str, step: int | None = None) -> None:
    """Test hook: BERTFIT_CRASH_AT=<name>[@<step>] kills the process here, like a kill -9 or power loss.

    Without ``@step`` the first save to reach the point dies; with it, only the save of that step.
    """
    spec = os.environ.get("BERTFIT_CRASH_AT")
    if not spec:
        return
    point, _, at = spec.partition("@")
    if point == name and (not at or (step is not None and at.strip() == str(step))):
        os._exit(137)


@dataclass
class LoadedCheckpoint:
    step: int
    path: Path
    model_state: dict[str, torch.Tensor]
    trainer_state: dict[str, Any]  # optimizer, scheduler, torch RNG (tensors; weights_only-safe)
    state: dict[str, Any]  # JSON bookkeeping: position, batch order, RNGs, best metric, patience


class RunDir:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        # (checkpoint name, what is wrong with it) for each one the last search skipped
        self.skipped: list[tuple[str, str]] = []

    # -- files -------------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def metrics_log(self) -> Path:
        return self.path / "metrics.jsonl"

    def create(self, replace: bool = False) -> None:
        """Make the directory (with bertfit's marker); ``replace``: first remove the run that is there."""
        self.check_kind()
        if replace:
            self.replace()
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        marker = self.path / MARKER
        if not marker.exists():
            write_bytes_durably(marker, b"This directory is a bertfit run; bertfit --overwrite may replace it.\n")
        self.sweep_temporaries()

    # -- is this a run? (never replace what bertfit did not write) -----------------------------
    def check_kind(self) -> None:
        """A file (or a file among its parents) where the run directory should be is a user error."""
        for parent in (self.path, *self.path.parents):
            if parent.is_dir():
                return
            if parent.exists() or parent.is_symlink():
                kind = "a file" if parent.is_file() else "not a directory"
                where = "" if parent == self.path else f" (it is inside {parent}, which is {kind})"
                raise BertfitError(f"--output-dir {self.path} is {kind if not where else 'not creatable'}{where}; "
                                   "the run directory must be a directory: choose another --output-dir")

    @staticmethod
    def _owned(name: str) -> bool:
        return (name in RUN_ENTRIES or name.startswith(TEMPORARY_PREFIX)
                or (name.startswith(".") and name.endswith(".tmp")))

    def entries(self) -> list[str]:
        return sorted(p.name for p in self.path.iterdir()) if self.path.is_dir() else []

    def foreign_entries(self) -> list[str]:
        """Names at the top of the directory that bertfit does not write."""
        return [name for name in self.entries() if not self._owned(name)]

    def is_run(self) -> bool:
        """True when bertfit made this directory: its marker, or (older runs) only bertfit's files."""
        if (self.path / MARKER).is_file():
            return True
        return (self.path / "train_config.json").is_file() and not self.foreign_entries()

    def check_is_run(self) -> None:
        """Refuse (BertfitError) an existing, non-empty directory that bertfit did not create."""
        self.check_kind()
        if not self.path.is_dir() or not self.entries() or self.is_run():
            return
        raise BertfitError(
            f"{self.path} is not a bertfit run directory (no {MARKER} marker) and holds {_describe(self.path)}; "
            "bertfit never replaces or writes into a folder it did not create: choose a new or empty --output-dir")

    def check_replaceable(self) -> None:
        """What --overwrite checks before anything is read or deleted."""
        self.check_is_run()

    def replace(self) -> None:
        """Delete bertfit's own entries of the run here (after :meth:`check_replaceable`); keep the rest."""
        self.check_replaceable()
        if not self.path.is_dir():
            return
        kept = self.foreign_entries()
        for name in self.entries():
            if name in kept:
                continue
            entry = self.path / name
            if entry.is_dir() and not entry.is_symlink():
                # Renamed first (atomic), so a crash mid-delete leaves nothing that looks like a run part.
                doomed = self.path / f"{TEMPORARY_PREFIX}replaced-{name}-{os.getpid()}"
                os.replace(entry, doomed)
                shutil.rmtree(doomed, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)  # a symlink is removed, never followed
        fsync_dir(self.path)
        logger.warning("--overwrite: replaced the run in %s%s", self.path,
                       f" (kept what bertfit did not write: {', '.join(kept[:10])})" if kept else "")

    def sweep_temporaries(self) -> None:
        """Remove half-written files and checkpoints left by a crash (they were never renamed into place)."""
        for directory in (self.path, self.checkpoints):
            if not directory.is_dir():
                continue
            for entry in directory.iterdir():
                if entry.name.startswith(TEMPORARY_PREFIX) or (entry.name.startswith(".") and entry.name.endswith(".tmp")):
                    logger.info("removing stale temporary %s", entry)
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)

    def append_log(self, record: dict[str, Any]) -> None:
        with open(self.metrics_log, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=json_default) + "\n")

    def sync_log(self) -> None:
        """fsync the metrics log, so the size a checkpoint records is on disk before the checkpoint is."""
        if self.metrics_log.exists():
            with open(self.metrics_log, "rb+") as f:
                os.fsync(f.fileno())

    def log_size(self) -> int:
        return self.metrics_log.stat().st_size if self.metrics_log.exists() else 0

    def truncate_log(self, size: int) -> None:
        """Drop records written after a checkpoint, so a resumed run logs them again once."""
        current = self.log_size()
        if current < size:
            # Only a power loss (not a kill) can lose log lines that a checkpoint counted; never pad
            # the file with zeros to the recorded size.
            logger.warning("%s is shorter (%d bytes) than when the checkpoint was written (%d bytes); "
                           "some records before the checkpoint were lost", self.metrics_log, current, size)
            return
        if current > size:
            with open(self.metrics_log, "r+b") as f:
                f.truncate(size)
                os.fsync(f.fileno())

    def read_log(self) -> list[dict[str, Any]]:
        if not self.metrics_log.exists():
            return []
        out = []
        for line in self.metrics_log.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    logger.warning("%s: skipping an unreadable line", self.metrics_log)
                    continue
                if isinstance(record, dict):
                    out.append(record)
        return out

    # -- checkpoints -------------------------------------------------------------------------
    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:08d}"

    def checkpoint_steps(self) -> list[int]:
        if not self.checkpoints.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.checkpoints.iterdir() if (m := CHECKPOINT.match(p.name)))

    def save_checkpoint(self, step: int, model_state: dict[str, torch.Tensor], trainer_state: dict[str, Any],
                        state: dict[str, Any], keep: int, protect: int | None = None) -> Path:
        """Write checkpoint ``step`` atomically, then prune all but the last ``keep`` and ``protect``.

        ``protect`` (default: ``state["best_step"]``) names the best step, whose checkpoint is kept.
        Refuses (CheckpointError) to write NaN or infinite weights or optimizer state.
        """
        from safetensors.torch import save_file

        weights = {k: v.detach().to("cpu").contiguous() for k, v in model_state.items()}
        for name, value in weights.items():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise CheckpointError(f"refusing to checkpoint step {step}: {name} holds NaN or infinite values")
        for name, value in _tensors(trainer_state.get("optimizer", {}).get("state", {}), "optimizer"):
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise CheckpointError(f"refusing to checkpoint step {step}: {name} holds NaN or infinite values")
        final = self.checkpoint_path(step)
        tmp = self.checkpoints / f"{TEMPORARY_PREFIX}step-{step:08d}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            save_file(weights, str(tmp / "model.safetensors"))
            fsync_file(tmp / "model.safetensors")
            _crash_point("after_weights", step)
            torch.save(trainer_state, tmp / "trainer.pt")
            fsync_file(tmp / "trainer.pt")
            _crash_point("after_trainer_state", step)
            write_bytes_durably(tmp / "state.json", json.dumps(state, default=json_default).encode("utf-8"))
            _crash_point("before_manifest", step)
            files = {name: {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size}
                     for name in CHECKPOINT_FILES}
            manifest = {"format": MANIFEST_FORMAT, "step": step, "files": files}
            # Compact on purpose: no whitespace, so any changed byte changes (or breaks) the content.
            write_bytes_durably(tmp / "manifest.json", json.dumps(manifest, separators=(",", ":")).encode())
            _crash_point("after_manifest", step)
            fsync_dir(tmp)
            _crash_point("before_rename", step)
            if final.exists():  # only when a resumed run writes a step again
                shutil.rmtree(final)
            os.replace(tmp, final)
            fsync_dir(self.checkpoints)
            _crash_point("after_rename", step)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        best = state.get("best_step") if protect is None else protect
        self._prune(keep, {best} if isinstance(best, int) else set(), saving=step)
        return final

    def _prune(self, keep: int, protect: set[int] = frozenset(), saving: int | None = None) -> None:
        """Delete all but the newest ``keep`` checkpoints and those in ``protect``.

        Each is first renamed to a temporary name (atomic), so a crash mid-delete leaves no
        half-deleted checkpoint that looks real; the sweep at the next start removes the rest.
        """
        steps = self.checkpoint_steps()
        recent = set(steps[-keep:]) if keep > 0 else set()
        for step in steps:
            if step in recent or step in protect:
                continue
            doomed = self.checkpoints / f"{TEMPORARY_PREFIX}prune-step-{step:08d}"
            shutil.rmtree(doomed, ignore_errors=True)
            try:
                os.replace(self.checkpoint_path(step), doomed)
            except OSError:
                continue
            _crash_point("during_prune", saving)
            shutil.rmtree(doomed, ignore_errors=True)
        fsync_dir(self.checkpoints)

    def verify_checkpoint(self, path: Path) -> str | None:
        """None when the checkpoint is complete and intact (manifest and checksums), else what is wrong."""
        if not path.is_dir():
            return "not a directory"
        match = CHECKPOINT.match(path.name)
        try:
            manifest = json.loads((path / "manifest.json").read_bytes().decode("utf-8"))
        except (OSError, ValueError) as exc:
            return f"no readable manifest ({type(exc).__name__})"
        if not isinstance(manifest, dict) or set(manifest) != {"format", "step", "files"}:
            return "the manifest is malformed"
        if manifest["format"] != MANIFEST_FORMAT:
            return f"unknown manifest format {manifest['format']!r}"
        if match and manifest["step"] != int(match.group(1)):
            return f"the manifest is for step {manifest['step']!r}, not {int(match.group(1))}"
        files = manifest["files"]
        if not isinstance(files, dict) or set(files) != set(CHECKPOINT_FILES):
            return "the manifest does not list exactly " + ", ".join(CHECKPOINT_FILES)
        for name in CHECKPOINT_FILES:
            meta, file = files[name], path / name
            if not isinstance(meta, dict) or set(meta) != {"sha256", "bytes"}:
                return f"the manifest entry of {name} is malformed"
            if not file.is_file():
                return f"{name} is missing"
            if file.stat().st_size != meta["bytes"]:
                return f"{name} has {file.stat().st_size} bytes, the manifest says {meta['bytes']!r} (truncated?)"
            if sha256_file(file) != meta["sha256"]:
                return f"{name} fails its checksum"
        return None

    def load_checkpoint(self, path: Path) -> LoadedCheckpoint:
        """Read a checkpoint without running any code from it; CheckpointError when a part is unusable."""
        from safetensors.torch import load_file

        try:
            model_state = load_file(str(path / "model.safetensors"))
        except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ... all mean unreadable
            raise CheckpointError(f"{path / 'model.safetensors'}: not a readable safetensors file ({exc})") from None
        for name, value in model_state.items():
            if not value.is_floating_point():
                raise CheckpointError(f"{path}: {name} has dtype {value.dtype}, expected a floating-point tensor")
            if not bool(torch.isfinite(value).all()):
                raise CheckpointError(f"{path}: {name} holds NaN or infinite values")
        try:
            # weights_only=True: tensors and plain containers only; a pickle that names any other
            # callable (os.system, exec, getattr, ...) is refused before it can run. No fallback.
            trainer_state = torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError, ...
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(f"{path / 'trainer.pt'}: refused to load: not a plain tensor file ({first[:200]})") from None
        if not isinstance(trainer_state, dict) or not {"optimizer", "scheduler", "torch_rng"} <= set(trainer_state):
            raise CheckpointError(f"{path / 'trainer.pt'}: expected optimizer, scheduler and torch_rng entries")
        for name, value in _tensors(trainer_state.get("optimizer"), "optimizer"):
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise CheckpointError(f"{path}: {name} holds NaN or infinite values")
        try:
            state = json.loads((path / "state.json").read_bytes().decode("utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path / 'state.json'}: unreadable ({type(exc).__name__})") from None
        if not isinstance(state, dict) or not isinstance(state.get("step"), int) or isinstance(state["step"], bool):
            raise CheckpointError(f"{path / 'state.json'}: no step")
        match = CHECKPOINT.match(path.name)
        if match and state["step"] != int(match.group(1)):
            raise CheckpointError(f"{path / 'state.json'}: holds step {state['step']}, not {int(match.group(1))}")
        return LoadedCheckpoint(state["step"], path, model_state, trainer_state, state)

    def latest_good_checkpoint(self, validate: Callable[[LoadedCheckpoint], None] | None = None) -> LoadedCheckpoint | None:
        """The newest checkpoint that passes its checksums and ``validate`` (shapes), else None.

        Each one skipped is logged as a warning and listed in ``self.skipped``.
        """
        self.skipped = []
        for step in reversed(self.checkpoint_steps()):
            path = self.checkpoint_path(step)
            problem = self.verify_checkpoint(path)
            loaded = None
            if problem is None:
                try:
                    loaded = self.load_checkpoint(path)
                    if validate is not None:
                        validate(loaded)
                except Exception as exc:  # noqa: BLE001 - any unreadable part disqualifies it
                    problem = str(exc)[:300] if isinstance(exc, CheckpointError) else f"{type(exc).__name__}: {str(exc)[:300]}"
            if problem is None:
                if self.skipped:
                    logger.warning("using checkpoint %s instead", path.name)
                return loaded
            self.skipped.append((path.name, problem))
            logger.warning("checkpoint %s is unusable (%s); trying an earlier one", path.name, problem)
        return None

    def set_aside_after(self, step: int) -> list[str]:
        """Rename checkpoints newer than ``step`` (ones a resume skipped) out of the way.

        They failed their checks, and a resumed run will write those steps again; left in place,
        they would count as "the last K" when pruning, and push good checkpoints out.
        """
        moved = []
        for later in self.checkpoint_steps():
            if later <= step:
                continue
            source = self.checkpoint_path(later)
            target = self.checkpoints / f"{UNUSABLE_PREFIX}{source.name}"
            shutil.rmtree(target, ignore_errors=True)
            os.replace(source, target)
            moved.append(target.name)
            logger.warning("moved the unusable checkpoint %s aside to %s", source.name, target.name)
        if moved:
            fsync_dir(self.checkpoints)
        return moved


def _describe(path: Path, limit: int = 8) -> str:
    """A short listing of a directory's entries, e.g. ``3 entries: notes.txt, data/, x.csv``."""
    try:
        names = sorted(p.name + ("/" if p.is_dir() and not p.is_symlink() else "") for p in path.iterdir())
    except OSError as exc:
        return f"unreadable entries ({exc.strerror or exc})"
    shown = ", ".join(repr(n) if len(n) <= 60 else repr(n[:57]) + "..." for n in names[:limit])
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return f"{len(names)} entr{'y' if len(names) == 1 else 'ies'}: {shown}{more}"


def _tensors(value: Any, prefix: str):
    """(name, tensor) for every tensor nested in dicts/lists/tuples."""
    if isinstance(value, torch.Tensor):
        yield prefix, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _tensors(v, f"{prefix}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _tensors(v, f"{prefix}.{i}")
