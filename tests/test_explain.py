"""Word-level explanations (Integrated Gradients, predict/explain.py): complete on every task, faithful
to a planted cue, the same through the Python API, the CLI and the HTTP server, and bounded on /explain."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bertfit.predict import explain as explainer
from bertfit.predict.explain import SIMPSON, grid
from bertfit.predict.predictor import Predictor
from bertfit.tasks import TASKS
from bertfit.train.config import TrainConfig
from bertfit.train.finetune import fine_tune
from conftest import NEGATIVE, POSITIVE, synthetic_rows, write_csv
from test_tasks import _rows, _write_jsonl

FINE_TUNING = sorted(name for name, cls in TASKS.items() if cls.command == "train")
CUE_TEXTS = ["the food was really great today", "this phone app is awful", "a lovely trip to the city with the team",
             "the plot and the ending were horrible so"]


@pytest.fixture(scope="module")
def cue_run(tmp_path_factory, tiny_model_dir) -> Path:
    """A tiny classifier trained where one word decides the label (a sentiment word among filler)."""
    tmp = tmp_path_factory.mktemp("cue")
    data = write_csv(tmp / "cue.csv", synthetic_rows(800, seed=1))
    config = TrainConfig(train_file=str(data), model=str(tiny_model_dir), output_dir=str(tmp / "run"), max_length=32,
                         batch_size=16, lr=5e-4, epochs=4, warmup_ratio=0.1, seed=0, threads=1)
    result = fine_tune(config)
    assert result.metrics["test"]["accuracy"] >= 0.95
    return result.run_dir


def _train(tmp_path: Path, model_dir: Path, task: str) -> tuple[Path, list[dict]]:
    """test_tasks' small learnable data set of the task, trained long enough to have learned something."""
    train = _write_jsonl(tmp_path / f"{task}.jsonl", _rows(task, 120, seed=1))
    config = TrainConfig(train_file=str(train), model=str(model_dir), output_dir=str(tmp_path / "run"), problem_type=task,
                         max_steps=120, batch_size=16, lr=5e-4, threads=1, max_length=32, eval_each_epoch=False,
                         pair_column="text_pair" if task == "regression" else None,
                         **({"doc_stride": 8} if task == "qa" else {}),
                         **({"class_weights": "balanced"} if task == "ner" else {}))  # else it may tag all O
    fine_tune(config)
    return tmp_path / "run", _rows(task, 24, seed=2)


def _inputs(task: str, rows: list[dict]) -> tuple[list, list | None]:
    texts = [r["input"] if "input" in r else r["text"] for r in rows]
    return texts, ([r["text_pair"] for r in rows] if task in ("regression", "qa") else None)


@pytest.mark.parametrize("task", FINE_TUNING)
def test_attributions_add_up_on_every_task(task, tmp_path, tiny_model_dir):
    """Completeness: Σ word attributions = f(input) − f(baseline) within the stated tolerance; f(input)
    is what the prediction says, f(baseline) what the model gives with [PAD] for every word."""
    run, rows = _train(tmp_path, tiny_model_dir, task)
    predictor = Predictor.load(run, engine="pytorch")
    texts, pairs = _inputs(task, rows[:4])
    which = ["all"] if task in ("single-label", "multi-label", "regression") else None
    # A tighter bound than the default (5%, 0.005), so that a small model's small changes are checked too.
    explained = predictor.explain(texts, pairs, which=which, tolerance=0.01, atol=1e-4)
    assert len(explained) == len(texts)
    checked = 0
    for result in explained:
        for e in result["explanations"]:
            total = sum(w["attribution"] for w in e["words"])
            assert abs(total - (e["value"] - e["baseline"])) == pytest.approx(e["completeness_error"], abs=1e-9)
            assert e["completeness_error"] <= e["tolerance"] == max(0.01 * abs(e["value"] - e["baseline"]), 1e-4)
            assert all(w["end"] > w["start"] for w in e["words"])
            checked += 1
        _check_values(task, result)
    assert checked >= len(texts) - 1  # NER may find no entity in a sentence
    # The words changed something: the check would be empty if the model ignored its input.
    assert max(abs(e["value"] - e["baseline"]) for r in explained for e in r["explanations"]) > 0.005


def test_a_question_longer_than_the_window_is_explained_as_it_is_predicted(tmp_path, tiny_model_dir):
    """Prediction cuts a long question to fit its windows; the explanation must read the same input
    (it once tokenized the uncut question and failed: "a question is too long for the window")."""
    run, rows = _train(tmp_path, tiny_model_dir, "qa")
    predictor = Predictor.load(run, engine="pytorch")
    question = rows[0]["text"] + " " + " ".join(["and", "which", "word", "is", "it"] * 12)  # > 20 tokens: the room
    context = rows[0]["text_pair"]
    predicted = predictor.predictions([question], [context])[0]
    result = predictor.explain([question], [context])[0]
    assert [e["target"] for e in result["explanations"]] == ["start", "end"]
    assert result["explanations"][0]["answer"] == predicted["answer"]
    asked = [w for w in result["explanations"][0]["words"] if w.get("field") == "question"]
    assert asked and len(asked) < len(question.split())  # the words the window held, not the whole question


def _check_values(task: str, result: dict) -> None:
    """The explained value is the prediction's own number."""
    p, explanations = result["prediction"], result["explanations"]
    if task == "single-label":
        for e in explanations:
            assert e["value"] == pytest.approx(p["probabilities"][e["target"]], abs=1e-5)
    elif task == "multi-label":
        for e in explanations:
            assert e["value"] == pytest.approx(p["probabilities"][e["target"]], abs=1e-5)
    elif task == "regression":
        assert explanations[0]["value"] == pytest.approx(p["value"], abs=1e-4)
    elif task == "ner":
        assert sorted(e["target"] for e in explanations) == sorted(f"{x['type']}: {x['text']}" for x in p["entities"])
        for e in explanations:
            score = next(x["score"] for x in p["entities"] if f"{x['type']}: {x['text']}" == e["target"])
            assert e["value"] == pytest.approx(score, abs=1e-5)
    elif task == "qa":
        assert [e["target"] for e in explanations] == ["start", "end"]
        assert explanations[0]["answer"] == p["answer"]
    elif task == "multiple-choice":
        assert [e["target"] for e in explanations] == [p["answer"]]


def test_baseline_is_the_text_with_pad_for_every_word(cue_run):
    """f(baseline) is the model's output on [CLS] [PAD]... [SEP] (same positions, same mask)."""
    predictor = Predictor.load(cue_run, engine="pytorch")
    text = CUE_TEXTS[0]
    e = predictor.explain([text])[0]["explanations"][0]
    ids = predictor.tokenizer.encode([text], max_length=32)[0].ids
    pads = [ids[0]] + [predictor.tokenizer.pad_id] * (len(ids) - 2) + [ids[-1]]
    with torch.no_grad():
        logits = predictor.model(torch.tensor([pads]), torch.ones(1, len(ids), dtype=torch.long),
                                 torch.zeros(1, len(ids), dtype=torch.long))
    p = predictor.task.decode(logits.numpy())[0]["probabilities"][e["target"]]  # with the fitted temperature
    assert e["baseline"] == pytest.approx(p, abs=1e-5)
    assert e["tolerance"] == max(0.05 * abs(e["value"] - e["baseline"]), 0.005)  # the default bound


def test_steps_are_raised_until_complete(cue_run, caplog):
    """From one Simpson panel (3 evaluations) and a tight tolerance, panels are halved until the bound holds;
    capped at one panel, the miss is reported and logged."""
    predictor = Predictor.load(cue_run, engine="pytorch")
    e = predictor.explain([CUE_TEXTS[2]], steps=1, tolerance=1e-4, atol=1e-6)[0]["explanations"][0]
    assert e["steps"] > 3 and e["completeness_error"] <= e["tolerance"]
    capped = predictor.explain([CUE_TEXTS[2]], steps=1, max_steps=1, tolerance=1e-9, atol=1e-12)[0]["explanations"][0]
    assert capped["steps"] == 3 and capped["completeness_error"] > capped["tolerance"]
    assert "miss completeness" in caplog.text


def _count_chunks(monkeypatch) -> list[int]:
    """The points (jobs) of every batch the explainer runs, in order."""
    chunks: list[int] = []
    run_chunk = explainer._run_chunk

    def counted(model, chunk, pad_id):
        chunks.append(len(chunk))
        return run_chunk(model, chunk, pad_id)

    monkeypatch.setattr(explainer, "_run_chunk", counted)
    return chunks


def test_raising_the_steps_reuses_every_evaluation(cue_run, monkeypatch):
    """The nested rule: halving a panel keeps its points, so the points the model runs are exactly the
    distinct points reported as steps (Gauss–Legendre's doubling ran 16 + 32 for 32)."""
    predictor = Predictor.load(cue_run, engine="pytorch")
    chunks = _count_chunks(monkeypatch)
    e = predictor.explain([CUE_TEXTS[2]], steps=2, tolerance=1e-4, atol=1e-6)[0]["explanations"][0]
    assert e["steps"] > 3 and e["completeness_error"] <= e["tolerance"]
    assert len(chunks) > 1 and sum(chunks) == e["steps"]  # raised at least once, nothing evaluated twice


def test_simpson_grid_integrates_cubics_exactly_and_nests():
    assert float(SIMPSON.sum()) == pytest.approx(1.0)
    for k in range(4):  # a panel [0, 1]: exact to degree 3
        assert float(np.sum(SIMPSON * np.array([0.0, 0.5, 1.0]) ** k)) == pytest.approx(1 / (k + 1), abs=1e-12)
    assert grid(16, 256) == (256, 32)  # 8 panels of 2 intervals of 1/16; the finest interval 1/256
    assert grid(1, 1) == (2, 2) and grid(12, 100) == (192, 32)


def test_a_file_is_explained_in_shared_batches_with_the_same_attributions(cue_run, monkeypatch):
    """Several texts run together (fewer batches than one by one) and give each text the attributions
    it gets alone, complete."""
    predictor = Predictor.load(cue_run, engine="pytorch")
    texts = CUE_TEXTS + ["great", "the the the awful awful food at the place we went to on the trip"]
    alone = [predictor.explain([t])[0] for t in texts]
    chunks = _count_chunks(monkeypatch)
    together = predictor.explain(texts)
    assert len(chunks) < len(texts) and max(chunks) > max(e["explanations"][0]["steps"] for e in alone)
    for a, b in zip(alone, together):
        assert a["prediction"]["label"] == b["prediction"]["label"]
        (x,), (y,) = a["explanations"], b["explanations"]
        assert (x["target"], x["steps"]) == (y["target"], y["steps"]) and y["completeness_error"] <= y["tolerance"]
        assert [w["text"] for w in x["words"]] == [w["text"] for w in y["words"]]
        np.testing.assert_allclose([w["attribution"] for w in y["words"]], [w["attribution"] for w in x["words"]],
                                   atol=1e-5, rtol=0)
        assert y["value"] == pytest.approx(x["value"], abs=1e-5) and y["baseline"] == pytest.approx(x["baseline"], abs=1e-5)


def test_a_time_limit_that_stops_refinement_logs_one_line_not_a_warning_each(cue_run, caplog):
    """The report's explanations run under a time limit: stopping there is not a fault, and a training run's
    output must not fill with a warning per target (issue 31: no false alarms)."""
    import logging
    import time as clock

    predictor = Predictor.load(cue_run, engine="pytorch")
    with caplog.at_level(logging.INFO, logger="bertfit.predict.explain"):
        out = predictor.explain(CUE_TEXTS[:3], which=["all"], steps=1, tolerance=1e-9, atol=1e-12,
                                deadline=clock.monotonic())
    incomplete = [e for r in out for e in r["explanations"] if e["completeness_error"] > e["tolerance"]]
    assert len(incomplete) >= 2  # the limit did stop them, and each says so
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert sum("reached the time limit before the completeness bound" in r.message for r in caplog.records) == 1


def test_planted_cue_is_ranked_first(cue_run):
    """Where one word decides the label, the explanation of the predicted class puts that word first."""
    predictor = Predictor.load(cue_run, engine="pytorch")
    rows = synthetic_rows(30, seed=7)
    explained = predictor.explain([t for t, _ in rows])
    for (text, label), result in zip(rows, explained):
        assert result["prediction"]["label"] == label, text
        e = result["explanations"][0]
        assert e["target"] == label
        top = max(e["words"], key=lambda w: w["attribution"])
        assert top["text"] in (POSITIVE if label == "positive" else NEGATIVE), (text, e["words"])
        assert text[top["start"]:top["end"]] == top["text"]


def test_words_are_the_users_words_with_character_spans():
    """Subwords are summed into whitespace-separated words: '@user', "don't" and URLs stay whole."""
    from bertfit.tasks.explaining import text_plan
    from tokenizers import Tokenizer
    from tokenizers.models import WordPiece
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer
    from tokenizers.processors import TemplateProcessing

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "@", "user", "don", "'", "t", "go",
                                         "http", ":", "/", "x", "##y", "no"])}
    raw = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    raw.normalizer = BertNormalizer(lowercase=True)
    raw.pre_tokenizer = BertPreTokenizer()
    raw.post_processor = TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                            special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    text = "@user  don't go http://xy no"
    plan = text_plan([raw.encode(text)], [(("text", text),)], lambda o, w: [])
    assert [(w.text, text[w.start:w.end]) for w in plan.words] == [
        ("@user", "@user"), ("don't", "don't"), ("go", "go"), ("http://xy", "http://xy"), ("no", "no")]
    owner = plan.word_of[0]
    assert owner[0] == -1 and owner[-1] == -1  # [CLS] and [SEP] keep their embeddings
    assert owner[1:3].tolist() == [0, 0] and owner[3:6].tolist() == [1, 1, 1]


def test_api_cli_and_http_give_the_same_attributions(cue_run, tmp_path):
    """`bertfit explain --json`, Predictor.explain and POST /explain: the same targets, words and numbers."""
    pytest.importorskip("fastapi")
    import httpx

    from test_serve import Server

    api = Predictor.load(cue_run).explain(CUE_TEXTS)
    cli = subprocess.run([sys.executable, "-m", "bertfit", "-q", "explain", str(cue_run), "--json", *CUE_TEXTS],
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    from_cli = [json.loads(line) for line in cli.stdout.splitlines()]
    assert [r["input"] for r in from_cli] == CUE_TEXTS
    server = Server(cue_run, tmp_path / "serve.log")
    try:
        server.wait("/ready")
        answer = httpx.post(server.url + "/explain", json={"texts": CUE_TEXTS}, timeout=120)
    finally:
        server.stop()
    assert answer.status_code == 200, answer.text
    from_http = answer.json()["explanations"]
    for a, c, h in zip(api, from_cli, from_http):
        assert _shape(a) == _shape(c) == _shape(h)
        np.testing.assert_allclose(_numbers(c), _numbers(a), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(_numbers(h), _numbers(a), rtol=1e-6, atol=1e-9)


def _shape(result: dict) -> list:
    return [(e["target"], e["steps"], [(w["text"], w["start"], w["end"]) for w in e["words"]])
            for e in result["explanations"]]


def _numbers(result: dict) -> list[float]:
    return [x for e in result["explanations"] for x in (e["value"], e["baseline"], *(w["attribution"] for w in e["words"]))]


def test_cli_colours_words_and_names_an_unknown_target(cue_run):
    run = [sys.executable, "-m", "bertfit", "-q", "explain", str(cue_run)]
    shown = subprocess.run([*run, "--color", "always", "the food was really great"], capture_output=True, text=True,
                           timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("positive: probability") and "\x1b[48;5;40m\x1b[97mgreat\x1b[0m" in shown.stdout
    plain = subprocess.run([*run, "--color", "never", "--target", "all", "the food was really great"],
                           capture_output=True, text=True, timeout=300)
    assert "\x1b[" not in plain.stdout and "great(+" in plain.stdout and "negative: probability" in plain.stdout
    bad = subprocess.run([*run, "--target", "happy", "x"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "cannot explain class 'happy'" in bad.stderr and "Traceback" not in bad.stderr


def test_predict_file_explain_column(cue_run, tmp_path):
    source = write_csv(tmp_path / "in.csv", [(t, "") for t in CUE_TEXTS[:2]], header=("text", "note"))
    done = subprocess.run([sys.executable, "-m", "bertfit", "-q", "predict", str(cue_run), "--file", str(source),
                           "--explain"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    import csv

    rows = list(csv.DictReader(open(tmp_path / "in.predictions.csv", encoding="utf-8")))
    api = Predictor.load(cue_run).explain(CUE_TEXTS[:2])
    for row, want in zip(rows, api):
        got = json.loads(row["explanation"])
        assert [e["target"] for e in got] == [row["label"]] == [want["prediction"]["label"]]
        assert [w["text"] for w in got[0]["words"]] == [w["text"] for w in want["explanations"][0]["words"]]


def test_explain_endpoint_limits_and_deadline(cue_run, tmp_path):
    """/explain takes /predict's limits (422s), names a bad target, and answers 504 past its own deadline."""
    pytest.importorskip("fastapi")
    import httpx

    from test_serve import Server

    server = Server(cue_run, tmp_path / "limits.log", "--max-texts-per-request", "2", "--max-chars", "50",
                    "--explain-timeout-s", "1", gate=True)
    try:
        server.wait("/health")
        server.open_gate()
        server.wait("/ready")
        post = lambda body: httpx.post(server.url + "/explain", json=body, timeout=60)  # noqa: E731
        too_many = post({"texts": ["a", "b", "c"]})
        assert too_many.status_code == 422 and too_many.json()["limit"] == "max_texts_per_request"
        too_long = post({"texts": ["great " * 20]})
        assert too_long.status_code == 422 and too_long.json()["limit"] == "max_chars"
        bad = post({"texts": ["great"], "targets": ["happy"]})
        assert bad.status_code == 422 and bad.json()["field"] == "targets" and "happy" in bad.json()["error"]
        everything = post({"texts": ["great"], "targets": ["all"]})
        assert everything.status_code == 200
        assert [e["target"] for e in everything.json()["explanations"][0]["explanations"]] == ["negative", "positive"]
        server.close_gate()  # the model's worker waits: the answer cannot come in time
        late = post({"texts": ["great"]})
        assert late.status_code == 504, late.text
        assert late.json()["code"] == "timeout" and late.json()["limit"] == "explain_timeout_s"
        assert late.json()["max"] == 1
        info = httpx.get(server.url + "/info", timeout=10).json()
        assert info["limits"]["explain_timeout_s"] == 1
    finally:
        server.stop()


@pytest.mark.slow
def test_page_highlights_the_cue_word(cue_run, tmp_path):
    """In Chromium: classify, press "Why?", and the cue word carries the strongest attribution toward the
    predicted class (read from the DOM, no screenshot)."""
    from test_browser import CHROMIUM, CHROMIUM_ARGS, open_page
    from test_serve import Server

    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    server = Server(cue_run, tmp_path / "page.log")
    try:
        server.wait("/ready")
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, timeout=60_000)
            try:
                page, outside, problems = open_page(browser, server.url + "/")
                page.wait_for_selector("#status[data-state='ready']")
                page.fill("#texts", "\n".join(CUE_TEXTS[:2]))
                page.click("#classify")
                page.wait_for_selector(".result .why")
                for card in range(2):
                    page.locator(".result .why").first.click()
                    page.wait_for_selector(f".result:nth-child({card + 1}) .explained")
                found = page.eval_on_selector_all(".result", """cards => cards.map(card => {
                    const words = [...card.querySelectorAll('.explained .word')];
                    const top = words.reduce((a, b) => Math.abs(+b.dataset.attribution) > Math.abs(+a.dataset.attribution) ? b : a);
                    return {label: card.dataset.label, target: card.querySelector('.explained').dataset.target,
                            top: top.textContent, up: top.classList.contains('up'), words: words.length,
                            title: top.title, alpha: top.style.getPropertyValue('--a')};
                })""")
                assert not outside and not problems, (outside, problems)
            finally:
                browser.close()
    finally:
        server.stop()
    assert [f["top"] for f in found] == ["great", "awful"]
    assert [f["target"] for f in found] == [f["label"] for f in found] == ["positive", "negative"]
    assert all(f["up"] and f["alpha"] == "0.850" and "toward" in f["title"] for f in found)
    assert [f["words"] for f in found] == [len(t.split()) for t in CUE_TEXTS[:2]]


def test_report_explains_mistakes_and_the_words_behind_each_class(cue_run):
    """report.md: the worst mistakes' strongest words, and the words that most often push each class (on
    the planted-cue data: the sentiment words)."""
    report = (cue_run / "report.md").read_text(encoding="utf-8")
    assert "## Why: the words behind the predictions" in report
    section = report.split("## Why: the words behind the predictions")[1].split("\n## ")[0]
    rows = {line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| ") and "/" in line}
    assert set(rows) >= {"positive", "negative"}
    for label, cues, others in (("positive", POSITIVE, NEGATIVE), ("negative", NEGATIVE, POSITIVE)):
        first = rows[label].split("|")[2].split(",")[0].split("(")[0].strip()  # the most frequent word
        assert first in cues and not any(f" {w} (" in rows[label] for w in others), rows[label]


def test_explain_report_seconds_flag_reaches_the_config():
    from bertfit.cli import build_parser
    from bertfit.cli.train import given_settings
    from bertfit.train.config import resolve_config

    args = build_parser().parse_args(["train", "--train-file", "x.csv", "--explain-report-seconds", "0"])
    config = resolve_config(*given_settings(args))
    assert config.explain_report_seconds == 0.0
    assert resolve_config(*given_settings(build_parser().parse_args(["train"]))).explain_report_seconds == 10.0
    with pytest.raises(Exception, match="explain_report_seconds"):
        TrainConfig(explain_report_seconds=-1)
    assert "explain_report_seconds" not in TrainConfig().to_dict()  # a default run's saved settings are as before
    assert TrainConfig.from_dict(config.to_dict()).explain_report_seconds == 0.0  # a changed budget is saved


def test_report_explanations_skipped_at_zero_seconds(tmp_path, tiny_model_dir, monkeypatch, caplog):
    """explain_report_seconds 0: no explanation is computed and the report says the section was skipped."""
    def refuse(*args, **kwargs):
        raise AssertionError("explained with a budget of 0 s")

    monkeypatch.setattr("bertfit.train.explain_report.explain_plans", refuse)
    data = write_csv(tmp_path / "cue.csv", synthetic_rows(120, seed=1))
    config = TrainConfig(train_file=str(data), model=str(tiny_model_dir), output_dir=str(tmp_path / "run"), max_length=32,
                         batch_size=16, max_steps=4, seed=0, threads=1, eval_each_epoch=False, explain_report_seconds=0)
    with caplog.at_level("INFO"):
        result = fine_tune(config)
    assert result.report_inputs.explanations == {"skipped": "explain_report_seconds is 0"}
    section = result.report.read_text(encoding="utf-8").split("## Why: the words behind the predictions")[1]
    assert "Skipped (explain_report_seconds is 0)" in section.split("\n## ")[0]
    assert "explanations skipped" in caplog.text


def test_report_explanations_are_batched_and_log_their_time(cue_run, caplog):
    """The section explains its sample within the budget, says how long it took, and logs it."""
    from bertfit.train.explain_report import report_explanations

    predictor = Predictor.load(cue_run, engine="pytorch")
    examples = predictor.task.inputs(CUE_TEXTS)
    with caplog.at_level("INFO", logger="bertfit.train.explain_report"):
        found = report_explanations(predictor.explanation_model(), predictor.task, predictor.tokenizer, 32, [], [],
                                    examples, budget_s=60)
    assert found["sample"] == len(CUE_TEXTS) and 0 < found["seconds"] <= 60 and found["budget_s"] == 60
    assert set(found["class_words"]) == {"positive", "negative"}
    assert "report: explained 0 mistakes and 4 validation examples in" in caplog.text
