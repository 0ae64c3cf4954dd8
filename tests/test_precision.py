"""Precision and kernels chosen per CPU (precision.py): the decision for each ISA (forced: the flags and
the measurement are faked), the --bf16/--no-bf16 override, the per-machine cache, the oneDNN
training linear, the bf16 fast path against the bf16 plain path, and exact resume in bf16.

This machine may have no bf16 instructions (bf16 is then emulated, slowly): every bf16 run here is
a tiny random model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bertfit import precision
from bertfit.errors import BertfitError
from bertfit.config import BertConfig
from bertfit.cpu_linear import OneDnnLinear, onednn_linear_available, use_onednn_linears
from bertfit.heads import BertForSequenceClassification
from bertfit.precision import Isa, Measurement
from bertfit.train.run_dir import RunDir
from conftest import synthetic_rows, write_csv
from test_resume import bertfit, log_records

AVX2 = {"sse4_2", "avx", "avx2", "fma"}
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}
AVX512_BF16 = AVX512 | {"avx512_bf16"}
AMX = AVX512_BF16 | {"amx_tile", "amx_bf16", "amx_int8"}


def isa(flags, model="Test CPU") -> Isa:
    return Isa(model, frozenset(flags), "AVX512" if "avx512f" in flags else "AVX2")


def measured(mkl, onednn=None, bf16=None, cpu_share=1.0) -> Measurement:
    return Measurement(mkl, onednn, bf16, threads=2, seconds=0.1, cpu_share=cpu_share)


# -- the decision, per ISA -----------------------------------------------------------------------

def test_avx2_only_trains_fp32_on_the_faster_fp32_kernel():
    c = precision.choose(isa(AVX2), measured(170, 140))
    assert (c.bf16, c.fp32_kernel) == (False, "mkl")
    assert "no bf16 instructions" in c.reason
    # a bf16 figure (emulated) never turns bf16 on without the instructions
    assert precision.choose(isa(AVX2), measured(170, 140, bf16=900)).bf16 is False


def test_avx512_without_bf16_routes_fp32_through_onednn_where_it_beats_mkl():
    c = precision.choose(isa(AVX512), measured(211, 420))
    assert (c.bf16, c.fp32_kernel) == (False, "onednn")
    # within the noise margin MKL (PyTorch's default) stays; so it does when the cores were busy measuring
    assert precision.choose(isa(AVX512), measured(211, 211 * precision.ONEDNN_MIN_SPEEDUP * 0.99)).fp32_kernel == "mkl"
    busy = precision.choose(isa(AVX512), measured(211, 420, cpu_share=0.5))
    assert busy.fp32_kernel == "mkl" and "busy" in busy.reason


def test_avx512_bf16_trains_bf16_only_where_measured_fast():
    c = precision.choose(isa(AVX512_BF16), measured(211, 420, bf16=758))
    assert (c.bf16, c.fp32_kernel) == (True, "onednn")
    assert "1.8x" in c.reason
    slow = precision.choose(isa(AVX512_BF16), measured(211, 420, bf16=420 * precision.BF16_MIN_SPEEDUP * 0.99))
    assert slow.bf16 is False and "under" in slow.reason
    assert precision.choose(isa(AVX512_BF16), measured(211, None, bf16=None)).bf16 is False


def test_amx_trains_bf16():
    a = isa(AMX)
    assert a.bf16 and a.amx and a.vnni
    chosen = precision.choose(a, measured(300, 280, bf16=2000))
    # bf16 on, fp32 kernel MKL (oneDNN's 280 is not 1.3x MKL's 300), and the reason states the figures
    assert (chosen.bf16, chosen.fp32_kernel) == (True, "mkl")
    assert chosen.reason == "bf16 2000 GFLOP/s = 6.7x fp32 300 GFLOP/s MKL, 280 oneDNN"


def test_read_isa_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 avx512f avx512_bf16 "
                       "avx512_vnni\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu\n")
    got = precision.read_isa(cpuinfo)
    assert got.model == "AMD EPYC 9R14" and got.bf16 and got.vnni and not got.amx
    assert got.names() == ["AVX2", "AVX-512F", "AVX512-BF16", "AVX512-VNNI"]
    assert "AVX512-BF16" in got.summary()
    missing = precision.read_isa(tmp_path / "nope")
    assert missing.flags == frozenset() and not missing.bf16


def test_the_measurement_skips_bf16_without_the_instructions():
    m = precision.measure(isa(AVX2), budget=0.0)
    assert m.bf16 is None and m.fp32_mkl > 0 and 0 < m.cpu_share <= 1
    assert (m.fp32_onednn is not None) == onednn_linear_available()


# -- resolution, override, cache -----------------------------------------------------------------

@pytest.fixture
def fake_cpu(monkeypatch, tmp_path):
    """Force the ISA and the measurement; a fresh cache directory; count the measurements. The
    automatic choice is what these tests check, so a --cpu-precision of the session is set aside."""
    monkeypatch.setenv("BERTFIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(precision.PRECISION_ENV, raising=False)
    monkeypatch.setattr(precision, "_memo", {})
    state = {"isa": isa(AVX2), "measurement": measured(170, 140), "calls": 0}

    def measure(isa_, budget=0.2):
        state["calls"] += 1
        return state["measurement"]

    monkeypatch.setattr(precision, "read_isa", lambda *a: state["isa"])
    monkeypatch.setattr(precision, "measure", measure)
    return state


@pytest.mark.parametrize("forced, bf16, kernel", [("bf16", True, "onednn-bf16"), ("fp32", False, "mkl"),
                                                  ("fp32-onednn", False, "onednn")])
@pytest.mark.parametrize("flags", [AVX2, AMX])
def test_the_environment_makes_the_machine_choose_as_another_would(fake_cpu, monkeypatch, flags, forced, bf16,
                                                                   kernel):
    """BERTFIT_CPU_PRECISION (pytest --cpu-precision) replaces the automatic choice on any processor,
    whatever it measured; an explicit --bf16/--no-bf16 still wins; a wrong value is a clear error."""
    fake_cpu["isa"] = isa(flags)
    fake_cpu["measurement"] = measured(211, 420, bf16=758 if "amx_bf16" in flags else None)
    monkeypatch.setenv(precision.PRECISION_ENV, forced)
    cpu = torch.device("cpu")
    auto = precision.training_precision(None, cpu)
    assert (auto.bf16, auto.kernel) == (bf16, kernel)
    assert f"{precision.PRECISION_ENV}={forced}" in auto.source
    assert precision.training_precision(not bf16, cpu).bf16 is (not bf16)  # the flag overrides it
    monkeypatch.setenv(precision.PRECISION_ENV, "fp16")
    monkeypatch.setattr(precision, "_memo", {})
    with pytest.raises(BertfitError, match="BERTFIT_CPU_PRECISION='fp16' is not a precision choice"):
        precision.training_precision(None, cpu)


@pytest.mark.parametrize("flags, auto_bf16", [(AVX2, False), (AVX512, False), (AVX512_BF16, True), (AMX, True)])
def test_bf16_flag_overrides_the_auto_choice(fake_cpu, flags, auto_bf16, caplog):
    fake_cpu["isa"] = isa(flags)
    fake_cpu["measurement"] = measured(211, 420, bf16=758 if "avx512_bf16" in flags else None)
    cpu = torch.device("cpu")
    with caplog.at_level(logging.INFO, logger="bertfit.precision"):
        auto = precision.training_precision(None, cpu)
    assert auto.bf16 is auto_bf16 and auto.kernel == ("onednn-bf16" if auto_bf16 else "onednn")
    assert [r.message for r in caplog.records if "training precision" in r.message] == [auto.describe()]
    forced_off = precision.training_precision(False, cpu)
    assert not forced_off.bf16 and forced_off.kernel == "onednn" and "--no-bf16" in forced_off.source
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bertfit.precision"):
        forced_on = precision.training_precision(True, cpu)
    assert forced_on.bf16 and forced_on.kernel == "onednn-bf16"
    assert any("emulates" in r.message for r in caplog.records) is (not auto_bf16)  # warned where slow
    record = json.loads(json.dumps(auto.record()))  # JSON-able, for the run directory
    assert record["bf16"] is auto_bf16 and record["cpu"]["model"] == "Test CPU"
    assert record["measured_gflops"]["fp32_onednn"] == 420


def test_the_measurement_is_cached_per_machine(fake_cpu):
    first = precision.cpu_selection()
    assert fake_cpu["calls"] == 1 and not first.cached
    assert precision.cpu_selection() is first  # this process: memo
    precision._memo.clear()  # a new process: the cache file
    again = precision.cpu_selection()
    assert fake_cpu["calls"] == 1 and again.cached and again.measurement == first.measurement
    files = list((Path(precision.cache_path("x")).parent).glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["measurement"]["fp32_mkl"] == 170
    fake_cpu["isa"] = isa(AVX512_BF16)  # another machine (flags): measured anew
    precision._memo.clear()
    precision.cpu_selection()
    assert fake_cpu["calls"] == 2
    files[0].write_text("{not json")  # an unreadable cache file is measured again
    fake_cpu["isa"] = isa(AVX2)
    precision._memo.clear()
    assert not precision.cpu_selection().cached and fake_cpu["calls"] == 3
    # a measurement taken on busy cores serves this process only: the next one measures again
    files[0].unlink()
    fake_cpu["measurement"] = measured(170, 400, cpu_share=0.4)
    precision._memo.clear()
    busy = precision.cpu_selection()
    assert busy.choice.fp32_kernel == "mkl" and not files[0].exists()
    precision._memo.clear()
    precision.cpu_selection()
    assert fake_cpu["calls"] == 5


def test_a_resume_keeps_the_checkpoints_precision():
    current = precision.TrainingPrecision("cpu", False, "mkl", "auto")
    assert precision.resumed_precision(current, None) is current
    assert precision.resumed_precision(current, {"bf16": False, "kernel": "mkl"}) is current
    resumed = precision.resumed_precision(current, {"bf16": True, "kernel": "onednn-bf16"})
    assert resumed.bf16 and resumed.kernel == "onednn-bf16" and resumed.source == "the checkpoint's"
    assert precision.resumed_precision(current, {"bf16": True, "kernel": "bogus"}) is current


# -- the kernels and the bf16 paths ---------------------------------------------------------------

def tiny_model(dropout: float = 0.0) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout).with_labels(["a", "b", "c"])
    return BertForSequenceClassification(config)


def padded_batch():
    gen = torch.Generator().manual_seed(1)
    lengths = [20, 7, 13, 3]
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(5, 99, (n,), generator=gen)
        mask[i, :n] = 1
    return ids, mask


@pytest.mark.skipif(not onednn_linear_available(), reason="no oneDNN in this torch build")
def test_onednn_linears_train_like_pytorchs():
    ids, mask = padded_batch()
    reference, model = tiny_model(), tiny_model()
    assert use_onednn_linears(model) == 10  # 2 layers x (qkv, output, up, down), pooler, classifier
    assert isinstance(model.bert.layers[0].feed_forward.up, OneDnnLinear)
    assert model.state_dict().keys() == reference.state_dict().keys()
    for m in (reference, model):
        m(ids, mask).square().sum().backward()
    assert torch.allclose(model(ids, mask), reference(ids, mask), atol=1e-5)
    for (name, a), b in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6), name
    assert use_onednn_linears(model, False) == 10 and type(model.classifier) is torch.nn.Linear


def test_bf16_fast_path_matches_the_bf16_plain_path():
    """Under CPU bf16 autocast: logits and gradients of the packed fast path (explicit fp32-softmax
    attention, [CLS]-only last layer) against the padded plain path (SDPA), to bf16 tolerance."""
    ids, mask = padded_batch()
    grads = {}
    for fast in (True, False):
        model = tiny_model()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(ids, mask, fast=fast)
        assert logits.dtype == torch.bfloat16
        logits.float().square().sum().backward()
        grads[fast] = (logits.float().detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                                  if p.grad is not None})
        assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights
    (fast_logits, fast_grads), (plain_logits, plain_grads) = grads[True], grads[False]
    assert torch.allclose(fast_logits, plain_logits, rtol=2e-2, atol=2e-2 * plain_logits.abs().max())
    assert fast_grads.keys() == plain_grads.keys()
    for name, g in plain_grads.items():
        err = (fast_grads[name] - g).norm() / g.norm().clamp_min(1e-12)
        assert err < 5e-2, (name, float(err))


def test_bf16_dropout_keeps_its_scale():
    from bertfit.model import cpu_dropout

    torch.manual_seed(0)
    y = cpu_dropout(torch.ones(4096, dtype=torch.bfloat16), 0.1)
    kept = y[y != 0]
    assert y.dtype == torch.bfloat16
    assert torch.equal(kept, torch.full_like(kept, 1 / 0.9))  # 1/0.9 rounded once, not a rounded mask


# -- a whole run in bf16: the flag, the run file, exact resume ----------------------------------

def tiny_args(model_dir: Path, csv: Path, run: Path, *flags: str) -> list[str]:
    return ["--model", str(model_dir), "--train-file", str(csv), "--output-dir", str(run), "--max-length", "24",
            "--batch-size", "16", "--lr", "5e-4", "--log-every", "1", "--save-every", "2", "--max-steps", "6",
            "--threads", "1", *flags]


def test_bf16_run_resumes_bit_identically(tiny_model_dir, tmp_path):
    csv = write_csv(tmp_path / "reviews.csv", synthetic_rows(120, seed=5))
    reference, run = tmp_path / "reference", tmp_path / "run"
    out = bertfit(tiny_args(tiny_model_dir, csv, reference, "--bf16"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "training precision on cpu: bf16" in out.stderr
    record = json.loads((reference / "precision.json").read_text())
    assert record["bf16"] is True and record["source"].startswith("forced by --bf16")
    state = json.loads((RunDir(reference).checkpoint_path(6) / "state.json").read_text())
    assert state["precision"] == {"bf16": True, "kernel": "onednn-bf16"}
    out = bertfit(tiny_args(tiny_model_dir, csv, run, "--bf16"), env={"BERTFIT_KILL_AT_STEP": "5"})
    assert out.returncode == -9, out.stderr[-2000:]
    out = bertfit(["--resume", str(run)])
    assert out.returncode == 0 and "resuming" in out.stderr, out.stderr[-2000:]
    assert log_records(run) == log_records(reference)  # per-step losses, lr, batch hashes, evaluations
    a, b = load_file(str(run / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    opt_a = torch.load(RunDir(run).checkpoint_path(6) / "trainer.pt", weights_only=True)["optimizer"]["state"]
    opt_b = torch.load(RunDir(reference).checkpoint_path(6) / "trainer.pt", weights_only=True)["optimizer"]["state"]
    assert all(opt_a[i][k].dtype == torch.float32 or k == "step" for i in opt_a for k in opt_a[i])
    assert all(torch.equal(opt_a[i][k], opt_b[i][k]) for i in opt_b for k in opt_b[i])
    # --no-bf16 (and auto on a CPU without bf16) trains in fp32: another result
    fp32 = tmp_path / "fp32"
    out = bertfit(tiny_args(tiny_model_dir, csv, fp32, "--no-bf16"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((fp32 / "precision.json").read_text())["bf16"] is False
    c = load_file(str(fp32 / "model.safetensors"))
    assert not all(torch.equal(a[k], c[k]) for k in a)
