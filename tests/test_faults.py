"""Faults that must never lose or poison a run: corrupt and malicious checkpoints, NaN losses and
weights, a full disk, out-of-memory. (Data files are fuzzed in test_data_fuzz.py; kill -9 and
crashes inside a save are in test_resume.py.)

The corruption catalogue (``CORRUPTIONS``, ``corrupt``, ``checkpoint_validator``) is shared with
benchmarks/resume_stress.py, which runs hundreds of random corruptions.
"""

from __future__ import annotations

import builtins
import errno
import json
import logging
import math
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import load_file, save_file

from bertfit.errors import BertfitError, CheckpointError
from bertfit.heads import BertForSequenceClassification
from bertfit.train.finetune import fine_tune
from bertfit.train.run_dir import CHECKPOINT_FILES, RunDir
from bertfit.io import sha256_file
from bertfit.train.loop import Trainer, TrainingError
from bertfit.train.config import TrainConfig
from conftest import BF16_EPS

# ---------------------------------------------------------------------------------------------
# Shared: the validator a resume uses (taken from fine_tune itself), and the corruption catalogue
# ---------------------------------------------------------------------------------------------


class _Captured(BaseException):
    """Raised from inside fine_tune once the resume's Trainer exists (a BaseException: no handler eats it)."""


def checkpoint_validator(config: TrainConfig) -> Trainer:
    """The Trainer that ``fine_tune(config, resume=True)`` itself builds for this run, taken at the moment
    it would pick a checkpoint: its validate_checkpoint is exactly what a resume applies (not a copy of
    fine_tune's set-up). It is taken on a scratch copy of the run, which is then removed."""
    import tempfile

    captured: dict[str, Trainer] = {}
    real = Trainer.resume_latest

    def capture(self: Trainer) -> None:
        captured["trainer"] = self
        raise _Captured

    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "run"
        shutil.copytree(config.output_dir, copy)
        Trainer.resume_latest = capture
        try:
            fine_tune(config.replace(output_dir=str(copy)), resume=True)
        except _Captured:
            pass
        finally:
            Trainer.resume_latest = real
    if "trainer" not in captured:
        raise AssertionError("fine_tune(resume=True) never asked its Trainer to resume")
    return captured["trainer"]


def resign(ckpt: Path) -> None:
    """Rewrite the manifest to match the files, as if the corrupt content had been saved so: the
    checksums then pass, and only the content checks can catch the problem."""
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["files"] = {n: {"sha256": sha256_file(ckpt / n), "bytes": (ckpt / n).stat().st_size}
                         for n in CHECKPOINT_FILES}
    (ckpt / "manifest.json").write_text(json.dumps(manifest, separators=(",", ":")))


def _edit_weights(ckpt: Path, edit: Callable[[dict], None]) -> None:
    state = load_file(str(ckpt / "model.safetensors"))
    edit(state)
    save_file(state, str(ckpt / "model.safetensors"))
    resign(ckpt)


def _edit_trainer(ckpt: Path, edit: Callable[[dict], object], replace: bool = False) -> None:
    state = torch.load(ckpt / "trainer.pt", weights_only=True)
    result = edit(state)
    torch.save(result if replace else state, ckpt / "trainer.pt")
    resign(ckpt)


def _edit_state(ckpt: Path, edit: Callable[[dict], None]) -> None:
    state = json.loads((ckpt / "state.json").read_text())
    edit(state)
    (ckpt / "state.json").write_text(json.dumps(state))
    resign(ckpt)


def _first(state: dict, rng: random.Random) -> str:
    return rng.choice(sorted(state))


def _moment(trainer: dict) -> torch.Tensor:
    return trainer["optimizer"]["state"][0]["exp_avg"]


# Raw damage to one file; the manifest's checksums must catch every one.
def truncate(ckpt: Path, name: str, rng: random.Random) -> None:
    data = (ckpt / name).read_bytes()
    (ckpt / name).write_bytes(data[: rng.randrange(len(data))])


def flip_bytes(ckpt: Path, name: str, rng: random.Random) -> None:
    data = bytearray((ckpt / name).read_bytes())
    for _ in range(rng.choice([1, 1, 2, 8])):
        data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
    (ckpt / name).write_bytes(bytes(data))


def zero_block(ckpt: Path, name: str, rng: random.Random) -> None:
    data = bytearray((ckpt / name).read_bytes())
    start = rng.randrange(len(data))
    length = rng.randint(1, 4096)
    block = data[start : start + length]
    if not any(block):  # already zero there: make it a real change
        block = bytearray(b"\xff" * len(block))
    else:
        block = bytearray(len(block))
    data[start : start + len(block)] = block
    (ckpt / name).write_bytes(bytes(data))


def append_garbage(ckpt: Path, name: str, rng: random.Random) -> None:
    with open(ckpt / name, "ab") as f:
        f.write(bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))))


def delete(ckpt: Path, name: str, rng: random.Random) -> None:
    (ckpt / name).unlink()


def swap_with_previous(ckpt: Path, name: str, rng: random.Random) -> None:
    """The file of the same name from the previous checkpoint (e.g. a botched manual copy)."""
    step = int(ckpt.name.split("-")[1])
    previous = max(s for s in RunDir(ckpt.parent.parent).checkpoint_steps() if s < step)
    shutil.copyfile(ckpt.parent / f"step-{previous:08d}" / name, ckpt / name)


RAW = {"truncate": truncate, "flip_bytes": flip_bytes, "zero_block": zero_block, "append_garbage": append_garbage,
       "delete": delete, "swap_with_previous": swap_with_previous}
RAW_TARGETS = CHECKPOINT_FILES + ("manifest.json",)


def _nan(state, rng, value=float("nan")):
    name = rng.choice([k for k in sorted(state) if state[k].numel() > 1])
    t = state[name].clone()
    t.view(-1)[rng.randrange(t.numel())] = value
    state[name] = t


def _wrong_shape(state, rng):
    name = rng.choice([k for k in sorted(state) if state[k].ndim == 2])
    t = state[name]
    state[name] = torch.zeros(t.shape[0] + 1, t.shape[1]) if rng.random() < 0.5 else t.t().contiguous()
    if state[name].shape == t.shape:  # a square matrix transposed: change the shape for real
        state[name] = t[:-1]


def _wrong_moment_shape(trainer, rng):
    state = trainer["optimizer"]["state"]
    index = rng.choice(sorted(state))
    state[index]["exp_avg"] = torch.zeros(3, 5)


def _nan_moment(trainer, rng):
    state = trainer["optimizer"]["state"]
    index = rng.choice(sorted(state))
    t = state[index]["exp_avg_sq"].clone()
    t.view(-1)[0] = float("nan")
    state[index]["exp_avg_sq"] = t


def _epoch_order_duplicate(state, rng):
    order = state["epoch_order"]
    if order is None:  # a checkpoint at an epoch's end stores no order: give it a broken one
        state["epoch_order"] = [[0, 0]]
    else:
        order[0][0] = order[-1][-1]


# Content damage written as if it were genuine (manifest re-signed): the content checks catch it.
SEMANTIC: dict[str, Callable[[Path, random.Random], None]] = {
    "weights_nan": lambda c, r: _edit_weights(c, lambda s: _nan(s, r)),
    "weights_inf": lambda c, r: _edit_weights(c, lambda s: _nan(s, r, float("-inf"))),
    "weights_wrong_shape": lambda c, r: _edit_weights(c, lambda s: _wrong_shape(s, r)),
    "weights_int_dtype": lambda c, r: _edit_weights(c, lambda s: s.update({(k := _first(s, r)): s[k].long()})),
    "weights_half_dtype": lambda c, r: _edit_weights(c, lambda s: s.update({(k := _first(s, r)): s[k].half()})),
    "weights_missing_tensor": lambda c, r: _edit_weights(c, lambda s: s.pop(_first(s, r))),
    "weights_extra_tensor": lambda c, r: _edit_weights(c, lambda s: s.update({"bert.extra.weight": torch.zeros(2)})),
    "weights_empty_file": lambda c, r: _edit_weights(c, lambda s: s.clear()),
    "optimizer_moment_shape": lambda c, r: _edit_trainer(c, lambda t: _wrong_moment_shape(t, r)),
    "optimizer_moment_nan": lambda c, r: _edit_trainer(c, lambda t: _nan_moment(t, r)),
    "optimizer_group_missing": lambda c, r: _edit_trainer(c, lambda t: t["optimizer"]["param_groups"].pop()),
    "optimizer_state_missing": lambda c, r: _edit_trainer(c, lambda t: t.pop("optimizer")),
    "scheduler_wrong_step": lambda c, r: _edit_trainer(c, lambda t: t["scheduler"].update(last_epoch=t["scheduler"]["last_epoch"] + 1)),
    "torch_rng_wrong_size": lambda c, r: _edit_trainer(c, lambda t: t.update(torch_rng=t["torch_rng"][:100])),
    "trainer_not_a_dict": lambda c, r: _edit_trainer(c, lambda t: [torch.zeros(3)], replace=True),
    "state_step_mismatch": lambda c, r: _edit_state(c, lambda s: s.update(step=s["step"] + 1)),
    "state_negative_position": lambda c, r: _edit_state(c, lambda s: s.update(batch_in_epoch=-1)),
    "state_python_rng_short": lambda c, r: _edit_state(c, lambda s: s["python_rng"][1].pop()),
    "state_numpy_rng_garbage": lambda c, r: _edit_state(c, lambda s: s.update(numpy_rng=["PCG64", [], 0, 0, 0.0])),
    "state_best_step_in_future": lambda c, r: _edit_state(c, lambda s: s.update(best_step=s["step"] + 5)),
    "state_epoch_order_not_a_partition": lambda c, r: _edit_state(c, lambda s: _epoch_order_duplicate(s, r)),
    "state_format": lambda c, r: _edit_state(c, lambda s: s.update(format=99)),
    "state_not_json": lambda c, r: ((c / "state.json").write_text("{'step': 8"), resign(c)),
    "state_missing_keys": lambda c, r: _edit_state(c, lambda s: s.pop(r.choice(["micro_splits", "epoch", "numpy_rng"]))),
    "manifest_wrong_step": lambda c, r: (c / "manifest.json").write_text(
        (c / "manifest.json").read_text().replace(f'"step":{int(c.name[5:])}', f'"step":{int(c.name[5:]) - 2}')),
    "manifest_missing_entry": lambda c, r: (c / "manifest.json").write_text(json.dumps(
        {**(m := json.loads((c / "manifest.json").read_text())), "files": {k: v for k, v in m["files"].items() if k != "trainer.pt"}},
        separators=(",", ":"))),
}


def corruption_kinds() -> list[str]:
    return [f"{kind}:{target}" for kind in RAW for target in RAW_TARGETS] + sorted(SEMANTIC)


def corrupt(ckpt: Path, kind: str, rng: random.Random) -> None:
    """Apply one corruption ("raw_kind:file" or a SEMANTIC name) to the checkpoint directory."""
    if ":" in kind:
        raw, target = kind.split(":")
        RAW[raw](ckpt, target, rng)
    else:
        SEMANTIC[kind](ckpt, rng)


def detects(run: Path, validator: Trainer, step: int) -> tuple[bool, str]:
    """Does a resume skip checkpoint ``step`` (the newest) and fall back to the previous one?"""
    rundir = RunDir(run)
    chosen = rundir.latest_good_checkpoint(validate=validator.validate_checkpoint)
    previous = max(s for s in rundir.checkpoint_steps() if s < step)
    ok = (chosen is not None and chosen.step == previous and rundir.skipped
          and rundir.skipped[0][0] == f"step-{step:08d}")
    return bool(ok), (rundir.skipped[0][1] if rundir.skipped else "not detected")


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------

STEPS = 8


def small_config(model_dir, csv, output_dir, **overrides) -> TrainConfig:
    values = dict(train_file=str(csv), model=str(model_dir), output_dir=str(output_dir), max_length=32, batch_size=16,
                  lr=5e-4, max_steps=STEPS, log_every=1, save_every=2, keep_checkpoints=10, eval_each_epoch=False,
                  threads=1, seed=0)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir, synthetic_csv):
    """An uninterrupted 8-step run with checkpoints at 2, 4, 6, 8 (all kept)."""
    config = small_config(tiny_model_dir, synthetic_csv, tmp_path_factory.mktemp("faults") / "reference")
    result = fine_tune(config)
    assert RunDir(result.run_dir).checkpoint_steps() == [2, 4, 6, 8]
    return config, result


@pytest.fixture(scope="module")
def validator(reference):
    return checkpoint_validator(reference[0])


def copy_run(reference, tmp_path: Path, name: str = "run") -> tuple[TrainConfig, Path]:
    config, result = reference
    target = tmp_path / name
    shutil.copytree(result.run_dir, target)
    return config.replace(output_dir=str(target)), target


def same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def train_log(history) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "examples_per_s")} for r in history]


def all_checkpoints_finite(run: Path) -> bool:
    rundir = RunDir(run)
    for step in rundir.checkpoint_steps():
        weights = load_file(str(rundir.checkpoint_path(step) / "model.safetensors"))
        if not all(bool(torch.isfinite(t).all()) for t in weights.values()):
            return False
    return True


# ---------------------------------------------------------------------------------------------
# Corruption
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", corruption_kinds())
def test_every_kind_of_corruption_is_detected_and_the_previous_checkpoint_used(kind, reference, validator,
                                                                                 tmp_path, caplog):
    _, run = copy_run(reference, tmp_path)
    corrupt(run / "checkpoints" / f"step-{STEPS:08d}", kind, random.Random(kind))
    with caplog.at_level(logging.WARNING, logger="bertfit.train.run_dir"):
        ok, problem = detects(run, validator, STEPS)
    assert ok, (kind, problem)
    assert f"step-{STEPS:08d} is unusable" in caplog.text and "trying an earlier one" in caplog.text


def test_60_random_corruptions_all_detected(reference, validator, tmp_path):
    _, run = copy_run(reference, tmp_path)
    newest = run / "checkpoints" / f"step-{STEPS:08d}"
    pristine = tmp_path / "pristine"
    shutil.copytree(newest, pristine)
    rng = random.Random(2024)
    kinds = corruption_kinds()
    missed = []
    for _ in range(60):
        shutil.rmtree(newest)
        shutil.copytree(pristine, newest)
        kind = rng.choice(kinds)
        corrupt(newest, kind, rng)
        ok, problem = detects(run, validator, STEPS)
        if not ok:
            missed.append((kind, problem))
    assert not missed


def test_resume_skips_a_corrupt_checkpoint_sets_it_aside_and_still_ends_identical(reference, tmp_path):
    config, result = reference
    config, run = copy_run(reference, tmp_path)
    for name in ("model.safetensors", "metrics.json"):  # as if killed before the final evaluation
        (run / name).unlink()
    truncate(run / "checkpoints" / f"step-{STEPS:08d}", "model.safetensors", random.Random(0))
    flip_bytes(run / "checkpoints" / f"step-{STEPS - 2:08d}", "trainer.pt", random.Random(0))
    resumed = fine_tune(config, resume=True)
    assert train_log(resumed.train.history) == train_log(result.train.history)
    assert same_weights(run / "model.safetensors", result.run_dir / "model.safetensors")
    assert resumed.metrics == result.metrics
    # the two unusable ones were moved aside (not counted as "the last K"), and reported
    assert RunDir(run).checkpoint_steps() == [2, 4, 6, 8]
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("unusable-")) == \
        ["unusable-step-00000006", "unusable-step-00000008"]
    notes = " ".join(resumed.train.notes)
    assert "step-00000008 was unusable" in notes and "step-00000006 was unusable" in notes
    assert "resumed from the earlier checkpoint of step 4" in (run / "report.md").read_text()


def test_resume_with_no_intact_checkpoint_is_a_clear_error(reference, tmp_path):
    config, run = copy_run(reference, tmp_path)
    for step in RunDir(run).checkpoint_steps():
        flip_bytes(RunDir(run).checkpoint_path(step), "state.json", random.Random(step))
    with pytest.raises(BertfitError, match="no intact checkpoint"):
        fine_tune(config, resume=True)


def test_resume_refuses_changed_training_data(tmp_path, tiny_model_dir):
    from conftest import synthetic_rows, write_csv

    csv = write_csv(tmp_path / "data.csv", synthetic_rows(300, seed=5))
    config = small_config(tiny_model_dir, csv, tmp_path / "run", max_steps=4)
    fine_tune(config)
    write_csv(csv, [(text + " again", label) for text, label in synthetic_rows(300, seed=5)])
    with pytest.raises(TrainingError, match="training data .* differ"):
        fine_tune(config, resume=True)


# ---------------------------------------------------------------------------------------------
# Malicious pickles: refused, and none of them runs
# ---------------------------------------------------------------------------------------------


class _Reduce:
    def __init__(self, fn, args) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def payloads(marker: Path) -> dict[str, bytes]:
    m = str(marker)
    getattr_chain = (b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(S'os'\ntRS'system'\ntR(S'touch "
                     + m.encode() + b"'\ntR.")
    return {
        "os_system": pickle.dumps(_Reduce(os.system, (f"touch {m}",)), protocol=2),
        "builtins_exec": pickle.dumps(_Reduce(builtins.exec, (f"open({m!r}, 'w').close()",)), protocol=4),
        "builtins_eval": pickle.dumps(_Reduce(builtins.eval, (f"open({m!r}, 'w')",)), protocol=0),
        "getattr_chain": getattr_chain,
        "posix_system": b"cposix\nsystem\n(S'touch " + m.encode() + b"'\ntR.",
    }


def torch_zip_payload(marker: Path, path: Path) -> None:
    """A real torch.save zip whose data.pkl calls os.system (what a tampered trainer.pt looks like)."""
    torch.save({"optimizer": _Reduce(os.system, (f"touch {marker}",)), "scheduler": {}, "torch_rng": torch.zeros(1)}, path)


def test_payloads_are_live(tmp_path):
    """Control: with plain pickle each payload really runs (so the refusals below mean something)."""
    for name, data in payloads(tmp_path / "control").items():
        (tmp_path / "control").unlink(missing_ok=True)
        pickle.loads(data)
        assert (tmp_path / "control").exists(), name


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("name", ["os_system", "builtins_exec", "builtins_eval", "getattr_chain", "posix_system", "torch_zip"])
def test_malicious_trainer_state_is_refused_and_never_runs(name, reference, validator, tmp_path, caplog):
    _, run = copy_run(reference, tmp_path)
    marker = tmp_path / "pwned"
    ckpt = run / "checkpoints" / f"step-{STEPS:08d}"
    if name == "torch_zip":
        torch_zip_payload(marker, ckpt / "trainer.pt")
    else:
        (ckpt / "trainer.pt").write_bytes(payloads(marker)[name])
    resign(ckpt)  # a tampered checkpoint with a valid manifest: only safe loading stands in the way
    with caplog.at_level(logging.WARNING):
        ok, problem = detects(run, validator, STEPS)
    assert ok and "refused to load" in problem, problem
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused to load"):
        RunDir(run).load_checkpoint(ckpt)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("name", ["os_system", "builtins_exec", "getattr_chain", "torch_zip"])
def test_malicious_model_files_are_refused_by_train_and_predict(name, reference, tmp_path, capsys):
    """A model directory (or run) whose weights are a malicious pytorch_model.bin: both `bertfit
    train --model DIR` and `bertfit predict DIR` refuse it with a clear error, and nothing runs."""
    from bertfit.cli import main

    config, result = reference
    model = tmp_path / "model"  # a trained classifier directory, its weights swapped for the payload
    shutil.copytree(result.run_dir, model, ignore=shutil.ignore_patterns("checkpoints", "plots"))
    (model / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    if name == "torch_zip":
        torch.save({"bert.embeddings.word_embeddings.weight": _Reduce(os.system, (f"touch {marker}",))},
                   model / "pytorch_model.bin")
    else:
        (model / "pytorch_model.bin").write_bytes(payloads(marker)[name])
    assert main(["predict", str(model), "a great film"]) == 2
    assert "refused to load" in capsys.readouterr().err
    code = main(["-q", "train", "--model", str(model), "--train-file", config.train_file, "--output-dir",
                 str(tmp_path / "run"), "--max-steps", "1", "--max-length", "32"])
    assert code == 2 and "refused to load" in capsys.readouterr().err
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# NaN: a non-finite loss stops training within that step; no checkpoint holds non-finite weights
# ---------------------------------------------------------------------------------------------


def nan_logits_at(monkeypatch, call: int) -> None:
    """The model's training forward returns NaN logits on its ``call``-th call."""
    real = BertForSequenceClassification.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        if self.training:
            calls["n"] += 1
            if calls["n"] == call:
                out = out * float("nan")
        return out

    monkeypatch.setattr(BertForSequenceClassification, "forward", forward)


def test_nan_loss_stops_within_the_step_before_updating(reference, tmp_path, monkeypatch):
    config, result = reference
    config = config.replace(output_dir=str(tmp_path / "run"))
    nan_logits_at(monkeypatch, 5)
    with pytest.raises(TrainingError, match=r"loss became nan at step 5; stopped before the weights were updated "
                                            r"\(the last checkpoint, step 4, is intact\)") as info:
        fine_tune(config)
    assert info.value.exit_code == 3
    run = RunDir(tmp_path / "run")
    assert run.checkpoint_steps() == [2, 4] and all_checkpoints_finite(run.path)
    assert [r["step"] for r in run.read_log() if r["kind"] == "train"] == [1, 2, 3, 4]
    # the checkpoints are the uninterrupted run's: nothing after step 4 touched them
    assert same_weights(run.checkpoint_path(4) / "model.safetensors",
                        RunDir(result.run_dir).checkpoint_path(4) / "model.safetensors")


def test_nan_loss_from_the_cli_exits_3_with_a_clear_message(reference, tmp_path, monkeypatch, capsys):
    from bertfit.cli import main

    config, _ = reference
    nan_logits_at(monkeypatch, 3)
    code = main(["-q", "train", "--model", config.model, "--train-file", config.train_file, "--output-dir",
                 str(tmp_path / "run"), "--max-length", "32", "--batch-size", "16", "--max-steps", "8",
                 "--save-every", "2", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 3
    assert "bertfit: error: the training loss became nan at step 3; stopped before the weights were updated" in err
    assert "Traceback" not in err
    assert RunDir(tmp_path / "run").checkpoint_steps() == [2] and all_checkpoints_finite(tmp_path / "run")


@pytest.mark.parametrize("step, stops_at", [(4, 4), (5, 6)])
def test_nan_weights_are_never_checkpointed(step, stops_at, reference, tmp_path, monkeypatch):
    """An update that leaves NaN in the weights: at a save step the checkpoint is refused; otherwise
    the next step's loss is NaN. Either way training stops and every checkpoint is finite."""
    config, _ = reference
    config = config.replace(output_dir=str(tmp_path / "run"))
    real = Trainer._optimizer_step

    def poisoned(self, group):
        out = real(self, group)
        if self.state.step + 1 == step:
            with torch.no_grad():
                self.model.classifier.weight[0, 0] = float("nan")
        return out

    monkeypatch.setattr(Trainer, "_optimizer_step", poisoned)
    with pytest.raises(TrainingError, match=f"at step {stops_at}"):
        fine_tune(config)
    run = RunDir(tmp_path / "run")
    assert max(run.checkpoint_steps()) < step and all_checkpoints_finite(run.path)
    assert not (run.path / "model.safetensors").exists()  # no best model with NaN either


# ---------------------------------------------------------------------------------------------
# A full disk
# ---------------------------------------------------------------------------------------------


def enospc(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_disk_full_during_a_checkpoint_keeps_the_previous_one_and_training_goes_on(reference, tmp_path, monkeypatch):
    import safetensors.torch

    config, result = reference
    config = config.replace(output_dir=str(tmp_path / "run"))
    real = safetensors.torch.save_file
    saves = {"n": 0}

    def save_file(tensors, filename, metadata=None):
        if ".tmp-step-" in str(filename):
            saves["n"] += 1
            if saves["n"] == 2:  # step 4: half a file reaches the disk, then it is full
                Path(filename).write_bytes(b"\0" * 1000)
                raise enospc(filename)
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    out = fine_tune(config)
    run = RunDir(out.run_dir)
    assert run.checkpoint_steps() == [2, 6, 8]
    assert all(run.verify_checkpoint(run.checkpoint_path(s)) is None for s in run.checkpoint_steps())
    assert not [p for p in run.checkpoints.iterdir() if p.name.startswith(".tmp-")]
    expected = ("could not save the checkpoint at step 4 (the disk is full: No space left on device); "
                "the previous checkpoint (step 2) is intact")
    assert any(n.startswith(expected) for n in out.train.notes)
    assert "the disk is full" in (out.run_dir / "report.md").read_text()
    # training itself was not disturbed
    assert train_log(out.train.history) == train_log(result.train.history)
    assert same_weights(out.run_dir / "model.safetensors", result.run_dir / "model.safetensors")


def test_disk_full_while_writing_trainer_state_partially(reference, tmp_path, monkeypatch):
    config, _ = reference
    config = config.replace(output_dir=str(tmp_path / "run"), max_steps=4)
    real = torch.save
    saves = {"n": 0}

    def save(obj, f, *args, **kwargs):
        if ".tmp-step-" in str(f):
            saves["n"] += 1
            if saves["n"] == 2:
                real(obj, f, *args, **kwargs)
                data = Path(f).read_bytes()
                Path(f).write_bytes(data[: len(data) // 3])
                raise enospc(f)
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    out = fine_tune(config)
    run = RunDir(out.run_dir)
    assert run.checkpoint_steps() == [2]  # step 4's save failed; step 2 is still complete
    assert run.latest_good_checkpoint() is not None and not run.skipped
    assert any("step 4 (the disk is full" in n for n in out.train.notes)


def test_disk_full_while_saving_the_best_model_stops_cleanly_and_resumes(reference, tmp_path, monkeypatch, capsys):
    import safetensors.torch

    from bertfit.cli import main

    config, result = reference
    run = tmp_path / "run"
    real = safetensors.torch.save_file

    def save_file(tensors, filename, metadata=None):
        if Path(filename).parent == run:
            raise enospc(filename)
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    args = ["-q", "train", "--model", config.model, "--train-file", config.train_file, "--output-dir", str(run),
            "--max-length", "32", "--batch-size", "16", "--lr", "5e-4", "--max-steps", str(STEPS), "--log-every", "1",
            "--save-every", "2", "--keep-checkpoints", "10", "--no-eval-each-epoch", "--threads", "1", "--seed", "0"]
    assert main(args) == 3
    err = capsys.readouterr().err
    assert f"could not save the best model at step {STEPS}" in err and "the disk is full" in err
    assert f"the last checkpoint, step {STEPS - 2}, is intact" in err and "--resume" in err
    assert RunDir(run).checkpoint_steps() == [2, 4, 6]
    monkeypatch.setattr(safetensors.torch, "save_file", real)  # space freed
    assert main(["-q", "train", "--resume", str(run)]) == 0
    assert train_log(RunDir(run).read_log()) == train_log(result.train.history)
    assert same_weights(run / "model.safetensors", result.run_dir / "model.safetensors")


def test_disk_full_on_the_metrics_log_stops_cleanly_and_resumes(reference, tmp_path, monkeypatch):
    config, result = reference
    config = config.replace(output_dir=str(tmp_path / "run"))
    real = RunDir.append_log

    def append_log(self, record):
        if record.get("step") == 5:
            raise enospc(self.metrics_log)
        return real(self, record)

    monkeypatch.setattr(RunDir, "append_log", append_log)
    with pytest.raises(TrainingError, match="at step 5 .the disk is full.*the last checkpoint, step 4, is intact"):
        fine_tune(config)
    monkeypatch.setattr(RunDir, "append_log", real)
    resumed = fine_tune(config, resume=True)
    assert train_log(resumed.train.history) == train_log(result.train.history)
    assert same_weights(resumed.run_dir / "model.safetensors", result.run_dir / "model.safetensors")


# ---------------------------------------------------------------------------------------------
# Out of memory: smaller micro-batches, same effective batch
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def no_dropout_model_dir(tmp_path_factory):
    from conftest import build_tiny_model_dir

    directory = build_tiny_model_dir(tmp_path_factory.mktemp("tiny-no-dropout"))
    config = json.loads((directory / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def oom_above(monkeypatch, limit: int, training: bool = True) -> None:
    real = BertForSequenceClassification.forward

    def forward(self, input_ids, *args, **kwargs):
        if self.training == training and input_ids.shape[0] > limit:
            raise RuntimeError(f"CUDA out of memory. Tried to allocate 2.00 GiB (batch of {input_ids.shape[0]})")
        return real(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(BertForSequenceClassification, "forward", forward)


def test_out_of_memory_backs_off_to_smaller_micro_batches(no_dropout_model_dir, synthetic_csv, tmp_path, monkeypatch):
    # fp32: the same gradient summed in another order agrees to 1e-6 only without bf16's 2^-8 roundings
    config = small_config(no_dropout_model_dir, synthetic_csv, tmp_path / "plain", lr=1e-4, classifier_dropout=0.0,
                          bf16=False)
    plain = fine_tune(config)
    oom_above(monkeypatch, 8)
    backed_off = fine_tune(config.replace(output_dir=str(tmp_path / "oom")))
    state = backed_off.train.state
    assert state.micro_splits == 2 and state.step == STEPS
    assert state.examples_seen == plain.train.state.examples_seen == STEPS * 16
    notes = [n for n in backed_off.train.notes if "out of memory" in n]
    assert len(notes) == 1
    assert "out of memory at step 1 with micro-batches of 16" in notes[0]
    assert "continuing with micro-batches of 8" in notes[0] and "the effective batch is unchanged" in notes[0]
    a = load_file(str(plain.run_dir / "model.safetensors"))
    b = load_file(str(backed_off.run_dir / "model.safetensors"))
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-6, worst  # the same gradient, summed in another order
    losses = [(r["loss"], s["loss"]) for r, s in zip(plain.train.history, backed_off.train.history) if r["kind"] == "train"]
    assert all(math.isclose(x, y, rel_tol=1e-5) for x, y in losses)
    # the back-off is part of the checkpoint: a resume keeps the smaller micro-batches
    assert json.loads((RunDir(backed_off.run_dir).checkpoint_path(STEPS) / "state.json").read_text())["micro_splits"] == 2


def test_out_of_memory_back_off_in_bf16_takes_the_same_steps(no_dropout_model_dir, synthetic_csv, tmp_path,
                                                             monkeypatch):
    """The back-off under bf16 autocast (emulated where the CPU lacks the instructions): micro-batches
    of 8 round other matmul shapes than 16, so each step's loss is held to 4 bf16 roundings of itself
    (4 · 2^-8), and the weights' mean difference to 1/100 of how far training moved them."""
    config = small_config(no_dropout_model_dir, synthetic_csv, tmp_path / "plain", lr=1e-4, classifier_dropout=0.0,
                          bf16=True)
    plain = fine_tune(config)
    oom_above(monkeypatch, 8)
    backed_off = fine_tune(config.replace(output_dir=str(tmp_path / "oom")))
    assert backed_off.train.state.micro_splits == 2 and backed_off.train.state.step == STEPS
    assert json.loads((backed_off.run_dir / "precision.json").read_text())["bf16"] is True
    losses = [(r["loss"], s["loss"]) for r, s in zip(plain.train.history, backed_off.train.history) if r["kind"] == "train"]
    assert len(losses) == STEPS and all(abs(x - y) <= 4 * BF16_EPS * abs(x) for x, y in losses), losses
    a = load_file(str(plain.run_dir / "model.safetensors"))
    b = load_file(str(backed_off.run_dir / "model.safetensors"))
    start = load_file(str(no_dropout_model_dir / "model.safetensors"))
    shared = [k for k in start if k in a]
    apart = sum(float((a[k] - b[k]).abs().mean()) for k in shared) / len(shared)
    moved = sum(float((a[k] - start[k]).abs().mean()) for k in shared) / len(shared)
    assert apart * 100 <= moved, (apart, moved)


def test_out_of_memory_after_a_backward_restarts_the_step_cleanly(no_dropout_model_dir, synthetic_csv, tmp_path,
                                                                  monkeypatch):
    """Out of memory in the step's second batch, after the first one's backward has written gradients
    (the word embeddings' kept buffer included): the retry must start from zero gradients."""
    config = small_config(no_dropout_model_dir, synthetic_csv, tmp_path / "plain", lr=1e-4, classifier_dropout=0.0,
                          batch_size=8, grad_accum=2, bf16=False)  # fp32: compared to 1e-6
    plain = fine_tune(config)
    real = BertForSequenceClassification.forward
    calls = []

    def forward(self, input_ids, *args, **kwargs):
        if self.training:
            calls.append(input_ids.shape[0])
            if len(calls) == 2:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(BertForSequenceClassification, "forward", forward)
    retried = fine_tune(config.replace(output_dir=str(tmp_path / "oom")))
    assert calls[:2] == [8, 8] and retried.train.state.micro_splits == 2
    a = load_file(str(plain.run_dir / "model.safetensors"))
    b = load_file(str(retried.run_dir / "model.safetensors"))
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-6, worst


def test_out_of_memory_even_for_one_example_is_a_clear_error(tiny_model_dir, synthetic_csv, tmp_path, monkeypatch):
    oom_above(monkeypatch, 0)
    with pytest.raises(TrainingError, match="out of memory at step 1 even with micro-batches of one example"):
        fine_tune(small_config(tiny_model_dir, synthetic_csv, tmp_path / "run"))


def test_out_of_memory_in_evaluation_splits_the_batch(no_dropout_model_dir, synthetic_csv, tmp_path, monkeypatch):
    config = small_config(no_dropout_model_dir, synthetic_csv, tmp_path / "plain", max_steps=2)
    plain = fine_tune(config)
    oom_above(monkeypatch, 5, training=False)
    split = fine_tune(config.replace(output_dir=str(tmp_path / "oom")))
    for name in ("validation", "test"):
        assert split.metrics[name]["accuracy"] == plain.metrics[name]["accuracy"]
        assert math.isclose(split.metrics[name]["loss"], plain.metrics[name]["loss"], rel_tol=1e-5)


# ---------------------------------------------------------------------------------------------
# The run directory's own guarantees
# ---------------------------------------------------------------------------------------------


def test_truncate_log_never_pads_a_shorter_log(tmp_path, caplog):
    run = RunDir(tmp_path)
    run.create()
    run.append_log({"kind": "train", "step": 1})
    size = run.log_size()
    run.append_log({"kind": "train", "step": 2})
    run.truncate_log(size)
    assert [r["step"] for r in run.read_log()] == [1]
    with caplog.at_level(logging.WARNING):
        run.truncate_log(size + 500)  # e.g. lines lost in a power cut: warn, never write zeros
    assert run.log_size() == size and "shorter" in caplog.text


def test_prune_keeps_the_last_k_and_the_best(tmp_path):
    run = RunDir(tmp_path)
    run.create()
    trainer_state = {"optimizer": {"state": {}, "param_groups": []}, "scheduler": {}, "torch_rng": torch.get_rng_state()}
    for step in range(1, 8):
        best = 3 if step >= 3 else None
        run.save_checkpoint(step, {"w": torch.full((2,), float(step))}, trainer_state, {"step": step, "best_step": best}, keep=2)
    assert run.checkpoint_steps() == [3, 6, 7]
    with pytest.raises(CheckpointError, match="refusing to checkpoint step 8: w holds NaN"):
        run.save_checkpoint(8, {"w": torch.tensor([1.0, float("nan")])}, trainer_state, {"step": 8}, keep=2)
    assert run.checkpoint_steps() == [3, 6, 7]
    assert not [p for p in run.checkpoints.iterdir() if p.name.startswith(".tmp-")]


def test_stale_temporaries_are_swept_at_start(tmp_path):
    run = RunDir(tmp_path)
    run.create()
    (run.checkpoints / ".tmp-step-00000004-999").mkdir()
    (run.checkpoints / ".tmp-step-00000004-999" / "model.safetensors").write_bytes(b"half")
    (run.checkpoints / ".tmp-prune-step-00000002").mkdir()
    (tmp_path / ".model.safetensors.tmp").write_bytes(b"half")
    (tmp_path / "model.safetensors").write_bytes(b"keep me")
    RunDir(tmp_path).create()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".bertfit-run", "checkpoints", "model.safetensors"]
    assert list(run.checkpoints.iterdir()) == []
