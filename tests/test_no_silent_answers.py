"""No silent wrong answers: a QA file split by passage (no test question shares its passage with
training), a NER model refuses text pairs (CLI, Python, server) instead of reading them as two words."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bertfit.data.labelled import grouped_split
from bertfit.errors import BertfitError, DataError


def qa_rows(passages: int, questions: int) -> list[dict]:
    rows = []
    for p in range(passages):
        context = f"passage {p} says the answer is word{p} and nothing else"
        for q in range(questions):
            rows.append({"id": f"{p}-{q}", "question": f"what does passage {p} say {q}", "context": context,
                         "answers": {"text": [f"word{p}"], "answer_start": [context.index(f"word{p}")]}})
    return rows


def test_one_qa_file_is_split_by_passage(tmp_path, no_dropout_model_dir):
    from bertfit.train.config import TrainConfig
    from bertfit.train.finetune import prepare_data

    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in qa_rows(30, 3)), encoding="utf-8")
    config = TrainConfig(train_file=str(path), problem_type="qa", model=str(no_dropout_model_dir), max_length=32,
                         output_dir=str(tmp_path / "run"))
    data = prepare_data(config)
    contexts = [{e.text_pair for e in split} for split in (data.train, data.validation, data.test)]
    assert all(contexts) and len(data.train) + len(data.validation) + len(data.test) == 90
    assert not contexts[0] & contexts[2] and not contexts[0] & contexts[1] and not contexts[1] & contexts[2]
    assert 60 <= len(data.train) <= 84  # about 0.8 of the questions, in whole passages


def test_grouped_split_keeps_groups_whole_and_fractions_close():
    groups = [i // 4 for i in range(400)]  # 100 groups of 4
    train, validation, test = grouped_split(list(range(400)), (0.8, 0.1, 0.1), seed=3, groups=groups)
    assert sorted(train + validation + test) == list(range(400))
    where = {}
    for name, part in (("train", train), ("validation", validation), ("test", test)):
        for i in part:
            assert where.setdefault(groups[i], name) == name
    assert abs(len(train) - 320) <= 4 and abs(len(validation) - 40) <= 4
    tiny = grouped_split(list(range(6)), (0.8, 0.1, 0.1), seed=0, groups=[0, 0, 1, 1, 2, 3])
    assert all(tiny)  # every split gets a group when there are enough


def test_ner_refuses_pairs_everywhere(tmp_path):
    from bertfit.serve.requests import ApiError, check_inputs
    from bertfit.tasks.ner.task import NER

    task = NER(["O", "B-PER", "I-PER"])
    with pytest.raises(ApiError) as caught:
        check_inputs(task, ["Ann met Bob"], ["in Paris"], single=False)
    assert caught.value.status == 422 and caught.value.field == "pairs"
    with pytest.raises(DataError, match="--pair-column"):
        NER.read(tmp_path / "x.conll", {"pair_column": "other"}, {})
    assert NER.takes_pairs is False


def test_ner_predictor_refuses_pairs(tmp_path):
    from bertfit.predict.predictor import Predictor
    from bertfit.tasks.ner.task import NER

    predictor = Predictor.__new__(Predictor)
    predictor.task = NER(["O", "B-PER", "I-PER"])
    with pytest.raises(BertfitError, match="not text pairs"):
        predictor.predictions(["Ann met Bob"], ["in Paris"])


def test_a_few_odd_label_cells_never_decide_the_problem_type():
    from bertfit.tasks.registry import check_label_cells

    floats = [f"{i / 7:.3f}" for i in range(60)]
    with pytest.raises(DataError, match=r"row 7: 'n/a'.*--problem-type regression"):
        check_label_cells(floats[:5] + ["n/a"] + floats[5:], list(range(2, 63)), column="score")
    names = ["joy", "anger"] * 40
    with pytest.raises(DataError, match=r"a list joined by ','.*row 3: 'joy,anger'"):
        check_label_cells(["joy", "joy,anger"] + names, list(range(2, 84)))
    with pytest.raises(DataError, match="several targets per row"):
        check_label_cells(["3.5,1", "2.5,0", "4,1"], [2, 3, 4])
    check_label_cells(["joy", "joy,anger", "anger", "fear,joy"] * 5, list(range(20)))  # a real multi-label column
    check_label_cells(["2,27", "3", "14"] * 5, list(range(15)))  # GoEmotions' ids
    check_label_cells(floats, list(range(60)))


def test_regression_targets_must_be_plain_numbers_and_multilabel_names_free_of_the_separator():
    from bertfit.tasks.base import LabelProblem
    from bertfit.tasks.multilabel import MultiLabel
    from bertfit.tasks.regression import Regression

    for bad in ("1_000", "inf", "nan", "\u0661\u0662", "0x10", "1e400", "1e20"):
        with pytest.raises(LabelProblem):
            Regression.parse_label(bad, {})
    assert Regression.parse_label(" -2.5e-3 ", {}) == (-0.0025,)
    with pytest.raises(LabelProblem, match="holds the separator"):
        MultiLabel.parse_label(["a,b", "c"], {"label_separator": ","})
    assert MultiLabel.parse_label(["a b", "c"], {"label_separator": ","}) == ("a b", "c")


def test_a_corpus_trailing_blank_line_or_old_mac_endings_do_not_change_how_it_is_read(tmp_path):
    from bertfit.tasks.pretrain.corpus import read_corpus

    lines = [f"tweet number {i} is here. it has two sentences." for i in range(10)]
    plain = tmp_path / "a.txt"
    plain.write_text("\n".join(lines) + "\n")
    trailing = tmp_path / "b.txt"
    trailing.write_text("\n".join(lines) + "\n\n\n")
    mac = tmp_path / "c.txt"
    mac.write_text("\r".join(lines) + "\r")
    read = [read_corpus([p])[0] for p in (plain, trailing, mac)]
    assert [len(docs) for docs in read] == [10, 10, 10]  # one document a line, in all three
    assert [d.sentences for d in read[0]] == [d.sentences for d in read[1]] == [d.sentences for d in read[2]]


@pytest.fixture(scope="module")
def masked_lm(tmp_path_factory, tiny_model_dir):
    import torch

    from bertfit.tokenizer import WordPieceTokenizer
    from bertfit.weights import load_pretraining

    torch.manual_seed(0)
    return load_pretraining(tiny_model_dir, nsp=True).eval(), WordPieceTokenizer.from_dir(tiny_model_dir)


def test_fill_mask_refuses_masks_that_do_not_fit_and_nsp_empty_sentences(masked_lm, caplog):
    from bertfit.tasks.pretrain.use import fill_mask, next_sentence

    model, tokenizer = masked_lm
    limit = model.config.max_position_embeddings
    with pytest.raises(DataError, match=r"has 2 \[MASK\] but only the first 1 fit"):
        fill_mask(model, tokenizer, "[MASK] " + "good " * limit + "[MASK]", top_k=2)
    assert len(fill_mask(model, tokenizer, "[MASK] good [MASK]", top_k=2)) == 2
    for first, second in (("", "good day"), ("good day", "   ")):
        with pytest.raises(DataError, match="is empty"):
            next_sentence(model, tokenizer, first, second)
    with caplog.at_level("WARNING"):
        next_sentence(model, tokenizer, "good " * limit, "bad day")
    assert "tokens are cut from the longer one" in caplog.text
