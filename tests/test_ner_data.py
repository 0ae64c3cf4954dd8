"""NER files: CoNLL and JSON lines in, every bad sentence named by line, schemes repaired and counted."""

from __future__ import annotations

import json

import pytest

from bertfit.errors import DataError
from bertfit.tasks.ner.data import entities_from_tags, from_text, read_ner_file, tags_from_entities


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_conll_tabs_spaces_docstart_and_whitespace_separators(tmp_path):
    path = write(tmp_path, "a.conll", "-DOCSTART- O\n\nEU\tB-ORG\nrejects\tO\n\t\nPeter NNP B-PER\nBlackburn NNP I-PER\n \n\n")
    sentences, report = read_ner_file(path)
    assert [s.words for s in sentences] == [("EU", "rejects"), ("Peter", "Blackburn")]
    assert [s.tags for s in sentences] == [("B-ORG", "O"), ("B-PER", "I-PER")]
    assert [s.row for s in sentences] == [3, 6]
    assert report.rows_read == 2 == report.rows_used and report.scheme == "iob2"
    assert sentences[1].text == "Peter Blackburn" and sentences[1].spans == ((0, 5), (6, 15))


def test_conll_tag_column(tmp_path):
    path = write(tmp_path, "b.conll", "EU B-ORG NNP\nrejects O VBZ\n")
    sentences, _ = read_ner_file(path, {"tag_column": 1})
    assert sentences[0].tags == ("B-ORG", "O")


def test_iob1_and_bioes_are_normalised_and_repairs_counted(tmp_path):
    iob1 = write(tmp_path, "iob1.conll", "A I-PER\nB I-PER\nC B-PER\nD O\nE I-LOC\n")
    sentences, report = read_ner_file(iob1)
    assert report.scheme == "iob1" and report.repaired == 0
    assert sentences[0].tags == ("B-PER", "I-PER", "B-PER", "O", "B-LOC")
    bioes = write(tmp_path, "bioes.conll", "A B-PER\nB E-PER\nC S-LOC\nD O\nE E-ORG\n")
    sentences, report = read_ner_file(bioes)
    assert report.scheme == "bioes" and report.repaired == 1
    assert sentences[0].tags == ("B-PER", "I-PER", "B-LOC", "O", "B-ORG")
    broken = write(tmp_path, "iob2.conll", "A B-PER\nB I-PER\nC O\nD I-LOC\nE B-ORG\nF I-PER\n")
    sentences, report = read_ner_file(broken, {"tag_scheme": "iob2"})
    assert report.repaired == 2 and sentences[0].tags == ("B-PER", "I-PER", "O", "B-LOC", "B-ORG", "B-PER")
    assert "2 invalid tag(s) repaired" in report.summary()


def test_bad_conll_sentences_are_named_by_line(tmp_path):
    path = write(tmp_path, "bad.conll", "A B-PER\nB\n\nC O\nD X-PER\n\nE O\n")
    with pytest.raises(DataError, match=r"line 1: line 2 has a token 'B' but no tag.*1 more.*--skip-bad-rows"):
        read_ner_file(path)
    sentences, report = read_ner_file(path, {"skip_bad_rows": True})
    assert [s.words for s in sentences] == [("E",)]
    assert [(r.row, "X-PER" in r.reason) for r in report.rejected] == [(1, False), (4, True)]
    assert report.rows_read == report.rows_used + len(report.rejected) == 3


def test_jsonl_tokens_and_bad_lines(tmp_path):
    lines = [
        {"tokens": ["Apple", "opened"], "tags": ["B-ORG", "O"]},
        {"tokens": ["a", "b"], "tags": ["O"]},
        {"tokens": [], "tags": []},
        "not json",
        {"tokens": ["x"], "ner_tags": [3]},
        {"tokens": ["Paris"], "ner_tags": ["B-LOC"]},
    ]
    path = write(tmp_path, "t.jsonl", "\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines) + "\n")
    sentences, report = read_ner_file(path, {"skip_bad_rows": True})
    assert [s.words for s in sentences] == [("Apple", "opened"), ("Paris",)] and [s.row for s in sentences] == [1, 6]
    reasons = {r.row: r.reason for r in report.rejected}
    assert "2 tokens but 1 tags" in reasons[2] and "empty sentence" in reasons[3]
    assert "not valid JSON" in reasons[4] and "not label ids" in reasons[5]
    assert report.rows_read == 6


def test_annotation_tool_round_trip(tmp_path):
    rows = [
        {"text": "Zoë met Jean-Luc in São Paulo 😀 yesterday.", "label": [[0, 3, "PER"], [8, 16, "PER"], [20, 29, "LOC"]]},
        {"text": "北京 is big", "entities": [{"start": 0, "end": 2, "label": "LOC"}]},
        {"text": "Label Studio", "spans": [{"value": {"start": 0, "end": 5, "labels": ["ORG"]}}]},
        {"text": "Nothing here", "entities": []},
    ]
    path = write(tmp_path, "doccano.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    sentences, report = read_ner_file(path)
    assert report.rows_used == 4 and report.misaligned == 0
    for row, s in zip(rows, sentences):
        expected = [[e[0], e[1], e[2]] if isinstance(e, list) else
                    [e.get("value", e)["start"], e.get("value", e)["end"],
                     (e.get("value", e).get("label") or e.get("value", e)["labels"][0])]
                    for e in next(row[k] for k in ("label", "entities", "spans") if k in row)]
        assert entities_from_tags(s, s.tags) == expected
    assert sentences[0].tags[:5] == ("B-PER", "O", "B-PER", "I-PER", "I-PER")  # Jean - Luc: three words


def test_overlapping_misaligned_and_out_of_range_entities(tmp_path):
    rows = [
        {"text": "New York City", "entities": [[0, 8, "LOC"], [4, 13, "LOC"]]},
        {"text": "abc", "entities": [[0, 9, "X"]]},
        {"text": "Parisian food", "entities": [[0, 5, "LOC"]]},
        {"text": "a  b", "entities": [[1, 3, "X"]]},
    ]
    path = write(tmp_path, "e.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    sentences, report = read_ner_file(path, {"skip_bad_rows": True})
    reasons = {r.row: r.reason for r in report.rejected}
    assert "overlap" in reasons[1] and "outside the text" in reasons[2] and "covers no word" in reasons[4]
    assert report.misaligned == 1 and sentences[0].tags == ("B-LOC", "O")


def test_tags_from_entities_cut_words():
    s = from_text("Bigcorp Inc.")
    tags, cut = tags_from_entities(s.spans, [(3, 11, "ORG")])
    assert tags == ["B-ORG", "I-ORG", "O"] and cut == 1


def test_empty_file(tmp_path):
    with pytest.raises(DataError, match="empty"):
        read_ner_file(write(tmp_path, "empty.conll", "\n\n"))


def test_real_files_wnut17_and_ncbi_disease():
    """Slices of the real files (tests/data/ner/NOTICE.md): WNUT-17 separates some sentences with a line
    holding only a tab; both are IOB2 with B-/I- tags; every sentence is read."""
    from pathlib import Path

    data = Path(__file__).parent / "data" / "ner"
    wnut, report = read_ner_file(data / "wnut17_train_head.conll")
    assert report.rows_read == report.rows_used == 25 and not report.rejected and report.scheme == "iob2"
    assert {t[2:] for s in wnut for t in s.tags if t != "O"} <= {"person", "location", "group", "creative-work",
                                                                 "corporation", "product"}
    ncbi, report = read_ner_file(data / "ncbi_disease_train_head.tsv")
    assert report.rows_used == 25 and {t for s in ncbi for t in s.tags} == {"O", "B-Disease", "I-Disease"}
    assert sum(len(s.words) for s in ncbi) == sum(1 for line in (data / "ncbi_disease_train_head.tsv").read_text(
        encoding="utf-8").splitlines() if line.strip())
