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
