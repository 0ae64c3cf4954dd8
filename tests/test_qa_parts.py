"""Question answering, the parts below the task: SQuAD metric, reading, windows, decoding, the span head."""

from __future__ import annotations

import collections
import gzip
import json
import re
import string

import numpy as np
import pytest

from bertfit.errors import DataError
from bertfit.tasks.qa.data import read_qa
from bertfit.tasks.qa.decode import decode_all
from bertfit.tasks.qa.windows import encode_windows
from bertfit.tasks.qa.squad_metric import best_threshold, squad_scores


# --- the official SQuAD v1.1 evaluation (evaluate-v1.1.py), re-typed as the oracle ------------------
def _official_normalize(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def _official_f1(prediction, ground_truth):
    prediction_tokens = _official_normalize(prediction).split()
    ground_truth_tokens = _official_normalize(ground_truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def _official_evaluate(dataset, predictions):
    f1 = exact_match = total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                ground_truths = [a["text"] for a in qa["answers"]]
                prediction = predictions[qa["id"]]
                exact_match += max(float(_official_normalize(prediction) == _official_normalize(g)) for g in ground_truths)
                f1 += max(_official_f1(prediction, g) for g in ground_truths)
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}


HAND_MADE = [  # (prediction, references)
    ("Denver Broncos", ["Denver Broncos", "Denver Broncos", "Broncos"]),
    ("the Denver Broncos!", ["Denver Broncos"]),
    ("Broncos of Denver", ["Denver Broncos"]),
    ("Carolina", ["Denver Broncos", "the Broncos"]),
    ("An  apple, a pear", ["apple pear", "a pear"]),
    ("1973", ["October 1973", "1973"]),
    ("October", ["October 1973"]),
    ("Ünïcode café", ["unïcode Café."]),
    ("in 1990s", ["1990s", "the late 1990s"]),
    ("a a a", ["a"]),
    ("x y x", ["x x y z"]),
]


def test_metric_equals_official_v11_evaluation_on_hand_made_cases():
    dataset = [{"paragraphs": [{"qas": [{"id": str(i), "answers": [{"text": t} for t in refs]}
                                        for i, (_, refs) in enumerate(HAND_MADE)]}]}]
    predictions = {str(i): p for i, (p, _) in enumerate(HAND_MADE)}
    official = _official_evaluate(dataset, predictions)
    ours = squad_scores([p for p, _ in HAND_MADE], [r for _, r in HAND_MADE])
    assert ours["exact_match"] == pytest.approx(official["exact_match"], abs=1e-12)
    assert ours["f1"] == pytest.approx(official["f1"], abs=1e-12)
    for (p, refs), (em, f1) in zip(HAND_MADE, ours["per_question"]):  # question by question, too
        assert em == max(float(_official_normalize(p) == _official_normalize(g)) for g in refs)
        assert f1 == pytest.approx(max(_official_f1(p, g) for g in refs))
    assert 0 < ours["exact_match"] < 100 and 0 < ours["f1"] < 100


def test_v2_scores_and_threshold_on_synthetic_null_cases():
    # Two answerable, two unanswerable questions.
    refs = [["Paris"], ["blue sky"], [], []]
    preds = ["Paris", "blue", "something", ""]
    out = squad_scores(preds, refs)
    assert out["HasAns_total"] == 2 and out["NoAns_total"] == 2
    assert out["HasAns_exact"] == 50.0 and out["NoAns_exact"] == 50.0
    assert out["NoAns_f1"] == 50.0
    # Margins (null − best span): high for the unanswerable ones → a threshold between separates them.
    spans = ["Paris", "blue", "something", "other"]
    margins = [-5.0, -2.0, 3.0, 4.0]
    threshold, f1 = best_threshold(spans, margins, refs)
    assert -2.0 <= threshold < 3.0
    assert f1 == pytest.approx(100.0 * (1 + 2 / 3 + 1 + 1) / 4)
    # With the margins reversed the best is answering nothing at all.
    threshold, em = best_threshold(spans, [5.0, 4.0, -3.0, -4.0], refs, by="exact_match")
    assert em == 50.0 and threshold < -4.0


# --- reading -----------------------------------------------------------------------------------
def _squad(qas, context="The cat sat on the mat in Paris."):
    return {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}


def test_reads_squad_json_gzipped_and_jsonl(tmp_path):
    doc = _squad([{"id": "q1", "question": "Where?", "answers": [{"text": "Paris", "answer_start": 26}]},
                  {"id": "q2", "question": "Who sat?", "answers": [{"text": "The cat", "answer_start": 0},
                                                                   {"text": "cat", "answer_start": 4}]}])
    path = tmp_path / "d.json.gz"
    path.write_bytes(gzip.compress(json.dumps(doc).encode()))
    examples, report = read_qa(path)
    assert [e.id for e in examples] == ["q1", "q2"] and report.rows_read == 2 and report.version == "1.1"
    assert examples[1].answers == (("The cat", 0), ("cat", 4))
    lines = tmp_path / "d.jsonl"
    lines.write_text("\n".join(json.dumps(r) for r in [
        {"id": "a", "question": "Where?", "context": "in Paris", "answers": {"text": ["Paris"], "answer_start": [3]}},
        {"id": "b", "question": "Why?", "context": "no idea", "answers": {"text": [], "answer_start": []},
         "is_impossible": True}]) + "\n", encoding="utf-8")
    examples, report = read_qa(lines)
    assert examples[0].answers == (("Paris", 3),) and examples[1].impossible and report.version == "2.0"


@pytest.mark.parametrize("qa, context, message", [
    ({"id": "x", "question": "Where?", "answers": [{"text": "London", "answer_start": 26}]}, None, "does not occur"),
    ({"id": "x", "question": "Where?", "answers": [{"text": "Paris", "answer_start": 12}]}, None, "occurs at offset 26"),
    ({"id": "x", "question": "Where?", "answers": [{"text": "Paris", "answer_start": 400}]}, None, "outside"),
    ({"id": "x", "question": "Where?", "answers": [{"text": "Paris", "answer_start": -1}]}, None, "outside"),
    ({"id": "x", "answers": [{"text": "Paris", "answer_start": 26}]}, None, "question"),
    ({"id": "x", "question": "Where?", "answers": [{"text": "Paris"}]}, None, "answer_start"),
    ({"id": "x", "question": "Where?", "answers": [{"text": "P", "answer_start": 0}]}, "   ", "empty \"context\""),
    ({"id": "x", "question": "Where?", "answers": []}, None, "no answers"),
])
def test_bad_inputs_are_row_errors_or_counted_skips(tmp_path, qa, context, message):
    good = {"id": "ok", "question": "Who?", "answers": [{"text": "cat", "answer_start": 4}]}
    doc = _squad([good])
    doc["data"][0]["paragraphs"].append({"context": context if context is not None else "The cat sat on the mat in Paris.",
                                         "qas": [qa]})
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(DataError, match=re.escape("question 2")) as info:
        read_qa(path)
    assert message in str(info.value) and "--skip-bad-rows" in str(info.value)
    examples, report = read_qa(path, skip_bad_rows=True)
    assert [e.id for e in examples] == ["ok"]
    assert report.rows_read == 2 and report.rows_used == 1 and [r.row for r in report.rejected] == [2]


@pytest.mark.parametrize("shift", [" ", "  ", "\t", "\n", " \n\t"], ids=["space", "two-spaces", "tab", "newline", "mixed"])
@pytest.mark.parametrize("direction", ["added", "stripped"])
def test_answer_offsets_off_by_whitespace_are_repaired_and_counted(tmp_path, shift, direction):
    """An export that added (or stripped) whitespace before the answer moves every later offset by its
    length: the text is then a few characters from its answer_start. It is moved there, the question
    kept, and the repair counted with its id; an answer whose text is far from its offset stays an error."""
    from bertfit.tasks.qa.data import OFFSET_REPAIR_CHARS

    context = f"The cat sat{shift}on the mat in Paris."
    true_start = context.index("Paris")
    start = true_start - len(shift) if direction == "added" else true_start + len(shift)
    rows = [{"id": "ok", "question": "Who?", "context": context, "answers": {"text": ["cat"], "answer_start": [4]}},
            {"id": "moved", "question": "Where?", "context": context,
             "answers": {"text": ["Paris"], "answer_start": [start]}}]
    path = tmp_path / "shifted.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    examples, report = read_qa(path)
    assert [e.id for e in examples] == ["ok", "moved"] and report.rows_used == 2 and not report.rejected
    assert examples[1].answers == (("Paris", true_start),)
    assert report.repaired == [(2, "moved", start, true_start)]
    assert "1 answer offset repaired" in report.summary() and "moved" in report.summary()
    assert any("moved (" in note for note in report.notes)
    # Farther than the reach: an error naming where the text really is, never a silent move.
    far = dict(rows[1], answers={"text": ["Paris"], "answer_start": [true_start - OFFSET_REPAIR_CHARS - 1]})
    path.write_text(json.dumps(far) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"occurs at offset {true_start}"):
        read_qa(path)


def test_a_repair_takes_the_nearest_occurrence_and_never_another_text(tmp_path):
    from bertfit.tasks.qa.data import nearby_offset

    context = "red, red and red again"
    assert nearby_offset(context, "red", 6) == 5 and nearby_offset(context, "red", 11) == 13
    assert nearby_offset(context, "red", 2) == 0 and nearby_offset(context, "blue", 5) is None
    assert nearby_offset(context, "again", 0) is None  # 17 characters away: too far


def test_jsonl_errors_name_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"question": "q", "context": "abc", "answers": {"text": ["b"], "answer_start": [1]}}\n'
                    '{"question": "q", "context": "", "answers": {"text": ["b"], "answer_start": [1]}}\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2"):
        read_qa(path)


# --- windows and stitching -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from bertfit.tokenizer import WordPieceTokenizer

    return WordPieceTokenizer.from_dir(tiny_model_dir)


def _context(n_words: int, seed: int = 0) -> str:
    from conftest import WORDS

    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(WORDS, n_words).tolist())


def _logits_pointing_at(windows, f, s_tok, e_tok, strength=10.0):
    """Fake model outputs for window f: start/end logits peaked at tokens s_tok/e_tok."""
    T = len(windows.encoded[f])
    logits = np.zeros((T, 2), dtype=np.float32)
    logits[s_tok, 0] = logits[e_tok, 1] = strength
    return logits


def _answer_tokens(windows, f, start_char, end_char):
    off = windows.offsets[f]
    c0 = int(windows.context_start[f])
    s = [i for i in range(len(off)) if off[i, 0] == start_char]
    e = [i for i in range(len(off)) if off[i, 1] == end_char]
    return (c0 + s[0], c0 + e[0]) if s and e else None


@pytest.mark.parametrize("position", ["first", "edge", "last"])
def test_answer_near_window_edge_is_labelled_and_found(tokenizer, position):
    context = _context(150)
    words = context.split()
    index = {"first": 0, "edge": 40, "last": len(words) - 1}[position]
    start = len(" ".join(words[:index])) + (1 if index else 0)
    answer = (words[index], start)
    for max_length, stride in ((48, 16), (64, 8), (128, 32)):
        w = encode_windows(tokenizer, ["what is it"], [context], [answer], max_length, stride)
        labelled = [f for f in range(len(w)) if w.targets[f, 0] > 0]
        assert labelled, (max_length, stride)
        for f in labelled:  # the label points at exactly the answer's characters
            s, e = w.targets[f]
            c0 = w.context_start[f]
            assert context[w.offsets[f][s - c0, 0]:w.offsets[f][e - c0, 1]] == answer[0]
        # Logits that peak at the answer in every window that holds it: the stitched answer is it.
        logits = []
        for f in range(len(w)):
            toks = _answer_tokens(w, f, start, start + len(answer[0]))
            logits.append(_logits_pointing_at(w, f, *toks) if toks else np.zeros((len(w.encoded[f]), 2), np.float32))
        pred = decode_all(logits, w)[0]
        assert (pred.text, pred.start, pred.end) == (answer[0], start, start + len(answer[0]))


def test_each_token_scored_from_its_max_context_window(tokenizer):
    context = _context(120, seed=3)
    w = encode_windows(tokenizer, ["q"], [context], [None], 40, 16)
    assert len(w) > 3
    # Every context token is owned by exactly one window, and each owner is the window where
    # the token is furthest from both window edges.
    owned = collections.Counter()
    for f in range(len(w)):
        for k in w.offsets[f][w.max_context[f], 0].tolist():
            owned[k] += 1
    assert set(owned.values()) == {1} and len(owned) == w.context_tokens[0]
    # A wrong, confident span near the edge of one window loses to the same token's better window.
    f = 1
    n = len(w.offsets[f])
    edge = int(w.context_start[f]) + n - 1  # last context token of window 1: little right context
    assert not w.max_context[f][n - 1]
    logits = [np.zeros((len(e), 2), np.float32) for e in w.encoded]
    logits[f][edge] = 20.0
    # A weaker span (15 at start and end: 30 < the edge token's 40) at a token in its own max-context
    # window must win (the edge token's end logit may still end another span: 0 + 20 < 30).
    g = 2
    k = int(np.flatnonzero(w.max_context[g])[len(np.flatnonzero(w.max_context[g])) // 2])
    logits[g][int(w.context_start[g]) + k] = 15.0
    s, e = (int(x) for x in w.offsets[g][k])
    pred = decode_all(logits, w)[0]
    assert (pred.text, pred.start, pred.end) == (context[s:e], s, e), (pred, context[s:e])


def test_same_answer_from_long_and_short_windows(tokenizer):
    context = _context(200, seed=5)
    words = context.split()
    start = len(" ".join(words[:77])) + 1
    answer = (" ".join(words[77:79]), start)
    found = set()
    for max_length, stride in ((64, 16), (64, 32), (512, 128)):
        w = encode_windows(tokenizer, ["which words"], [context], [answer], max_length, stride)
        logits = []
        for f in range(len(w)):
            toks = _answer_tokens(w, f, start, start + len(answer[0]))
            logits.append(_logits_pointing_at(w, f, *toks) if toks else np.random.default_rng(f).normal(
                size=(len(w.encoded[f]), 2)).astype(np.float32))
        pred = decode_all(logits, w)[0]
        found.add((pred.text, pred.start, pred.end))
    assert found == {(answer[0], start, start + len(answer[0]))}


def test_offsets_back_to_text_unicode_and_whitespace_runs(minilm_dir):
    from bertfit.tokenizer import WordPieceTokenizer

    tok = WordPieceTokenizer.from_dir(minilm_dir)
    context = "Der  Zürcher\u00a0See\t\tliegt   in der Schweiz. 東京 ist  groß — naïve 😀 café."
    for answer in ("Zürcher\u00a0See", "東京", "naïve", "café", "groß"):
        start = context.index(answer)
        w = encode_windows(tok, ["wo?"], [context], [(answer, start)], 384, 128)
        s, e = w.targets[0]
        c0 = w.context_start[0]
        assert context[w.offsets[0][s - c0, 0]:w.offsets[0][e - c0, 1]] == answer
        logits = [_logits_pointing_at(w, 0, s, e)]
        pred = decode_all(logits, w)[0]
        assert pred.text == answer and context[pred.start:pred.end] == answer


def test_v2_null_answer_on_synthetic_logits(tokenizer):
    context = _context(30, seed=7)
    w = encode_windows(tokenizer, ["q", "q"], [context, context], [None, None], 64, 16)
    confident_null = np.zeros((len(w.encoded[0]), 2), np.float32)
    confident_null[0] = 8.0  # [CLS] start and end
    c0 = int(w.context_start[0])
    confident_null[c0 + 2] = [3.0, 3.0]
    confident_span = confident_null.copy()
    confident_span[0] = -8.0
    logits = [confident_null, confident_span]
    v1 = decode_all(logits, w)  # v1.1: a span is always given
    assert all(p.text and not p.no_answer for p in v1)
    v2 = decode_all(logits, w, null_threshold=0.0)
    assert v2[0].no_answer and v2[0].text == "" and v2[0].null_margin == pytest.approx(16.0 - 6.0)
    assert not v2[1].no_answer and v2[1].text
    assert decode_all(logits, w, null_threshold=11.0)[0].text  # a threshold above the margin answers


def test_long_questions_are_cut_to_fit(tokenizer):
    context = _context(100)
    question = _context(90, seed=9)
    w = encode_windows(tokenizer, [question], [context], [None], 64, 16)
    assert w.questions_cut == 1 and all(len(e) <= 64 for e in w.encoded)
    assert w.context_tokens[0] == 100


# --- the head ------------------------------------------------------------------------------------
def test_span_head_parity_with_transformers():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from bertfit.weights import load_into, to_transformers_state_dict
    from bertfit.config import BertConfig
    from bertfit.heads import BertForQuestionAnswering

    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=64).with_labels(["start", "end"])
    torch.manual_seed(0)
    theirs = transformers.BertForQuestionAnswering(transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=64)).eval()
    ours = BertForQuestionAnswering(config).eval()
    load_into(ours, theirs.state_dict(), "hf", require_head=True)
    assert set(to_transformers_state_dict(ours)) == set(theirs.state_dict()) - {"bert.embeddings.position_ids"}
    ids = torch.randint(5, 99, (3, 17))
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0
    mask[2, 5:] = 0
    types = (torch.arange(17) > 6).long().expand(3, 17)
    with torch.no_grad():
        out = theirs(input_ids=ids, attention_mask=mask, token_type_ids=types)
        for fast in (True, False):
            mine = ours(ids, mask, types, fast=fast)
            real = mask.bool()
            assert torch.allclose(mine[..., 0][real], out.start_logits[real], atol=1e-5)
            assert torch.allclose(mine[..., 1][real], out.end_logits[real], atol=1e-5)
            assert (mine[~real] == -10000.0).all()
    # The loss: transformers' mean of the start and end cross-entropies.
    from bertfit.heads import span_loss

    positions = torch.tensor([[3, 4], [0, 0], [1, 2]])
    with torch.no_grad():
        ref = theirs(input_ids=ids, attention_mask=mask, token_type_ids=types, start_positions=positions[:, 0],
                     end_positions=positions[:, 1]).loss
        # transformers does not mask padding in its loss; compare on rows without padding
        full = torch.ones_like(mask)
        ref = theirs(input_ids=ids, attention_mask=full, token_type_ids=types, start_positions=positions[:, 0],
                     end_positions=positions[:, 1]).loss
        summed, weight = span_loss(ours(ids, full, types), positions)
    assert float(summed / weight) == pytest.approx(float(ref), abs=1e-5)


def test_real_squad_slice_every_answer_labelled_in_its_windows(minilm_dir):
    """XQuAD-en (SQuAD v1.1 dev material, CC BY-SA 4.0, tests/data/xquad_en_slice.NOTICE.txt): every
    reference answer is read, and each window that holds the first one is labelled exactly on it."""
    from pathlib import Path

    from bertfit.tokenizer import WordPieceTokenizer

    examples, report = read_qa(Path(__file__).parent / "data" / "xquad_en_slice.json")
    assert report.rows_read == report.rows_used == len(examples) == 47 and report.version == "1.1"
    tok = WordPieceTokenizer.from_dir(minilm_dir)
    for max_length, stride in ((384, 128), (64, 16)):
        w = encode_windows(tok, [e.question for e in examples], [e.context for e in examples],
                           [e.answers[0] for e in examples], max_length, stride)
        for i, feats in enumerate(w.windows_of()):
            text, start = examples[i].answers[0]
            labelled = [f for f in feats if w.targets[f, 0] > 0]
            inside = [f for f in feats if w.offsets[f][0, 0] <= start and w.offsets[f][-1, 1] >= start + len(text)]
            assert labelled == inside and labelled, (max_length, i)
            for f in labelled:
                s, e = w.targets[f] - w.context_start[f]
                span = examples[i].context[w.offsets[f][s, 0]:w.offsets[f][e, 1]]
                assert span.strip(" .,;") == text.strip(" .,;") or text in span, (span, text)


def test_v2_threshold_tuned_on_validation_and_saved(tokenizer):
    """The task tunes the no-answer threshold on validation outputs (v2.0), keeps it in its state, and
    evaluation then reports HasAns / NoAns."""
    from bertfit.tasks import build_task
    from bertfit.tasks.qa.task import QuestionAnswering
    from bertfit.tasks.qa.data import QAExample

    context = _context(30, seed=4)
    word = context.split()[5]
    start = context.index(" " + word + " ") + 1
    examples = [QAExample("q", context, ((word, start),)), QAExample("q", context, ()),
                QAExample("q", context, ((word, start),)), QAExample("q", context, ())]
    task = QuestionAnswering.create(["start", "end"], {"doc_stride": 16})
    split = task.encode(tokenizer, examples, 64, {"doc_stride": 16})
    assert task.version == "2.0" and task.null_threshold == 0.0 and split.gold[1] == []
    logits = []
    for f in range(len(split.encoded)):
        x = np.zeros((len(split.encoded[f]), 2), np.float32)
        s, e = _answer_tokens(split.meta, f, start, start + len(word))
        x[s, 0] = x[e, 1] = 5.0
        answerable = split.example_index[f] % 2 == 0
        x[0] = 7.0 if answerable else 9.0  # null − span margins: +4 (answerable) and +8 (unanswerable), both above 0
        logits.append(x)
    outputs = task.gather(split, logits)
    assert [p.text for p in outputs.predictions] == ["", "", "", ""]  # threshold 0: everything "no answer"
    chosen = task.fit_decisions(outputs, split.gold)
    assert 4.0 <= chosen["null_threshold"] < 8.0 and chosen["validation_f1_at_threshold"] == 100.0
    rebuilt = build_task("qa", ["start", "end"], task.state())
    m = rebuilt.evaluate(rebuilt.gather(split, logits), split.gold)
    assert m["exact_match"] == 100.0 and m["HasAns_total"] == 2 and m["NoAns_exact"] == 100.0
