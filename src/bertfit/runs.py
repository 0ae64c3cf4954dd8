"""The run directory: atomic resumable checkpoints, their manifest, and the metrics log.

Layout of a run::

    RUN/config.json, model.safetensors, tokenizer.json, vocab.txt ...   the best model (HF format)
    RUN/train_config.json  data.json  metrics.json  metrics.jsonl  report.md  plots/
    RUN/checkpoints/step-00000200/  model.safetensors  trainer.pt  state.json  manifest.json

A checkpoint is written into a temporary directory beside its final name, every file fsynced, a
manifest of SHA-256 checksums written last, the directory renamed into place and its parent
fsynced. A crash at any point leaves either no new checkpoint or a complete one; one that fails
its checksums is skipped (with a warning) in favour of the previous one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bertfit.errors import CheckpointError

logger = logging.getLogger(__name__)

CHECKPOINT = re.compile(r"^step-(\d{8})$")
TEMPORARY_PREFIX = ".tmp-"


def _crash_point(name: str) -> None:
    """Test hook: BERTFIT_CRASH_AT=<name> kills the process here, like a kill -9 or power loss."""
    if os.environ.get("BERTFIT_CRASH_AT") == name:
        os._exit(137)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; rename is still atomic there
    finally:
        os.close(fd)


def write_bytes_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_json_atomic(path: Path, value: Any) -> None:
    """Replace ``path`` with JSON, so a reader sees the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    write_bytes_durably(tmp, (json.dumps(value, indent=2, default=_json_default) + "\n").encode("utf-8"))
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class LoadedCheckpoint:
    step: int
    path: Path
    model_state: dict[str, torch.Tensor]
    trainer_state: dict[str, Any]  # optimizer, scheduler, torch RNG (tensors; weights_only-safe)
    state: dict[str, Any]  # JSON bookkeeping: position, RNGs, best metric, patience


class RunDir:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"

    # -- files -------------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def metrics_log(self) -> Path:
        return self.path / "metrics.jsonl"

    def create(self) -> None:
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        self.sweep_temporaries()

    def sweep_temporaries(self) -> None:
        """Remove half-written checkpoints left by a crash (they were never renamed into place)."""
        for directory in (self.path, self.checkpoints):
            if not directory.is_dir():
                continue
            for entry in directory.iterdir():
                if entry.name.startswith(TEMPORARY_PREFIX) or (entry.name.startswith(".") and entry.name.endswith(".tmp")):
                    logger.info("removing stale temporary %s", entry)
                    shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)

    def append_log(self, record: dict[str, Any]) -> None:
        with open(self.metrics_log, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=_json_default) + "\n")

    def log_size(self) -> int:
        return self.metrics_log.stat().st_size if self.metrics_log.exists() else 0

    def truncate_log(self, size: int) -> None:
        """Drop records written after a checkpoint, so a resumed run logs them again once."""
        if self.metrics_log.exists():
            with open(self.metrics_log, "r+b") as f:
                f.truncate(size)

    def read_log(self) -> list[dict[str, Any]]:
        if not self.metrics_log.exists():
            return []
        out = []
        for line in self.metrics_log.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    logger.warning("%s: skipping an unreadable line", self.metrics_log)
        return out

    # -- checkpoints -------------------------------------------------------------------------
    def checkpoint_steps(self) -> list[int]:
        if not self.checkpoints.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.checkpoints.iterdir() if (m := CHECKPOINT.match(p.name)))

    def save_checkpoint(self, step: int, model_state: dict[str, torch.Tensor], trainer_state: dict[str, Any],
                        state: dict[str, Any], keep: int) -> Path:
        from safetensors.torch import save_file

        final = self.checkpoints / f"step-{step:08d}"
        tmp = self.checkpoints / f"{TEMPORARY_PREFIX}step-{step:08d}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            weights = {k: v.detach().to("cpu").contiguous() for k, v in model_state.items()}
            for name, value in weights.items():
                if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                    raise CheckpointError(f"refusing to checkpoint step {step}: {name} holds NaN or infinite values")
            save_file(weights, str(tmp / "model.safetensors"))
            _fsync_file(tmp / "model.safetensors")
            _crash_point("after_weights")
            torch.save(trainer_state, tmp / "trainer.pt")
            _fsync_file(tmp / "trainer.pt")
            write_bytes_durably(tmp / "state.json", json.dumps(state, default=_json_default).encode("utf-8"))
            _crash_point("before_manifest")
            files = {name: {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size}
                     for name in ("model.safetensors", "trainer.pt", "state.json")}
            write_bytes_durably(tmp / "manifest.json", json.dumps({"step": step, "files": files}, indent=2).encode())
            fsync_dir(tmp)
            _crash_point("before_rename")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            fsync_dir(self.checkpoints)
            _crash_point("after_rename")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._prune(keep)
        return final

    def _prune(self, keep: int) -> None:
        steps = self.checkpoint_steps()
        for step in steps[:-keep]:
            shutil.rmtree(self.checkpoints / f"step-{step:08d}", ignore_errors=True)

    def verify_checkpoint(self, path: Path) -> str | None:
        """None when the checkpoint is complete and intact, else what is wrong with it."""
        manifest_path = path / "manifest.json"
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            files = manifest["files"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return f"no readable manifest ({type(exc).__name__})"
        for name, meta in files.items():
            file = path / name
            if not file.is_file():
                return f"{name} is missing"
            if file.stat().st_size != meta.get("bytes") or sha256_file(file) != meta.get("sha256"):
                return f"{name} fails its checksum"
        return None

    def load_checkpoint(self, path: Path) -> LoadedCheckpoint:
        from safetensors.torch import load_file

        model_state = load_file(str(path / "model.safetensors"))
        for name, value in model_state.items():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise CheckpointError(f"{path}: {name} holds NaN or infinite values")
        trainer_state = torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        return LoadedCheckpoint(int(state["step"]), path, model_state, trainer_state, state)

    def latest_good_checkpoint(self, validate=None) -> LoadedCheckpoint | None:
        """The newest checkpoint that passes its checksums and ``validate`` (shapes), else None."""
        for step in reversed(self.checkpoint_steps()):
            path = self.checkpoints / f"step-{step:08d}"
            problem = self.verify_checkpoint(path)
            loaded = None
            if problem is None:
                try:
                    loaded = self.load_checkpoint(path)
                    if validate is not None:
                        validate(loaded)
                except Exception as exc:  # noqa: BLE001 - any unreadable part disqualifies it
                    problem = f"{type(exc).__name__}: {str(exc)[:200]}"
            if problem is None:
                return loaded
            logger.warning("checkpoint %s is unusable (%s); trying an earlier one", path.name, problem)
        return None


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
