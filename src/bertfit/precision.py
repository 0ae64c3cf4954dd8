"""Which precision and matmul kernels this CPU runs fastest: detected, measured once, cached.

A processor's instruction sets decide what can be fast: bf16 matmuls need AVX512-BF16 or AMX
(without them PyTorch emulates bf16, ~10-100x slower than fp32), and MKL's fp32 sgemm stays on its
AVX2 path on AMD processors that have AVX-512, where oneDNN uses it. So the choice is made per
machine, in two steps:

1. ``read_isa``: the flags of /proc/cpuinfo (AVX2, AVX-512F, AVX512-BF16, AMX, VNNI) and what
   PyTorch's own dispatcher detected (``torch.backends.cpu.get_cpu_capability()``);
2. ``measure``: ~0.1-0.3 s timing one training-shaped linear layer (forward, input and weight
   gradients of nn.Linear(384 → 1536) on 512 tokens) through MKL fp32, oneDNN fp32 and, only where
   the ISA has bf16 instructions, bf16. Cached per machine (CPU model, flags, torch version,
   threads) under the bertfit cache directory (``cpu-precision/``; delete it to measure again), so
   it runs once.

``choose`` turns the two into a decision (a pure function: the tests force each branch):
bf16 autocast for training where the ISA has it *and* it measured ≥ ``BF16_MIN_SPEEDUP`` times the
fastest fp32 kernel; fp32 dense layers through oneDNN where that measured ≥ ``ONEDNN_MIN_SPEEDUP``
times MKL, else MKL (PyTorch's default). ``--bf16`` / ``--no-bf16`` (TrainConfig.bf16) override the
bf16 part. A resumed run keeps the precision and kernel its checkpoint was written with.

``BERTFIT_CPU_PRECISION`` replaces the automatic CPU choice (not an explicit ``--bf16``/``--no-bf16``)
so one machine can act as another: ``bf16`` chooses bf16 autocast as an AVX512-BF16/AMX machine
would (emulated, slower but numerically the same, where the instructions are missing), ``fp32``
chooses fp32 through MKL as an AVX2-only machine would, ``fp32-onednn`` fp32 through oneDNN as an
AVX-512 machine without bf16 may. The test suite sets it from ``pytest --cpu-precision``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

logger = logging.getLogger(__name__)

# /proc/cpuinfo flag → the name shown in logs and run files.
ISA_FLAGS = {"avx2": "AVX2", "avx512f": "AVX-512F", "avx512_bf16": "AVX512-BF16", "amx_tile": "AMX-TILE",
             "amx_bf16": "AMX-BF16", "avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI"}

# bf16 must beat the fastest fp32 kernel by this much on the measured linear layer: autocast adds a
# cast of every activation and weight per step, and the non-matmul work does not get faster.
BF16_MIN_SPEEDUP = 1.3
# oneDNN must beat MKL by this much to replace PyTorch's default: a wide margin over the timing noise
# of a loaded machine (2-thread runs here swung by ±20%); where MKL stays on AVX2 it is ~2x.
ONEDNN_MIN_SPEEDUP = 1.3
# The measured layer: MiniLM's FFN up projection on a typical training batch's real tokens.
MEASURE_SHAPE = (512, 384, 1536)  # tokens, in_features, out_features
CACHE_FORMAT = 2
# A measurement taken while other processes held the cores is used by this process only (not cached)
# and never switches fp32 away from PyTorch's default: on the project's loaded 2-core machine one
# such measurement showed oneDNN 1.4x MKL where a quiet one shows MKL ahead.
QUIET_CPU_SHARE = 0.8
# The environment variable that makes this machine choose as another processor would (see above).
PRECISION_ENV = "BERTFIT_CPU_PRECISION"
FORCED_CHOICES = {"bf16": (True, "mkl"), "fp32": (False, "mkl"), "fp32-onednn": (False, "onednn")}


@dataclass(frozen=True)
class Isa:
    """The CPU's model name and instruction-set flags."""

    model: str
    flags: frozenset[str]
    torch_capability: str = ""  # what PyTorch's dispatcher uses: "AVX2", "AVX512", "DEFAULT", ...

    @property
    def bf16(self) -> bool:
        """bf16 matmul instructions: AVX512-BF16 (dot products) or AMX (tiles)."""
        return "avx512_bf16" in self.flags or "amx_bf16" in self.flags

    @property
    def amx(self) -> bool:
        return "amx_bf16" in self.flags and "amx_tile" in self.flags

    @property
    def vnni(self) -> bool:
        return "avx512_vnni" in self.flags or "avx_vnni" in self.flags

    def names(self) -> list[str]:
        return [name for flag, name in ISA_FLAGS.items() if flag in self.flags]

    def summary(self) -> str:
        return f"{self.model}: {' '.join(self.names()) or 'no AVX2'} (torch: {self.torch_capability or '?'})"


def read_isa(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> Isa:
    model, flags = "unknown CPU", frozenset()
    try:
        for line in Path(cpuinfo).read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model == "unknown CPU":
                model = value.strip()
            elif key == "flags" and not flags:
                flags = frozenset(value.split())
    except OSError:  # not Linux: no flags; the measurement still decides (bf16 is never measured there)
        pass
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = ""
    return Isa(model, flags, capability)


@dataclass(frozen=True)
class Measurement:
    """GFLOP/s of one training linear layer (forward + both gradients) per kernel; None: not measured."""

    fp32_mkl: float
    fp32_onednn: float | None
    bf16: float | None
    threads: int
    seconds: float  # what the measurement itself took
    # CPU time this process got / (wall time × threads) while measuring: below QUIET_CPU_SHARE other
    # processes competed for the cores, and 2-thread timings swing by 2x (MKL's more than oneDNN's).
    cpu_share: float = 1.0

    @property
    def quiet(self) -> bool:
        return self.cpu_share >= QUIET_CPU_SHARE


@dataclass(frozen=True)
class Choice:
    bf16: bool  # train under bf16 autocast by default
    fp32_kernel: str  # "mkl" (PyTorch's default) or "onednn" (cpu_linear.OneDnnLinear) for fp32 dense layers
    reason: str


def choose(isa: Isa, m: Measurement) -> Choice:
    fp32_kernel = "onednn" if (m.quiet and m.fp32_onednn is not None
                               and m.fp32_onednn >= ONEDNN_MIN_SPEEDUP * m.fp32_mkl) else "mkl"
    fp32_best = max(m.fp32_mkl, m.fp32_onednn or 0.0)
    fp32_text = f"fp32 {m.fp32_mkl:.0f} GFLOP/s MKL" + (f", {m.fp32_onednn:.0f} oneDNN" if m.fp32_onednn else "") \
        + ("" if m.quiet else f" (cores busy: {m.cpu_share:.0%} of them measuring; MKL kept)")
    if not isa.bf16:
        return Choice(False, fp32_kernel, f"no bf16 instructions (AVX512-BF16/AMX); {fp32_text}")
    if m.bf16 is None or m.bf16 < BF16_MIN_SPEEDUP * fp32_best:
        bf16_text = "not measured" if m.bf16 is None else f"{m.bf16:.0f} GFLOP/s"
        return Choice(False, fp32_kernel, f"bf16 {bf16_text}, under {BF16_MIN_SPEEDUP}x {fp32_text}")
    return Choice(True, fp32_kernel, f"bf16 {m.bf16:.0f} GFLOP/s = {m.bf16 / fp32_best:.1f}x {fp32_text}")


# -- the measurement -----------------------------------------------------------------------------

def _rates(steps: dict[str, Callable[[], Any]], flops: float, budget: float) -> dict[str, float]:
    """Best GFLOP/s of each step, timed in interleaved rounds for ~``budget`` seconds (at least 3
    rounds, after a warm-up): load from other processes then slows every kernel alike."""
    for step in steps.values():
        step()
    best = dict.fromkeys(steps, float("inf"))
    start, rounds = time.perf_counter(), 0
    while rounds < 3 or (time.perf_counter() - start < budget and rounds < 30):
        for name, step in steps.items():
            t = time.perf_counter()
            step()
            best[name] = min(best[name], time.perf_counter() - t)
        rounds += 1
    return {name: flops / seconds / 1e9 for name, seconds in best.items()}


def measure(isa: Isa, budget: float = 0.2) -> Measurement:
    """Time one training linear layer per kernel, interleaved, ~``budget`` s in all (bf16 only where
    the ISA has bf16 instructions: without them it is emulated, slow, and the answer is known)."""
    from bertfit.cpu_linear import onednn_linear_available, onednn_linear_backward, onednn_linear_forward

    started, cpu_started = time.perf_counter(), time.process_time()
    n, k, m = MEASURE_SHAPE
    gen = torch.Generator().manual_seed(0)
    x, w, b, dy = (torch.randn(*s, generator=gen) for s in ((n, k), (m, k), (m,), (n, m)))
    flops = 3 * 2 * n * k * m  # forward, input gradient, weight gradient

    def default(x=x, w=w, b=b, dy=dy) -> None:  # what F.linear and autograd run: MKL for fp32
        torch.addmm(b, x, w.t()), dy @ w, dy.t() @ x

    steps: dict[str, Callable[[], Any]] = {"fp32_mkl": default}
    if onednn_linear_available():
        steps["fp32_onednn"] = lambda: (onednn_linear_forward(x, w, b), onednn_linear_backward(dy, x, w))
    if isa.bf16:
        xb, wb, bb, dyb = (t.bfloat16() for t in (x, w, b, dy))
        steps["bf16"] = lambda: default(xb, wb, bb, dyb)
    with torch.inference_mode():
        rates = _rates(steps, flops, budget)
    wall = time.perf_counter() - started
    share = min(1.0, (time.process_time() - cpu_started) / max(wall * torch.get_num_threads(), 1e-9))
    return Measurement(rates["fp32_mkl"], rates.get("fp32_onednn"), rates.get("bf16"), torch.get_num_threads(), wall,
                       round(share, 3))


# -- the per-machine cache -----------------------------------------------------------------------

@dataclass(frozen=True)
class Selection:
    isa: Isa
    measurement: Measurement
    choice: Choice
    cached: bool = False  # read from the cache rather than measured in this process


_memo: dict[str, Selection] = {}


def cache_key(isa: Isa, threads: int) -> str:
    text = "|".join([isa.model, " ".join(sorted(isa.flags)), isa.torch_capability, torch.__version__, str(threads),
                     str(CACHE_FORMAT)])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def cache_path(key: str) -> Path:
    from bertfit.io import cache_dir

    return cache_dir() / "cpu-precision" / f"{key}.json"


def cpu_selection(refresh: bool = False) -> Selection:
    """This machine's measured choice, from this process's memo, the cache, or measured now."""
    isa = read_isa()
    key = cache_key(isa, torch.get_num_threads()) + os.environ.get(PRECISION_ENV, "").strip().lower()
    if not refresh and key in _memo:
        return _memo[key]
    path = cache_path(key)
    measurement = None
    if not refresh and path.is_file():
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            measurement = Measurement(**raw["measurement"])
        except (OSError, ValueError, TypeError, KeyError):
            logger.debug("%s is unreadable; measuring again", path)
    cached = measurement is not None
    if measurement is None:
        measurement = measure(isa)
    if not cached and measurement.quiet:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps({"format": CACHE_FORMAT, "cpu": isa.model, "isa": isa.names(),
                                       "torch": torch.__version__, "measurement": asdict(measurement)}, indent=1),
                           encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:  # a read-only cache only costs the measurement again next time
            logger.debug("could not cache the CPU measurement in %s: %s", path, exc)
    selection = Selection(isa, measurement, forced_choice() or choose(isa, measurement), cached)
    _memo[key] = selection
    return selection


def forced_choice() -> Choice | None:
    """The choice ``BERTFIT_CPU_PRECISION`` imposes, or None where it is unset or ``auto``."""
    raw = os.environ.get(PRECISION_ENV, "").strip().lower()
    if raw in ("", "auto"):
        return None
    if raw not in FORCED_CHOICES:
        from bertfit.errors import ConfigError

        raise ConfigError(f"{PRECISION_ENV}={raw!r} is not a precision choice; use one of "
                        f"{', '.join(['auto', *FORCED_CHOICES])}")
    bf16, kernel = FORCED_CHOICES[raw]
    return Choice(bf16, kernel, f"{PRECISION_ENV}={raw}: acting as a machine that chooses "
                                f"{'bf16' if bf16 else 'fp32 through ' + kernel}")


# -- what a training run uses --------------------------------------------------------------------

@dataclass(frozen=True)
class TrainingPrecision:
    device: str  # "cpu", "cuda", ...
    bf16: bool
    kernel: str  # dense layers: "mkl" / "onednn" (fp32 CPU), "onednn-bf16" (bf16 CPU), "cuda", "default"
    source: str  # why: "auto (...)", "forced by --bf16", "the checkpoint's", ...
    selection: Selection | None = field(default=None, compare=False)

    def checkpoint_fields(self) -> dict[str, Any]:
        """What a resume must reproduce exactly (stored in the checkpoint's state.json)."""
        return {"bf16": self.bf16, "kernel": self.kernel}

    def record(self) -> dict[str, Any]:
        """JSON for the run directory (precision.json)."""
        out: dict[str, Any] = {"device": self.device, "bf16": self.bf16, "dense_kernel": self.kernel,
                               "source": self.source, "torch": torch.__version__}
        if self.selection is not None:
            s = self.selection
            out["cpu"] = {"model": s.isa.model, "isa": s.isa.names(), "torch_capability": s.isa.torch_capability}
            out["measured_gflops"] = {**asdict(s.measurement), "shape_tokens_in_out": list(MEASURE_SHAPE),
                                      "from_cache": s.cached, "quiet": s.measurement.quiet}
            out["auto_choice"] = asdict(s.choice)
        return out

    def describe(self) -> str:
        what = "bf16 autocast (fp32 weights, optimizer, loss)" if self.bf16 else "fp32"
        where = f"{self.selection.isa.summary()}; " if self.selection is not None else ""
        return f"training precision on {self.device}: {what}, dense layers {self.kernel}; {where}{self.source}"


def training_precision(requested: bool | None, device: torch.device, log: bool = True) -> TrainingPrecision:
    """Resolve TrainConfig.bf16 (None = auto) for ``device``, log it in one line and return it."""
    if device.type == "cuda":
        bf16 = requested is not False and torch.cuda.is_bf16_supported()
        source = "forced by --no-bf16" if requested is False else "auto (CUDA bf16 support)" if requested is None \
            else "--bf16" + ("" if bf16 else ": this GPU has no bf16, fp32 instead")
        tp = TrainingPrecision(device.type, bf16, "cuda", source)
    elif device.type != "cpu":
        tp = TrainingPrecision(device.type, False, "default", "fp32 (bf16 autocast is used on CPU and CUDA only)")
    else:
        sel = cpu_selection()
        bf16 = sel.choice.bf16 if requested is None else bool(requested)
        if requested is None:
            source = f"auto ({sel.choice.reason})"
        else:
            source = f"forced by --{'' if requested else 'no-'}bf16 (auto would be {'bf16' if sel.choice.bf16 else 'fp32'}: " \
                     f"{sel.choice.reason})"
        if requested and not sel.isa.bf16:
            logger.warning("--bf16 on a CPU without bf16 instructions (AVX512-BF16/AMX): PyTorch emulates it, "
                           "training runs many times slower than fp32")
        tp = TrainingPrecision("cpu", bf16, "onednn-bf16" if bf16 else sel.choice.fp32_kernel, source, sel)
    if log:
        logger.info(tp.describe())
    return tp


def resumed_precision(current: TrainingPrecision, recorded: Any) -> TrainingPrecision:
    """The precision a resumed run must use: the checkpoint's (exact resume), where it names one."""
    if not isinstance(recorded, dict) or recorded == current.checkpoint_fields():
        return current
    bf16, kernel = bool(recorded.get("bf16")), str(recorded.get("kernel"))
    if current.device != "cpu" or kernel not in ("mkl", "onednn", "onednn-bf16"):
        logger.warning("the checkpoint was trained with %s; continuing with %s (the resumed steps will differ "
                       "slightly from an uninterrupted run)", recorded, current.checkpoint_fields())
        return current
    logger.warning("continuing in the checkpoint's precision (bf16=%s, dense layers %s), not this machine's "
                   "choice (bf16=%s, %s), so the resume stays exact", bf16, kernel, current.bf16, current.kernel)
    return TrainingPrecision(current.device, bf16, kernel, "the checkpoint's", current.selection)


def apply_kernel(model: torch.nn.Module, precision: TrainingPrecision | None) -> None:
    """Route the model's fp32 dense layers through the chosen kernel (oneDNN, or PyTorch's default
    for None and every other choice)."""
    from bertfit.cpu_linear import use_onednn_linears

    use_onednn_linears(model, precision is not None and precision.kernel == "onednn")


def log_prediction_line(device: torch.device, engine: str) -> None:
    """The one line at the start of prediction: the ISA (no measurement) and the precision used."""
    if device.type != "cpu":
        logger.info("prediction on %s: %s", device, engine)
        return
    isa = read_isa()
    logger.info("prediction on %s: %s%s", isa.summary(), engine, " (VNNI for int8)" if isa.vnni else "")
