"""Engine "auto" on the CPU: the faster exact engine for this model on this processor, measured once per
processor and model shape, cached, and overridable (predict/engine_choice.py)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from conftest import fine_tune_tiny, synthetic_rows

pytestmark = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None,
                                reason="onnx / onnxruntime not installed")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir):
    return fine_tune_tiny(tmp_path_factory.mktemp("engine-choice"), tiny_model_dir, rows=200, epochs=1)


@pytest.fixture
def measuring(monkeypatch, tmp_path):
    """Engine "auto" as a user gets it: nothing forced, an empty cache of its own."""
    monkeypatch.delenv("BERTFIT_CPU_ENGINE", raising=False)
    monkeypatch.setenv("BERTFIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def timings(onnx: float, pytorch: float, share: float = 1.0, single_onnx: float = 0.010, single_pytorch: float = 0.015):
    from bertfit.predict.engine_choice import EngineTimings

    return EngineTimings([(256, 32)], [onnx], [pytorch], {"onnxruntime": single_onnx, "pytorch": single_pytorch},
                         threads=1, cpu_share=share, seconds=0.1)


def fake_measure(monkeypatch, result) -> list:
    from bertfit.predict import engine_choice

    calls = []

    def measure(engines, shapes, **kw):
        assert set(engines) == {"onnxruntime", "pytorch"}
        assert [e.name for e in engines.values()] == list(engines)  # each name holds its own engine
        calls.append(shapes)
        return result

    monkeypatch.setattr(engine_choice, "measure", measure)
    return calls


def no_measuring(monkeypatch) -> None:
    from bertfit.predict import engine_choice

    def measure(*args, **kwargs):
        raise AssertionError("measured again instead of reading the choice")

    monkeypatch.setattr(engine_choice, "measure", measure)


def choices(cache) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((cache / "engine-choice").glob("*.json"))]


def test_pytorch_must_win_by_the_margin_else_onnx_runtime_keeps_the_default():
    from bertfit.predict.engine_choice import MARGIN, decide

    assert decide(timings(1.0, 0.80)) == "pytorch"
    assert decide(timings(1.0, 1.0 - MARGIN - 0.01)) == "pytorch"
    assert decide(timings(1.0, 1.0 - MARGIN + 0.01)) == "onnxruntime"  # within the margin: ONNX Runtime's latency wins
    assert decide(timings(1.0, 1.3)) == "onnxruntime"
    # one short text at a time (a server) is a workload of its own: the faster of the two there
    assert decide(timings(1.0, 0.8), "latency") == "onnxruntime"
    assert decide(timings(1.0, 1.3, single_onnx=0.020, single_pytorch=0.012), "latency") == "pytorch"


def test_the_probe_runs_short_texts_and_full_length_features_at_the_token_budget():
    from bertfit.predict.engine_choice import probe_shapes

    assert probe_shapes(384) == [(64, 32), (5, 384)]  # QA's windows
    assert probe_shapes(128) == [(64, 32), (16, 128)]
    assert probe_shapes(16) == [(128, 16)]  # nothing longer than the model reads


def test_auto_takes_pytorch_where_it_measures_faster_and_remembers(tiny_run, measuring, monkeypatch):
    from bertfit.predict.predictor import Predictor

    calls = fake_measure(monkeypatch, timings(onnx=1.0, pytorch=0.8))
    predictor = Predictor.load(tiny_run)
    assert predictor.engine == "pytorch" and predictor.model is not None
    assert calls == [[(64, 32)]]  # the run's max_length is 32: one shape
    (record,) = choices(measuring)
    assert record["engine"] == {"throughput": "pytorch", "latency": "onnxruntime"}
    assert record["timings"]["pytorch"] == [0.8] and record["single_text_ms"] == {"onnxruntime": 10.0, "pytorch": 15.0}
    assert record["tokens_per_second"]["pytorch"] > record["tokens_per_second"]["onnxruntime"]
    no_measuring(monkeypatch)
    assert Predictor.load(tiny_run).engine == "pytorch"  # read from the cache
    assert Predictor.load(tiny_run, workload="latency").engine == "onnxruntime"  # what serve loads
    assert Predictor.load(tiny_run, engine="onnxruntime").engine == "onnxruntime"  # a named engine is never overruled
    assert Predictor.load(tiny_run, int8=True).engine == "onnxruntime"  # int8: ONNX Runtime's, VNNI where present


def test_auto_keeps_onnx_runtime_where_it_is_as_fast(tiny_run, measuring, monkeypatch):
    from bertfit.predict.predictor import Predictor

    fake_measure(monkeypatch, timings(onnx=1.0, pytorch=0.97))
    assert Predictor.load(tiny_run).engine == "onnxruntime"
    assert [r["engine"]["throughput"] for r in choices(measuring)] == ["onnxruntime"]


def test_a_measurement_on_a_busy_machine_decides_but_is_not_cached(tiny_run, measuring, monkeypatch):
    from bertfit.predict.predictor import Predictor

    calls = fake_measure(monkeypatch, timings(onnx=1.0, pytorch=0.5, share=0.4))
    assert Predictor.load(tiny_run).engine == "pytorch"
    assert choices(measuring) == []
    Predictor.load(tiny_run)
    assert len(calls) == 2  # measured again: a busy machine's timings are not kept


def test_the_environment_decides_without_measuring_or_exporting(tiny_run, measuring, monkeypatch):
    from bertfit.errors import ConfigError
    from bertfit.predict.predictor import Predictor

    no_measuring(monkeypatch)
    monkeypatch.setenv("BERTFIT_CPU_ENGINE", "pytorch")
    assert Predictor.load(tiny_run).engine == "pytorch"
    assert not (measuring / "onnx-fp32").exists()  # PyTorch chosen: nothing exported
    monkeypatch.setenv("BERTFIT_CPU_ENGINE", "onnxruntime")
    assert Predictor.load(tiny_run).engine == "onnxruntime"
    monkeypatch.setenv("BERTFIT_CPU_ENGINE", "tensorrt")
    with pytest.raises(ConfigError, match="BERTFIT_CPU_ENGINE='tensorrt': choose auto, onnxruntime or pytorch"):
        Predictor.load(tiny_run)


def test_a_real_measurement_times_both_engines_and_predicts_the_same(tiny_run, measuring, monkeypatch):
    """Unfaked: both engines run the probe; whichever wins, the answers are PyTorch's to 1e-5."""
    from bertfit.predict import engine_choice
    from bertfit.predict.predictor import Predictor

    monkeypatch.setattr(engine_choice, "QUIET_CPU_SHARE", 0.0)  # cache it whatever else this machine runs
    chosen = Predictor.load(tiny_run)
    (record,) = choices(measuring)
    assert chosen.engine == record["engine"]["throughput"]
    t = record["timings"]
    assert t["shapes"] == [[64, 32]] and t["threads"] == torch.get_num_threads()
    assert all(s > 0 for s in t["onnxruntime"] + t["pytorch"] + list(t["single"].values()))
    measured = engine_choice.EngineTimings(**{**t, "shapes": [tuple(s) for s in t["shapes"]]})
    assert record["engine"] == {w: engine_choice.decide(measured, w) for w in ("throughput", "latency")}
    texts = [t for t, _ in synthetic_rows(30, seed=11)]
    reference = Predictor.load(tiny_run, engine="pytorch").predict_logits(texts)
    assert np.abs(chosen.predict_logits(texts) - reference).max() <= 1e-5
    no_measuring(monkeypatch)
    assert Predictor.load(tiny_run).engine == record["engine"]["throughput"]
    assert Predictor.load(tiny_run, workload="latency").engine == record["engine"]["latency"]


def test_the_choice_is_per_processor_threads_length_and_model_shape_not_weights(tiny_run):
    from bertfit.predict.engine_choice import choice_key
    from bertfit.weights import load_config

    config = load_config(tiny_run)
    key = choice_key(config, 32, 1)
    assert key == choice_key(config, 32, 1)
    assert len({key, choice_key(config, 64, 1), choice_key(config, 32, 2)}) == 3
    deeper = type(config)(**{**config.__dict__, "num_hidden_layers": config.num_hidden_layers + 1})
    assert choice_key(deeper, 32, 1) != key


def test_the_server_loads_the_engine_that_answers_one_text_sooner(tiny_run, measuring, monkeypatch):
    from bertfit.serve.config import ServeConfig
    from bertfit.serve.host import ModelHost

    fake_measure(monkeypatch, timings(onnx=1.0, pytorch=0.5, single_onnx=0.010, single_pytorch=0.020))
    threads = torch.get_num_threads()
    host = ModelHost(ServeConfig(run=str(tiny_run), threads=threads), None)
    host.load()
    assert host.engine == "onnxruntime"  # batches would have taken PyTorch
    assert torch.get_num_threads() == threads


def test_without_onnxruntime_auto_is_pytorch_without_measuring(tiny_run, measuring, monkeypatch):
    """The core install (no `export` extra): nothing to measure against, so PyTorch, and no error."""
    import builtins
    import importlib.util
    import sys

    from bertfit.predict.predictor import Predictor

    real_find, real_import = importlib.util.find_spec, builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name.split(".")[0] in ("onnx", "onnxruntime"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    for name in [m for m in sys.modules if m.split(".")[0] in ("onnx", "onnxruntime")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(builtins, "__import__", no_onnx)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **kw: None if name in ("onnx", "onnxruntime") else real_find(name, *a, **kw))
    no_measuring(monkeypatch)
    assert Predictor.load(tiny_run).engine == "pytorch"
    assert Predictor.load(tiny_run, workload="latency").engine == "pytorch"
    assert not (measuring / "engine-choice").exists() and not (measuring / "onnx-fp32").exists()
