"""NER and QA behind the HTTP server, in process (FastAPI's test client): each task's own inputs
(pre-tokenised words; a question over a passage, with top-k answers), the same records as
`bertfit predict` / Predictor, 422s naming the field, /info's task and the page's QA view."""

from __future__ import annotations

import re
import time
from contextlib import contextmanager

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from test_browser import browser, open_page  # noqa: E402,F401  (fixtures)
from test_ner_task import ner_model_dir, ner_run  # noqa: E402,F401  (fixtures)
from test_qa import _config, qa_files  # noqa: E402,F401  (fixtures)

PASSAGE = "the plot was long and the staff were  really\tslow then the room was a lovely pizza place"
SENTENCES = [["we", "met", "mary", "jones", "in", "rome"], ["yesterday", "john", "visited", "acme", "corp", "."]]


@contextmanager
def served(run_dir, **limits):
    """The app on a test client, once its model has loaded (PyTorch: no ONNX export in a unit test)."""
    from fastapi.testclient import TestClient

    from bertfit.serve import ServeConfig, create_app

    app = create_app(ServeConfig(run=str(run_dir), engine="pytorch", threads=1, **limits))
    with TestClient(app) as client:
        deadline = time.monotonic() + 300
        while (ready := client.get("/ready")).status_code != 200:
            assert ready.json()["status"] != "failed" and time.monotonic() < deadline, ready.json()
            time.sleep(0.05)
        yield client


@pytest.fixture(scope="module")
def qa_run_dir(qa_files, no_dropout_model_dir, tmp_path_factory):  # noqa: F811
    """A tiny QA run (a few steps: these tests compare records, they do not need good answers)."""
    from bertfit.train.finetune import fine_tune

    out = tmp_path_factory.mktemp("qa-serve") / "run"
    fine_tune(_config(qa_files, no_dropout_model_dir, out, max_steps=6, threads=1, save_every=6))
    return out


@pytest.fixture(scope="module")
def qa_client(qa_run_dir):
    with served(qa_run_dir, max_texts_per_request=4, max_chars=400) as client:
        yield client


@pytest.fixture(scope="module")
def ner_client(ner_run):  # noqa: F811
    with served(ner_run.run_dir, max_texts_per_request=4, max_chars=60) as client:
        yield client


def _error(r, field: str | None = None, code: str | None = None) -> dict:
    body = r.json()
    assert r.status_code == 422 and set(body) >= {"error", "code"}, (r.status_code, body)
    if field is not None:
        where, _, name = field.rpartition(".")
        assert body.get("field") == field and name in body["error"] and where in body["error"], body
    if code is not None:
        assert body["code"] == code, body
    return body


# ---------------------------------------------------------------------------------------------
# NER: pre-tokenised words over HTTP
# ---------------------------------------------------------------------------------------------

def test_ner_tokens_over_http_give_the_predict_records(ner_client, ner_run):  # noqa: F811
    from bertfit.predict.predictor import Predictor

    model = Predictor.load(ner_run.run_dir, engine="pytorch")
    want = model.records([{"tokens": s} for s in SENTENCES])
    assert {(e["type"], e["start"], e["end"], e["text"]) for e in want[0]["entities"]} == {
        ("PER", 2, 4, "mary jones"), ("LOC", 5, 6, "rome")}  # word indices, end exclusive
    one = ner_client.post("/predict", json={"tokens": SENTENCES[0]}).json()
    assert one["task"] == "ner" and len(one["predictions"]) == 1
    _records_match(one["predictions"], want[:1])
    batch = ner_client.post("/predict", json={"inputs": [{"tokens": s} for s in SENTENCES]}).json()
    _records_match(batch["predictions"], want)
    # Texts still work next to it, with character offsets.
    texts = ner_client.post("/predict", json={"texts": ["we met mary jones in rome"]}).json()["predictions"]
    assert [(e["text"], e["start"]) for e in texts[0]["entities"]] == [("mary jones", 7), ("rome", 21)]


def _records_match(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert [{k: v for k, v in e.items() if k != "score"} for e in g["entities"]] == \
            [{k: v for k, v in e.items() if k != "score"} for e in w["entities"]]
        assert [e["score"] for e in g["entities"]] == pytest.approx([e["score"] for e in w["entities"]], abs=1e-5)


@pytest.mark.parametrize("payload, field, code", [
    ({"tokens": "we met mary"}, "tokens", "invalid_input"),
    ({"tokens": []}, "tokens", "invalid_input"),
    ({"tokens": ["mary", 3]}, "tokens", "invalid_input"),
    ({"tokens": ["mary", "  "]}, "tokens", "invalid_input"),
    ({"tokens": None}, "tokens", "invalid_input"),
    ({"inputs": [{"tokens": ["ok"]}, {"tokens": [["nested"]]}]}, "inputs[1].tokens", "invalid_input"),
    ({"inputs": [{"tokens": ["ok"]}, "mary"]}, "inputs[1]", "wrong_type"),
    ({"inputs": [{"text": "mary"}]}, None, "unknown_field"),
    ({"inputs": [{}]}, "inputs[0].tokens", "missing_field"),
    ({"tokens": ["mary"], "text": "mary"}, None, "unknown_field"),
    ({"texts": ["mary"], "tokens": ["mary"]}, None, "mixed_fields"),
    ({"inputs": [{"tokens": ["ok"]}], "texts": ["mary"]}, None, "mixed_fields"),
    ({"inputs": "mary"}, None, "wrong_type"),
    ({"inputs": []}, None, "empty"),
    ({"inputs": [{"tokens": ["a"]}] * 5}, None, "too_many_texts"),
    ({"tokens": ["word"] * 13}, "tokens", "text_too_long"),  # 13 words + 12 spaces = 64 characters > 60
    ({"tokens": ["ok", "\ud800"]}, "tokens", "invalid_text"),
])
def test_ner_bad_token_requests_get_422_naming_the_field(ner_client, payload, field, code):
    import json

    body = _error(ner_client.post("/predict", content=json.dumps(payload)), field, code)
    if code == "unknown_field":
        assert "text'" in body["error"] and '"tokens"' in body["error"]
    if code == "mixed_fields":
        assert "texts" in body["error"] and "not both" in body["error"]


def test_ner_task_rejects_empty_and_mixed_inputs_in_python():
    from bertfit.errors import InputError
    from bertfit.tasks.ner.task import NER

    for item, reason in (({"tokens": []}, "must not be empty"), ({"tokens": ["a"], "text": "a"}, "not both"),
                         ({"tokens": ["a", 1]}, "tokens[1] is int")):
        with pytest.raises(InputError, match=re.escape(reason)) as caught:
            NER.sentence(item, 4)
        assert caught.value.index == 4 and caught.value.field == "tokens" and str(caught.value).startswith("input 5:")


# ---------------------------------------------------------------------------------------------
# QA: question + context, top-k answers
# ---------------------------------------------------------------------------------------------

def test_qa_over_http_default_is_the_cli_record_and_top_k_lists_the_best(qa_client, qa_run_dir):
    from bertfit.predict.predictor import Predictor

    model = Predictor.load(qa_run_dir, engine="pytorch")
    (want,) = model.records([{"question": "the good", "context": PASSAGE}])
    body = qa_client.post("/predict", json={"question": "the good", "context": PASSAGE}).json()
    assert body["task"] == "qa" and "top_k" not in body["predictions"][0]
    assert body["predictions"][0] == pytest.approx(want)
    assert set(want) == {"answer", "score", "start", "end"}
    (top,) = qa_client.post("/predict", json={"question": "the good", "context": PASSAGE, "top_k": 3}).json()["predictions"]
    assert {k: top[k] for k in want} == pytest.approx(want)  # the same answer, with the alternatives
    assert len(top["top_k"]) == 3 and top["top_k"][0]["answer"] == want["answer"]
    assert top["top_k"][0]["score"] == pytest.approx(want["score"])
    for alt in top["top_k"]:
        assert set(alt) == {"answer", "score", "start", "end", "probability"}
        assert PASSAGE[alt["start"]:alt["end"]] == alt["answer"] and 0 < alt["score"] <= 1
    # One window: the pipeline's scores (p(start)·p(end)) rank the answers as decoding does, and
    # distinct token pairs of one joint distribution sum to at most 1.
    scores = [a["score"] for a in top["top_k"]]
    assert scores == sorted(scores, reverse=True) and sum(scores) <= 1 + 1e-6
    assert len({(a["start"], a["end"]) for a in top["top_k"]}) == 3
    # The same as Python with the same top_k, and each input of a batch keeps its own top_k.
    (python,) = model.records([{"question": "the good", "context": PASSAGE, "top_k": 3}])
    assert _nested_close(top, python)
    mixed = qa_client.post("/predict", json={"inputs": [
        {"question": "the good", "context": PASSAGE, "top_k": 2}, {"question": "the bad", "context": PASSAGE},
        {"question": "the good", "context": PASSAGE, "top_k": 5}]}).json()["predictions"]
    assert [len(p.get("top_k", [])) for p in mixed] == [2, 0, 5]
    # texts + pairs, as before (questions and contexts).
    pairs = qa_client.post("/predict", json={"texts": ["the good"], "pairs": [PASSAGE]}).json()["predictions"]
    assert pairs[0] == pytest.approx(want)


def _nested_close(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_nested_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_nested_close(x, y) for x, y in zip(a, b))
    return a == pytest.approx(b, abs=1e-6)


@pytest.mark.parametrize("payload, field, code", [
    ({"question": "the good", "context": PASSAGE, "top_k": 0}, "top_k", "invalid_input"),
    ({"question": "the good", "context": PASSAGE, "top_k": -2}, "top_k", "invalid_input"),
    ({"question": "the good", "context": PASSAGE, "top_k": 2.5}, "top_k", "invalid_input"),
    ({"question": "the good", "context": PASSAGE, "top_k": "3"}, "top_k", "invalid_input"),
    ({"question": "the good", "context": PASSAGE, "top_k": True}, "top_k", "invalid_input"),
    ({"question": "the good", "context": PASSAGE, "top_k": 21}, "top_k", "invalid_input"),
    ({"inputs": [{"question": "q", "context": "c"}, {"question": "q", "context": "c", "top_k": 99}]},
     "inputs[1].top_k", "invalid_input"),
    ({"question": "the good"}, "context", "missing_field"),
    ({"question": "the good", "context": "   "}, "context", "invalid_input"),
    ({"question": ["the good"], "context": PASSAGE}, "question", "invalid_input"),
    ({"question": "q", "context": "x" * 401}, "context", "text_too_long"),
    ({"texts": ["the good"]}, "texts[0]", "invalid_input"),  # a QA model needs a context
    ({"question": "q", "context": "c", "answers": ["c"]}, None, "unknown_field"),
])
def test_qa_bad_requests_get_422_naming_the_field(qa_client, payload, field, code):
    body = _error(qa_client.post("/predict", json=payload), field, code)
    if field and field.endswith("top_k"):
        assert "from 1 to 20" in body["error"]


def test_qa_top_k_record_lists_the_empty_answer_first_when_unanswerable():
    from bertfit.tasks.qa.decode import QAPrediction, Span, record

    spans = [Span("lovely pizza", 10, 22, 5.0, score=0.4), Span("pizza", 17, 22, 4.0, score=0.2)]
    unanswered = record(QAPrediction("", 0, 0, 0.6, 6.0, 1.0, spans, no_answer=True), top_k=2)
    assert unanswered["no_answer"] and [a["answer"] for a in unanswered["top_k"]] == ["", "lovely pizza"]
    assert [a["score"] for a in unanswered["top_k"]] == [0.6, 0.4]
    answered = record(QAPrediction("lovely pizza", 10, 22, 0.4, 5.0, -1.0, spans), top_k=3)
    assert [(a["answer"], a["start"], a["end"], a["score"]) for a in answered["top_k"]] == [
        ("lovely pizza", 10, 22, 0.4), ("pizza", 17, 22, 0.2)]  # no more than there are candidates
    assert sum(a["probability"] for a in answered["top_k"]) == pytest.approx(1.0)
    assert "top_k" not in record(QAPrediction("lovely pizza", 10, 22, 0.4, 5.0, -1.0, spans), top_k=1)


# ---------------------------------------------------------------------------------------------
# The page: /info's task, the QA view, and the request its script sends
# ---------------------------------------------------------------------------------------------

def test_info_says_the_task_and_its_inputs(qa_client, ner_client):
    qa = qa_client.get("/info").json()
    assert qa["task"] == "qa" and qa["inputs"] == ["question", "context"] and qa["options"] == ["top_k"]
    ner = ner_client.get("/info").json()
    assert ner["task"] == "ner" and ner["inputs"] == ["tokens"]
    # /docs shows the bodies, and each one it shows for this model is answered.
    body = qa_client.get("/openapi.json").json()["paths"]["/predict"]["post"]["requestBody"]
    examples = body["content"]["application/json"]["examples"]
    assert qa_client.post("/predict", json=examples["question"]["value"]).status_code == 200
    assert ner_client.post("/predict", json=examples["tokens"]["value"]).status_code == 200
    assert ner_client.post("/predict", json=examples["inputs"]["value"]).status_code == 200


def test_page_has_a_qa_view_and_its_request_is_what_the_server_takes(qa_client):
    r = qa_client.get("/")
    html = r.text
    for element in ('id="qa-card"', 'id="passage"', 'id="question"', 'id="ask"', 'id="top-k"'):
        assert element in html
    assert 'info.task === "qa"' in html and "innerHTML" not in html
    # The script's request body, verbatim, and the record fields it reads.
    shape = re.search(r"function qaRequest\(question, context, topK\) \{ return (\{[^}]*\}); \}", html)
    assert shape and shape.group(1) == "{ question: question, context: context, top_k: topK }"
    for read in ("body.predictions[0]", "p.start", "p.end", "p.top_k", "a.score", "a.answer"):
        assert read in html
    # That body, as the page sends it (its default of 3 answers), answers with what the page reads.
    body = qa_client.post("/predict", json={"question": "the good", "context": PASSAGE, "top_k": 3}).json()
    p = body["predictions"][0]
    assert PASSAGE[p["start"]:p["end"]] == p["answer"] and len(p["top_k"]) == 3
    # The Content-Security-Policy still covers the (longer) inline script.
    assert "script-src 'sha256-" in r.headers["content-security-policy"]


@pytest.mark.slow
def test_web_page_asks_a_question_and_marks_the_answer(browser, qa_run_dir, tmp_path):  # noqa: F811
    """The real page in headless Chromium against `bertfit serve` (skipped without Playwright/Chromium)."""
    import httpx

    from test_serve import Server

    srv = Server(qa_run_dir, tmp_path / "qa-page.log", "--engine", "pytorch")
    try:
        srv.wait("/ready")
        page, outside, problems = open_page(browser, srv.url + "/")
        page.wait_for_selector("#status[data-state='ready']")
        page.wait_for_selector("#qa-card:not([hidden])")
        assert page.locator("#classify-card").is_hidden()
        # An emoji first (offsets count code points), markup that must stay text.
        passage = "😀 " + PASSAGE + ' <img src=x onerror="window.__xss=1">'
        page.fill("#passage", passage)
        page.fill("#question", "the good")
        page.fill("#top-k", "3")
        page.click("#ask")
        page.wait_for_selector(".qa-result")
        (want,) = httpx.post(srv.url + "/predict", json={"question": "the good", "context": passage, "top_k": 3},
                             timeout=30).json()["predictions"]
        assert page.locator("mark.answer").text_content() == want["answer"] == passage[want["start"]:want["end"]]
        assert page.locator(".qa-result .result-text").text_content() == passage
        items = page.locator("ol.alternatives li").all_text_contents()
        assert len(items) == 3 and all(i.startswith(a["answer"]) for i, a in zip(items, want["top_k"]))
        assert page.evaluate("window.__xss") is None and page.locator(".qa-result img").count() == 0
        page.screenshot(path=str(tmp_path / "serve-page-qa.png"), full_page=True)
        assert not outside and not problems, (outside, problems)
    finally:
        srv.stop()


TOP_K_SCRIPT = """
import json, sys
from transformers import pipeline
run, items = sys.argv[1], json.loads(sys.stdin.read())
qa = pipeline("question-answering", model=run, tokenizer=run, device=-1)
print(json.dumps([qa(question=i["question"], context=i["context"], top_k=3, max_answer_len=30, max_seq_len=32,
                     doc_stride=8) for i in items]))
"""


def test_top_k_answers_are_the_question_answering_pipelines(qa_run_dir):
    """On contexts that fit one window, top_k lists the pipeline's top_k answers: the same spans, in
    the same order, with the same scores (transformers 4.x: see test_qa's helper)."""
    import json
    import os
    import subprocess
    import sys

    from test_qa import _transformers_with_qa_pipeline, synthetic_qa

    path = _transformers_with_qa_pipeline()
    if path is None:
        pytest.skip("transformers 5 has no pipeline('question-answering'); set BERTFIT_TRANSFORMERS4 (see test_qa)")
    from bertfit.predict.predictor import Predictor

    model = Predictor.load(str(qa_run_dir), engine="pytorch")
    items = [{"question": r["question"], "context": r["context"]} for r in synthetic_qa(60, 12)]
    windows = model.task.encode(model.tokenizer, model.task.inputs(items), model.max_length).meta
    items = [item for item, w in zip(items, windows.windows_of()) if len(w) == 1][:20]
    assert len(items) >= 10
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path + [os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", TOP_K_SCRIPT, str(qa_run_dir)], input=json.dumps(items),
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    mine = model.records([{**item, "top_k": 3} for item in items])
    for m, t in zip(mine, theirs):
        assert [(a["answer"], a["start"], a["end"]) for a in m["top_k"]] == [(a["answer"], a["start"], a["end"]) for a in t]
        assert [a["score"] for a in m["top_k"]] == pytest.approx([a["score"] for a in t], rel=1e-4)
