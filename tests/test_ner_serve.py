"""A NER run behind the HTTP server and its web page: the same records as predict, entities highlighted."""

from __future__ import annotations

import httpx
import pytest

from test_browser import artifacts, browser, open_page  # noqa: F401  (fixtures)
from test_ner_task import ner_model_dir, ner_run  # noqa: F401  (fixtures)
from test_serve import Server

TEXTS = ["yesterday John Smith visited Paris 😀 with acme corp .", "nothing here", "我 met mary in tokyo"]


def test_server_returns_the_predict_records(ner_run, tmp_path):
    from bertfit.predict.predictor import Predictor

    expected = Predictor.load(ner_run.run_dir).predictions(TEXTS)
    srv = Server(ner_run.run_dir, tmp_path / "serve.log")
    try:
        srv.wait("/ready")
        body = httpx.post(srv.url + "/predict", json={"texts": TEXTS}, timeout=30).json()
        assert body["task"] == "ner"
        for got, want in zip(body["predictions"], expected):
            assert [(e["type"], e["start"], e["end"], e["text"]) for e in got["entities"]] == \
                [(e["type"], e["start"], e["end"], e["text"]) for e in want["entities"]]
            for e in got["entities"]:
                assert e["score"] == pytest.approx(next(w["score"] for w in want["entities"] if w["start"] == e["start"]), abs=1e-4)
    finally:
        srv.stop()


@pytest.mark.slow
def test_web_page_highlights_entities(browser, ner_run, tmp_path, artifacts):  # noqa: F811
    srv = Server(ner_run.run_dir, tmp_path / "browser.log")
    try:
        srv.wait("/ready")
        page, outside, problems = open_page(browser, srv.url + "/")
        page.wait_for_selector("#status[data-state='ready']")
        assert sorted(page.locator(".chip").all_text_contents()) == ["LOC", "ORG", "PER"]
        page.wait_for_selector(".stat")
        assert "Entity F1" in page.text_content("#metrics")
        page.fill("#texts", "\n".join(TEXTS))
        page.click("#classify")
        page.wait_for_selector(".result")
        first = page.locator(".result").first
        # Each mark holds the entity's text (after an emoji: offsets are code points) and its type.
        marks = [m.replace("PER", " PER").replace("LOC", " LOC").replace("ORG", " ORG").split(" ")
                 for m in first.locator("mark.entity").all_text_contents()]
        assert [" ".join(m[:-1]) for m in marks] == ["John Smith", "Paris", "acme corp"]
        assert first.locator(".result-text").text_content().startswith("yesterday John Smith")
        assert page.locator(".result").nth(1).locator("mark.entity").count() == 0
        page.screenshot(path=str(artifacts / "serve-page-ner.png"), full_page=True)
        assert not outside and not problems, (outside, problems)
    finally:
        srv.stop()
