"""Question answering end to end: a tiny model learns a synthetic QA task through `bertfit train`'s
library entry point, and the run predicts (Python, CLI), loads in transformers, and resumes exactly after an
interruption."""

from __future__ import annotations

import json
import re
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import NEGATIVE, POSITIVE, WORDS, interrupt_at_step

TAILS = ["pizza", "coffee", "hotel", "car"]
FILLER = [w for w in WORDS if w not in TAILS]


def synthetic_qa(n: int, seed: int) -> list[dict]:
    """"the good" / "the bad" over filler text holding one sentiment word and a tail word right after
    it: the answer is those two words. Learnable by a tiny model; contexts up to ~40 tokens, so
    windows of 32 tokens split many of them."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [rng.choice(FILLER) for _ in range(rng.randint(8, 40))]
        ask = rng.choice(["good", "bad"])
        answer = [rng.choice(POSITIVE if ask == "good" else NEGATIVE), rng.choice(TAILS)]
        k = rng.randrange(len(words) + 1)
        words = words[:k] + answer + words[k:]
        context = " ".join(words)
        text = " ".join(answer)
        rows.append({"id": f"s{seed}-{i}", "question": "the " + ask, "context": context,
                     "answers": {"text": [text], "answer_start": [context.index(text)]}})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def qa_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("qa-data")
    return {name: write_jsonl(d / f"{name}.jsonl", synthetic_qa(n, seed))
            for name, n, seed in (("train", 320, 1), ("validation", 80, 2), ("test", 100, 3))}


def _config(files, model_dir, out, **kw):
    from bertfit.train.config import TrainConfig

    values = dict(train_file=str(files["train"]), validation_file=str(files["validation"]),
                  test_file=str(files["test"]), problem_type="qa", model=str(model_dir), max_length=32, doc_stride=8,
                  epochs=3, batch_size=16, lr=2e-3, warmup_ratio=0.0, output_dir=str(out), seed=0, save_every=20,
                  threads=2)
    values.update(kw)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def qa_run(qa_files, no_dropout_model_dir, tmp_path_factory):
    from bertfit.train.finetune import fine_tune

    out = tmp_path_factory.mktemp("qa-run") / "run"
    result = fine_tune(_config(qa_files, no_dropout_model_dir, out))
    return out, result


def test_tiny_model_learns_synthetic_qa(qa_run):
    out, result = qa_run
    test = result.metrics["test"]
    assert test["exact_match"] >= 90.0, test
    assert test["f1"] >= test["exact_match"]
    assert test["split_into_windows"] > 10 and test["windows"] > test["n"]  # windows were stitched
    # F1 selected the best checkpoint; the report has the QA sections and the worst answers.
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "exact match" in report and "split into windows" in report
    # Worded for QA: no "2 labels (start, end)", no zero rows for the span ends, the table's columns named.
    assert "for extractive question answering (SQuAD v1.1" in report and "training questions" in report
    assert "(start, end)" not in report and "| start |" not in report and "| with an answer |" in report
    assert "| doc_stride | 8 |" in report and "tag_column" not in report and "label_all_subwords" not in report
    task = json.loads((out / "task.json").read_text())
    assert task["task"] == "qa" and task["state"]["doc_stride"] == 8 and task["max_length"] == 32


def test_run_predicts_answers_as_spans_of_the_text(qa_run):
    from bertfit.predict.predictor import Predictor

    out, _ = qa_run
    model = Predictor.load(str(out), engine="pytorch")
    good = "the plot was long and the staff were  really\tslow then the room was a lovely pizza place"
    bad = "a   movie with the actor so often in the week awful hotel"
    records = model.records([{"question": "the good", "context": good}, ("the bad", bad)])
    assert [r["answer"] for r in records] == ["lovely pizza", "awful hotel"]
    for r, context in zip(records, (good, bad)):
        assert context[r["start"]:r["end"]] == r["answer"] and 0 < r["score"] <= 1
    assert model.predict([{"question": "the bad", "context": bad}]) == ["awful hotel"]
    top = model.task
    top.top_k = 3
    try:
        alternatives = model.records([("the good", good)])[0]["top_k"]
    finally:
        top.top_k = 1
    assert alternatives[0]["answer"] == "lovely pizza" and len(alternatives) == 3


def test_cli_predict_question_and_context(qa_run, tmp_path):
    out, _ = qa_run
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    context = "a very long day and the week then a great coffee"
    (tmp_path / "ctx.txt").write_text(context, encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "bertfit", "predict", str(out), "--question", "the good",
                           "--context-file", str(tmp_path / "ctx.txt"), "--json", "--engine", "pytorch"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["answer"] == "great coffee" and context[record["start"]:record["end"]] == "great coffee"
    # The span head never reads the pooler (saved without it, as transformers' is): loading says nothing of it.
    assert "pooler" not in proc.stderr, proc.stderr
    # The terminal form with --top-k: the answer, then the next ones, each with score, p and characters.
    proc = subprocess.run([sys.executable, "-m", "bertfit", "-q", "predict", str(out), "--question", "the good",
                           "--context-file", str(tmp_path / "ctx.txt"), "--top-k", "2", "--engine", "pytorch"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.strip().splitlines()[-2:]
    start = context.index("great coffee")
    assert re.fullmatch(rf"great coffee  \(score 0\.\d{{3}}, p 0\.\d{{3}}, characters {start}-{start + 12}\)", first), first
    assert re.fullmatch(r"  or: .+  \(score 0\.\d{3}, p 0\.\d{3}, characters \d+-\d+\)", second), second
    # Files in and out: JSON lines with question and context.
    rows = tmp_path / "in.jsonl"
    rows.write_text(json.dumps({"question": "the bad", "context": "the day a terrible car"}) + "\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "bertfit", "predict", str(out), "--file", str(rows), "--output",
                           str(tmp_path / "out.jsonl"), "--engine", "pytorch"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    written = json.loads((tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert written["answer"] == "terrible car"


def test_run_loads_in_transformers_without_missing_weights(qa_run):
    transformers = pytest.importorskip("transformers")
    import torch

    out, _ = qa_run
    model, info = transformers.AutoModelForQuestionAnswering.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    from bertfit.predict.predictor import Predictor

    ours = Predictor.load(str(out), engine="pytorch")
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    enc = tok("the good", "a lovely car and a bad hotel", return_tensors="pt")
    with torch.no_grad():
        theirs = model.eval()(**enc)
        mine = ours.backend.model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    assert torch.allclose(mine[0, :, 0], theirs.start_logits[0], atol=1e-5)
    assert torch.allclose(mine[0, :, 1], theirs.end_logits[0], atol=1e-5)


def test_bad_training_file_is_a_row_error(tmp_path, no_dropout_model_dir, qa_files):
    from bertfit.errors import DataError
    from bertfit.train.finetune import fine_tune

    rows = synthetic_qa(20, 5)
    rows[7]["answers"] = {"text": ["nowhere to be found"], "answer_start": [0]}  # not in the context at all
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match="line 8.*does not match the context"):
        fine_tune(_config({**qa_files, "train": bad}, no_dropout_model_dir, tmp_path / "run"))


PIPELINE_SCRIPT = """
import json, sys
from transformers import pipeline
run, items = sys.argv[1], json.loads(sys.stdin.read())
qa = pipeline("question-answering", model=run, tokenizer=run, device=-1)
out = [qa(question=i["question"], context=i["context"], max_answer_len=30, max_seq_len=32, doc_stride=8) for i in items]
print(json.dumps(out))
"""


def _transformers_with_qa_pipeline() -> list[str] | None:
    """A PYTHONPATH under which `pipeline("question-answering")` exists: transformers 4.x (5.x removed
    it). BERTFIT_TRANSFORMERS4 names a folder made with `pip install --target DIR --no-deps
    transformers==4.57.1 huggingface_hub==0.36.0 tokenizers==0.22.1 requests urllib3 idna certifi
    charset_normalizer`; the installed transformers counts if it still has the pipeline."""
    import importlib.util

    # `make setup` puts it in .venv/transformers4
    folder = os.environ.get("BERTFIT_TRANSFORMERS4") or str(Path(sys.prefix) / "transformers4")
    if Path(folder, "transformers").is_dir():
        return [folder]
    if importlib.util.find_spec("transformers") is not None:
        import transformers

        if int(transformers.__version__.split(".")[0]) < 5:
            return []
    if os.environ.get("CI"):  # CI installs it (make setup): the parity claim must rest on CI, not skip there
        pytest.fail("transformers 4.x for pipeline('question-answering') is missing: make setup installs it in "
                    ".venv/transformers4, or set BERTFIT_TRANSFORMERS4")
    return None


def test_pipeline_question_answering_gives_the_same_answers(qa_run):
    path = _transformers_with_qa_pipeline()
    if path is None:
        pytest.skip("transformers 5 has no pipeline('question-answering'); set BERTFIT_TRANSFORMERS4 to a folder "
                    "holding transformers 4.x (see this test's helper for the pip command)")
    from bertfit.predict.predictor import Predictor

    out, _ = qa_run
    rows = synthetic_qa(40, 11)
    items = [{"question": r["question"], "context": r["context"]} for r in rows]
    gold = [r["answers"]["text"][0] for r in rows]
    items.append({"question": "the good", "context": " ".join(["the day"] * 30) + " a lovely hotel " + "so " * 20})
    gold.append("lovely hotel")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path + [os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", PIPELINE_SCRIPT, str(out)], input=json.dumps(items),
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    ours = Predictor.load(str(out), engine="pytorch")
    mine = ours.records(items)
    windows = ours.task.encode(ours.tokenizer, ours.task.inputs(items), ours.max_length).meta
    counts = [len(f) for f in windows.windows_of()]
    assert max(counts) > 1  # some contexts span several windows
    single = 0
    for m, t, n, g in zip(mine, theirs, counts, gold):
        if n == 1:  # one window: the same answer, offsets and probability
            assert (m["answer"], m["start"], m["end"]) == (t["answer"], t["start"], t["end"])
            assert m["score"] == pytest.approx(t["score"], rel=1e-4)
            single += 1
        else:
            # Several windows: the pipeline ranks each window's best span by that window's own softmax
            # and has no max-context rule, so it may cut an answer at a window edge ("lovely" for
            # "lovely hotel"); bertfit scores each token from its most central window.
            assert m["answer"] == g
    assert single >= 20


def test_interrupted_qa_run_resumes_to_the_same_weights_and_history(tmp_path, qa_files, tiny_model_dir):
    """Killed (KeyboardInterrupt) at the 7th optimizer step, after the checkpoint of step 6, the run resumes
    from that checkpoint to the same history and bit-identical weights as a run never interrupted. Windows
    of one question train together, dropout is on (the RNG state must be restored), and evaluations
    (every 4 steps, with best-checkpoint selection on F1) happen before and after the interruption."""
    import torch
    from safetensors.torch import load_file

    from bertfit.train.finetune import fine_tune

    config = _config(qa_files, tiny_model_dir, tmp_path / "a", epochs=1, max_steps=10, batch_size=8, save_every=3,
                     eval_every=4, log_every=1, threads=1)
    reference = fine_tune(config)
    interrupted = config.replace(output_dir=str(tmp_path / "b"))
    interrupt_at_step(7, lambda: fine_tune(interrupted))
    partial = [r for r in json.loads("[" + ",".join((tmp_path / "b" / "metrics.jsonl").read_text().split("\n")[:-1]) + "]")]
    assert max(r.get("step", 0) for r in partial) < 10  # it really stopped early
    resumed = fine_tune(interrupted, resume=True)
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("tokens_per_s", "examples_per_s")} for r in h]  # noqa: E731
    assert [r["kind"] for r in reference.train.history].count("eval") >= 2
    assert strip(resumed.train.history) == strip(reference.train.history)
    a, b = (load_file(str(r.run_dir / "model.safetensors")) for r in (reference, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metrics["test"] == reference.metrics["test"]
