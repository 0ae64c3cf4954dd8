"""Multiple choice (--task multiple-choice): reading (a choices list, choiceN columns, the answer's
text, row-level errors), questions with different numbers of choices in one batch, the loss against
a hand-computed softmax cross-entropy, learning a synthetic task, transformers' AutoModelForMultipleChoice
loading the run with the same scores, the CLI (train, predict, evaluate), the library, and resume."""

from __future__ import annotations

import csv
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import bertfit
from bertfit.errors import DataError, InputError
from bertfit.heads import HEADS, BertForMultipleChoice
from bertfit.tasks import task_class
from bertfit.tasks.multiple_choice import MultipleChoice, make_example, read_choices
from bertfit.tokenizer import WordPieceTokenizer
from bertfit.train.config import TrainConfig
from bertfit.train.finetune import fine_tune
from bertfit.train.run_dir import RunDir
from bertfit.weights import load_model

from conftest import NEGATIVE, POSITIVE, WORDS

DATA = Path(__file__).parent / "data" / "commonsenseqa"
BERTFIT = str(Path(sys.executable).with_name("bertfit"))


def choice_rows(n: int, seed: int, ask: str | None = "good") -> list[dict]:
    """Questions "the good" (or "the bad") with 2 to 4 choices, exactly one holding a word of that sentiment."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a = ask or rng.choice(["good", "bad"])
        right, wrong = (POSITIVE, NEGATIVE) if a == "good" else (NEGATIVE, POSITIVE)
        count = rng.randint(2, 4)
        choices = [f"{rng.choice(WORDS)} {w}" for w in rng.sample(wrong, count - 1)]
        k = rng.randrange(count)
        choices.insert(k, f"{rng.choice(WORDS)} {rng.choice(right)}")
        rows.append({"question": "the " + a, "choices": choices, "label": k})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def settings(**kw) -> dict:
    return {"skip_bad_rows": False, **kw}


@pytest.fixture(scope="module")
def run(tmp_path_factory, no_dropout_model_dir) -> Path:
    """A tiny run on the synthetic task (fp32, so numbers compare exactly)."""
    base = tmp_path_factory.mktemp("mc")
    train = write_jsonl(base / "train.jsonl", choice_rows(240, seed=1))
    config = TrainConfig(train_file=str(train), model=str(no_dropout_model_dir), output_dir=str(base / "run"),
                         problem_type="multiple-choice", max_steps=40, batch_size=16, eval_every=20, lr=1e-3,
                         threads=1, max_length=32, bf16=False)
    result = fine_tune(config)
    assert result.metrics["test"]["accuracy"] > 0.8  # chance is about 0.35 (2 to 4 choices)
    return base / "run"


# --- reading ----------------------------------------------------------------------------------------

def test_reads_a_choices_list_choice_columns_and_answer_text(tmp_path):
    jsonl = write_jsonl(tmp_path / "a.jsonl", [
        {"question": "Where?", "context": "A story.", "choices": ["here", "there", "nowhere"], "label": 2},
        {"question": "Who?", "choices": ["me", "you"], "label": 0}])
    examples, report = read_choices(jsonl, settings())
    assert [e.choices for e in examples] == [("here", "there", "nowhere"), ("me", "you")]
    assert [e.label for e in examples] == [2, 0] and examples[0].text == "A story. Where?" and examples[1].row == 2
    assert report.rows_read == report.rows_used == 2

    wide = tmp_path / "b.csv"
    with open(wide, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["question", "choice0", "choice1", "choice2", "answer"])
        w.writerow(["Who?", "me", "you", "", "you"])  # an empty cell: a question with fewer choices
        w.writerow(["What?", "a", "b", "c", "c"])
    examples, _ = read_choices(wide, settings())
    assert [e.choices for e in examples] == [("me", "you"), ("a", "b", "c")] and [e.label for e in examples] == [1, 2]

    listed = tmp_path / "c.csv"
    listed.write_text('question,choices,label\nWhy?,"[""x"", ""y""]",1\n', encoding="utf-8")
    examples, _ = read_choices(listed, settings())
    assert examples[0].choices == ("x", "y") and examples[0].label == 1


def test_the_real_commonsenseqa_slice_reads_whole():
    examples, report = read_choices(DATA / "train.jsonl", settings())
    assert report.rows_read == report.rows_used == len(examples) == 200 and not report.rejected
    assert all(len(e.choices) == 3 and 0 <= e.label < 3 for e in examples)


BAD = [
    ({"question": "q", "choices": ["only"], "label": 0}, "at least 2 choices"),
    ({"question": "q", "choices": ["a", ""], "label": 0}, "choice 1 is empty"),
    ({"question": "q", "choices": ["a", "b"], "label": 2}, "out of range"),
    ({"question": "q", "choices": ["a", "b"], "label": "x"}, "must be the right choice's index"),
    ({"question": "q", "choices": ["a", "b", "a"], "label": 0}, "listed twice"),
    ({"question": "q", "choices": ["a", "b"], "answer": "c"}, "is not one of the choices"),
    ({"question": "", "choices": ["a", "b"], "label": 0}, "question is missing or empty"),
    ({"question": "q", "choices": "not json", "label": 0}, "choices must be a list"),
]


@pytest.mark.parametrize("row,message", BAD)
def test_bad_rows_are_row_errors_or_counted_skips(row, message, tmp_path):
    rows = [{"question": "q", "choices": ["a", "b"], "label": 0}] * 2
    gold = "answer" if "answer" in row else "label"
    rows = [{"question": "q", "choices": ["a", "b"], gold: "a" if gold == "answer" else 0}] * 2
    path = write_jsonl(tmp_path / "bad.jsonl", rows[:1] + [row] + rows[1:])
    with pytest.raises(DataError) as excinfo:
        read_choices(path, settings())
    assert "bad.jsonl, row 2: " in str(excinfo.value) and message in str(excinfo.value)
    assert "--skip-bad-rows" in str(excinfo.value)
    examples, report = read_choices(path, settings(skip_bad_rows=True))
    assert len(examples) == 2 and report.rows_read == 3 and [r.row for r in report.rejected] == [2]


def test_a_file_without_the_columns_says_what_it_needs(tmp_path):
    with pytest.raises(DataError, match="no 'question' column"):
        read_choices(write_jsonl(tmp_path / "x.jsonl", [{"text": "a", "label": 0}]), settings())
    with pytest.raises(DataError, match="no gold answer"):
        read_choices(write_jsonl(tmp_path / "y.jsonl", [{"question": "a", "choices": ["a", "b"]}]), settings())


# --- batches and the loss ---------------------------------------------------------------------------

def test_questions_with_different_numbers_of_choices_share_a_batch_and_the_loss_is_cross_entropy(no_dropout_model_dir):
    tokenizer = WordPieceTokenizer.from_dir(no_dropout_model_dir)
    task = MultipleChoice(["score"])
    examples = [make_example("the good", ["film good", "day bad"], 1),
                make_example("the good", ["a awful", "b great", "c bad", "d terrible"], 1),
                make_example("the good", ["x bad", "y horrible", "z lovely"], 2, context="a movie")]
    split = task.encode(tokenizer, examples, 32)
    assert len(split) == 9 and split.example_index.tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert split.encoded[6].type_ids.count(1) == len(split.encoded[6].ids) - split.encoded[6].type_ids.count(0)
    assert task.train_units(split) == [[0, 1], [2, 3, 4, 5], [6, 7, 8]]
    model = load_model(no_dropout_model_dir, ["score"], problem_type="multiple_choice")
    assert isinstance(model, BertForMultipleChoice)
    # questions 2 and 0 in the batch, in that order: groups follow the question ids
    batch = task.collate(split, [6, 7, 8, 0, 1], 0)
    assert batch.groups.tolist() == [1, 1, 1, 0, 0] and batch.labels.tolist() == [1, 2]
    model.train()
    rows = model(batch.input_ids, batch.attention_mask, batch.token_type_ids)  # (5, 1)
    scores = task.batch_outputs(rows, batch)
    assert scores.shape == (2, 3) and math.isinf(scores[0, 2].item())
    summed, weight = task.loss(scores, batch.labels)
    r = rows[:, 0].detach().double()
    by_hand = -(torch.log_softmax(r[3:5], 0)[1] + torch.log_softmax(r[0:3], 0)[2])
    torch.testing.assert_close(summed.double(), by_hand, atol=1e-5, rtol=1e-5)
    assert weight.item() == 2.0
    summed.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # the score bias shifts every choice of a question alike: no loss depends on it (test_distributed's invisible)
    assert model.classifier.bias.grad.abs().max() < 1e-6 < model.classifier.weight.grad.abs().max()
    # a micro-batch split (out-of-memory back-off) keeps each question whole
    parts = batch.split(2)
    assert [p.labels.tolist() for p in parts] == [[1], [2]] and [len(p.indices) for p in parts] == [2, 3]


def test_the_head_is_registered_with_one_output():
    assert task_class("multiple-choice").head == "choice" and HEADS["choice"] is BertForMultipleChoice
    assert task_class("multiple_choice") is MultipleChoice


# --- a trained run ----------------------------------------------------------------------------------

def test_run_learns_and_predicts_through_the_library(run):
    metrics = json.loads((run / "metrics.json").read_text())["test"]
    assert metrics["accuracy"] > 0.8 and set(metrics["per_position"]) == {"0", "1", "2", "3"}
    assert sum(map(sum, metrics["confusion_matrix"])) == metrics["n"]
    config = json.loads((run / "config.json").read_text())
    assert config["architectures"] == ["BertForMultipleChoice"] and config["id2label"] == {"0": "score"}
    model = bertfit.load(run)
    records = model.predictions([{"question": "the good", "choices": ["day bad", "film great", "movie awful"]},
                                 {"question": "the good", "choices": ["car lovely", "pizza horrible"], "context": "food"}])
    assert [r["index"] for r in records] == [1, 0] and records[0]["answer"] == "film great"
    assert len(records[1]["scores"]) == 2 and sum(records[1]["scores"]) == pytest.approx(1.0)
    assert model.predict([("the good", ["day bad", "city excellent"])]) == ["city excellent"]
    with pytest.raises(InputError, match="at least 2 choices"):
        model.predict([{"question": "the good", "choices": ["alone"]}])
    report = (run / "report.md").read_text()
    assert "right answer" in report and "chance" in report


def test_transformers_loads_the_run_as_bert_for_multiple_choice_with_the_same_scores(run):
    transformers = pytest.importorskip("transformers")
    hf, info = transformers.AutoModelForMultipleChoice.from_pretrained(run, output_loading_info=True)
    assert type(hf).__name__ == "BertForMultipleChoice"
    assert not info["missing_keys"] and not info["unexpected_keys"]
    tok = transformers.AutoTokenizer.from_pretrained(run)
    question, choices = "the good", ["day bad", "film great", "movie awful"]
    enc = tok([question] * 3, choices, padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = hf.eval()(**{k: v.unsqueeze(0) for k, v in enc.items()}).logits[0].numpy()  # (1, C) -> (C,)
    ours = bertfit.load(run, engine="pytorch").predict_logits([{"question": question, "choices": choices}])[0]
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5)


# --- the command line -------------------------------------------------------------------------------

def cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([BERTFIT, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def test_cli_train_predict_and_evaluate_on_commonsenseqa(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    done = cli("train", "--task", "multiple-choice", "--model", tiny_model_dir, "--train-file", DATA / "train.jsonl",
               "--validation-file", DATA / "dev.jsonl", "--output-dir", out, "--max-steps", "4", "--batch-size", "8",
               "--max-length", "48", "--threads", "1", "--no-bf16")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "task.json").read_text())["task"] == "multiple-choice"
    questions = write_jsonl(tmp_path / "q.jsonl", [{"question": "Where is a lantern?", "choices": ["shop", "house"]},
                                                   {"question": "Who?", "choices": ["me", "you", "them"]}])
    done = cli("predict", out, "--file", questions)
    assert done.returncode == 0, done.stderr[-3000:]
    written = [json.loads(line) for line in (tmp_path / "q.predictions.jsonl").read_text().splitlines()]
    assert [r["answer"] in q["choices"] for r, q in zip(written, [{"choices": ["shop", "house"]},
                                                                   {"choices": ["me", "you", "them"]}])] == [True, True]
    assert all({"answer", "index", "probability"} <= set(r) for r in written)
    # an optional "context" column is read too (the task's input_options), as Python and the server read it
    item = {"question": "Where is a lantern?", "choices": ["shop", "house"], "context": "It was dark in the shop."}
    done = cli("predict", out, "--file", write_jsonl(tmp_path / "c.jsonl", [item]))
    assert done.returncode == 0, done.stderr[-3000:]
    row = json.loads((tmp_path / "c.predictions.jsonl").read_text().splitlines()[0])
    import bertfit

    with_context = bertfit.load(out).predictions([item])[0]
    assert row["probability"] == pytest.approx(max(with_context["scores"]), abs=1e-4)
    assert bertfit.load(out).task.inputs([item])[0].text.startswith("It was dark in the shop.")  # read first
    done = cli("predict", out, "--file", write_jsonl(tmp_path / "n.jsonl", [{**item, "context": 5}]))
    assert done.returncode == 2 and "context must be a string" in done.stderr  # the column was read, and checked
    done = cli("evaluate", out, "--file", DATA / "dev.jsonl")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "accuracy" in done.stdout and "60 questions" in done.stdout
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "choices": ["a", "b"], "label": 5}])
    done = cli("evaluate", out, "--file", bad)
    assert done.returncode != 0 and "bad.jsonl, row 1" in done.stderr and "Traceback" not in done.stderr


def test_kill_then_resume_is_bit_identical(tmp_path, tiny_model_dir):
    train = write_jsonl(tmp_path / "train.jsonl", choice_rows(120, seed=3))

    def args(run: Path) -> list[str]:
        return ["train", "--task", "multiple-choice", "--model", tiny_model_dir, "--train-file", train, "--output-dir",
                run, "--max-length", "32", "--batch-size", "8", "--lr", "5e-4", "--log-every", "1", "--save-every", "3",
                "--max-steps", "12", "--threads", "1", "--no-bf16"]

    env = {"PYTHONHASHSEED": "0"}
    assert (done := cli(*args(tmp_path / "ref"), env=env)).returncode == 0, done.stderr[-2000:]
    killed = cli(*args(tmp_path / "run"), env={**env, "BERTFIT_KILL_AT_STEP": "7"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (done := cli("train", "--resume", tmp_path / "run", env=env)).returncode == 0, done.stderr[-2000:]
    timing = ("tokens_per_s", "examples_per_s")
    logs = [[{k: v for k, v in r.items() if k not in timing} for r in RunDir(p).read_log()]
            for p in (tmp_path / "run", tmp_path / "ref")]
    assert logs[0] == logs[1]
    a, b = (load_file(str(p / "model.safetensors")) for p in (tmp_path / "run", tmp_path / "ref"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
