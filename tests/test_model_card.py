"""The model card (README.md) of every task's run, parsed by huggingface_hub (ModelCard.load,
metadata_load) with its model-index under the task's hub type; trainer_state.json in transformers'
format; a distributed run's card names its world size; a card the user edited is never overwritten."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard, metadata_load

from bertfit.tasks import TASKS
from test_distributed import MAKERS, corpus

TASK_OPTIONS = {"problem_type": "--task", "pair_column": "--pair-column", "doc_stride": "--doc-stride"}


def bertfit(*args, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BERTFIT_KILL", "BERTFIT_CRASH"))}
    return subprocess.run([sys.executable, "-m", "bertfit", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**env, "OMP_NUM_THREADS": "1"})


def train(model_dir: Path, folder: Path, task: str, *extra) -> Path:
    data = MAKERS[task](folder)
    run = folder / "run"
    flags = [x for key, value in data.items() if key != "train_file" for x in (TASK_OPTIONS[key], value)]
    out = bertfit("train", "--model", model_dir, "--train-file", data["train_file"], *flags, "--output-dir", run,
                  "--max-length", 32, "--max-steps", 4, "--eval-every", 2, "--log-every", 1, "--threads", 1,
                  "--batch-size", 16, "--lr", "5e-4", *extra)
    assert out.returncode == 0, out.stderr[-3000:]
    return run


def check_card(run: Path, hub_task: str, splits: tuple[str, ...]) -> dict:
    card = ModelCard.load(run / "README.md")
    meta = metadata_load(run / "README.md")
    assert card.data.library_name == meta["library_name"] == "bertfit"
    assert hub_task in meta["tags"]
    (index,) = meta["model-index"]
    assert index["name"] == run.name
    results = index["results"]
    assert {r["task"]["type"] for r in results} == {hub_task}
    assert sorted(r["dataset"]["split"] for r in results) == sorted(splits)
    metrics = json.loads((run / "metrics.json").read_text())
    for result in results:  # every value is the run's own, under its own name
        split = metrics[result["dataset"]["split"]]
        assert result["metrics"] and all(m["value"] == pytest.approx(split[m["name"]], abs=1e-6) for m in result["metrics"])
    assert card.data.eval_results  # huggingface_hub parses the model-index back into EvalResults
    for heading in ("## Training data", "## Results", "## Training", "## How to use", "## Limitations"):
        assert heading in card.text
    return meta


@pytest.mark.parametrize("task", sorted(MAKERS))
def test_every_task_writes_a_card_the_hub_parses(tmp_path, tiny_model_dir, task):
    run = train(tiny_model_dir, tmp_path, task)
    meta = check_card(run, TASKS[task].hub_task, ("validation", "test"))
    if TASKS[task].hub_task != "multiple-choice":
        assert meta["pipeline_tag"] == TASKS[task].hub_task
    architecture = json.loads((run / "config.json").read_text())["architectures"][0]
    assert f"{architecture}.from_pretrained" in (run / "README.md").read_text()
    state = json.loads((run / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and state["max_steps"] == 4
    history = state["log_history"]
    train_entries = [h for h in history if "loss" in h]
    assert [h["step"] for h in train_entries] == [1, 2, 3, 4]
    assert all({"learning_rate", "grad_norm", "epoch"} <= set(h) for h in train_entries)
    evals = [h for h in history if "eval_loss" in h]
    assert [h["step"] for h in evals] == [2, 4]
    assert state["best_global_step"] in (2, 4) and state["best_metric"] is not None
    assert "train_runtime" in history[-1]


def test_a_pretraining_run_writes_a_fill_mask_card(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    out = bertfit("pretrain", "--model", tiny_model_dir, "--corpus", corpus(tmp_path / "corpus.txt"),
                  "--output-dir", run, "--max-length", 32, "--max-steps", 4, "--eval-every", 2, "--threads", 1,
                  "--batch-size", 8, "--log-every", 1)
    assert out.returncode == 0, out.stderr[-3000:]
    meta = check_card(run, "fill-mask", ("validation",))
    assert meta["pipeline_tag"] == "fill-mask"
    assert "bertfit fill-mask" in (run / "README.md").read_text()


def test_an_edited_card_is_kept_and_evaluate_updates_an_unedited_one(tmp_path, tiny_model_dir):
    run = train(tiny_model_dir, tmp_path, "single-label")
    written = (run / "README.md").read_text()
    out = bertfit("evaluate", run, "--file", tmp_path / "single.csv", "--update-card")
    assert out.returncode == 0, out.stderr[-3000:]
    updated = (run / "README.md").read_text()
    assert updated != written and "single.csv (evaluate)" in updated  # bertfit's own card: rewritten
    results = metadata_load(run / "README.md")["model-index"][0]["results"]
    assert len(results) == 3  # validation, test, and the evaluated file
    edited = updated.replace("## Limitations", "## Limitations\n\nOur team's notes.")
    (run / "README.md").write_text(edited)
    out = bertfit("evaluate", run, "--file", tmp_path / "single.csv", "--update-card")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (run / "README.md").read_text() == edited  # the user's card is untouched
    assert "README.bertfit.md" in out.stderr + out.stdout
    assert ModelCard.load(run / "README.bertfit.md").data.library_name == "bertfit"


@pytest.mark.distributed
def test_a_distributed_runs_card_lists_its_world_size(tmp_path, tiny_model_dir):
    run = train(tiny_model_dir, tmp_path, "single-label", "--nproc", 2)
    text = (run / "README.md").read_text()
    assert "world size 2 (2 data-parallel processes)" in text
    assert json.loads((run / "trainer_state.json").read_text())["world_size"] == 2


def test_a_multi_seed_run_has_its_best_seeds_card_on_top(tmp_path, tiny_model_dir):
    run = train(tiny_model_dir, tmp_path, "single-label", "--seeds", 2)
    check_card(run, "text-classification", ("validation", "test"))
    assert json.loads((run / "trainer_state.json").read_text())["global_step"] == 4
