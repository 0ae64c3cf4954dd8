"""The task seam: the registry is complete, every task goes read → train → save → load → export with the
same outputs, the new heads match transformers, and bad labels are row-level errors."""

from __future__ import annotations

import inspect
import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from bertfit.config import BertConfig
from bertfit.tasks.table import PROBLEM_TYPES
from bertfit.errors import DataError
from bertfit.heads import HEADS, BertForSequenceClassification
from bertfit.tasks import task_class
from bertfit.train.finetune import fine_tune
from bertfit.predict.predictor import Predictor
from bertfit.tasks import TASKS, detect_problem_type

# The tasks `bertfit train` trains on a labelled file (pretraining has its own command and tests).
FINE_TUNING = {name: cls for name, cls in TASKS.items() if cls.command == "train"}
from bertfit.tasks.base import Task
from bertfit.tasks.multilabel import multilabel_metrics, tune_thresholds
from bertfit.tasks.regression import regression_metrics
from bertfit.train.config import TrainConfig

from conftest import NEGATIVE, POSITIVE, WORDS

EMOTIONS = {"joy": POSITIVE[:2], "love": POSITIVE[2:], "anger": NEGATIVE[:2], "fear": NEGATIVE[2:]}


def _text(rng: random.Random, extra: list[str]) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 10))] + extra
    rng.shuffle(words)
    return " ".join(words)


def _rows(task: str, n: int, seed: int) -> list[dict]:
    """A small learnable data set for each registered task (a task missing here fails the test below)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        if task == "single-label":
            label = rng.choice(["positive", "negative"])
            rows.append({"text": _text(rng, [rng.choice(POSITIVE if label == "positive" else NEGATIVE)]), "label": label})
        elif task == "multi-label":
            labels = rng.sample(sorted(EMOTIONS), rng.randint(1, 2))
            rows.append({"text": _text(rng, [rng.choice(EMOTIONS[e]) for e in labels]), "labels": labels})
        elif task == "regression":
            k = rng.randint(0, 3)
            words = rng.sample(POSITIVE, k) + rng.sample(NEGATIVE, 3 - k)
            rows.append({"text": _text(rng, words[:2]), "text_pair": _text(rng, words[2:]), "score": k * 5 / 3})
        elif task == "ner":  # sentiment words are the entities: POS (positive) and NEG (negative)
            words = _text(rng, [rng.choice(POSITIVE), rng.choice(NEGATIVE)]).split()
            tags = ["B-POS" if w in POSITIVE else "B-NEG" if w in NEGATIVE else "O" for w in words]
            rows.append({"text": " ".join(words), "tokens": words, "tags": tags})
        elif task == "qa":  # the sentiment word of the context answers "the good" / "the bad"
            ask = rng.choice(["good", "bad"])
            answer = rng.choice(POSITIVE if ask == "good" else NEGATIVE)
            context = _text(rng, [answer])
            rows.append({"question": "the " + ask, "context": context, "text": "the " + ask, "text_pair": context,
                         "answers": {"text": [answer], "answer_start": [(" " + context + " ").index(f" {answer} ")]}})
        elif task == "multiple-choice":  # the choice with a positive word answers "the good", among 2 to 4
            count = rng.randint(2, 4)
            choices = [_text(rng, [w])[:40] for w in rng.sample(NEGATIVE, count - 1)]
            k = rng.randrange(count)
            choices.insert(k, _text(rng, [rng.choice(POSITIVE)])[:40])
            choices = [c + f" {'abcd'[i]}" for i, c in enumerate(choices)]  # always distinct
            rows.append({"question": "the good", "choices": choices, "label": k,
                         "input": {"question": "the good", "choices": choices}})
    return rows


def _flat(outputs) -> np.ndarray:
    """Outputs per example as one array: (N, L), a token task's per-word rows (or a question's
    choice scores) stacked, or question answering's gathered answers as (N, 3) start, end and score."""
    if isinstance(outputs, np.ndarray):
        return outputs
    if hasattr(outputs, "predictions"):
        return np.array([[p.start, p.end, p.score] for p in outputs.predictions], dtype=np.float64)
    return np.concatenate([np.asarray(o) for o in outputs])


def _truth(task, rows: list[dict]):
    """What the task's evaluate compares outputs with, from the rows' labels."""
    if "tags" in rows[0]:
        return [tuple(r["tags"]) for r in rows]
    if "answers" in rows[0]:
        return [r["answers"]["text"] for r in rows]
    if "choices" in rows[0]:
        return np.array([r["label"] for r in rows])
    return task.targets([task.parse_label(r.get("label", r.get("labels", r.get("score"))), {}) for r in rows])


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _train(tmp_path: Path, model_dir: Path, task: str, **settings) -> tuple[Path, list[dict]]:
    train = _write_jsonl(tmp_path / f"{task}.jsonl", _rows(task, 120, seed=1))
    test_rows = _rows(task, 24, seed=2)
    if task == "qa":
        settings.setdefault("doc_stride", 8)  # windows of 32 tokens
    config = TrainConfig(train_file=str(train), model=str(model_dir), output_dir=str(tmp_path / "run"), problem_type=task,
                         max_steps=6, batch_size=16, eval_every=3, lr=1e-3, threads=1, max_length=32,
                         pair_column="text_pair" if task == "regression" else None, **settings)
    fine_tune(config)
    return tmp_path / "run", test_rows


def test_registry_is_complete():
    from bertfit.config import BertConfig

    assert set(TASKS) == {"single-label", "multi-label", "regression", "ner", "qa", "multiple-choice", "pretrain"}
    for name, cls in FINE_TUNING.items():
        assert issubclass(cls, Task) and cls.name == name and not inspect.isabstract(cls), name
        assert cls.head in HEADS and cls.problem_type in PROBLEM_TYPES
        names, outputs, targets = _sample(cls)
        assert cls.default_metric in cls.metric_names and set(cls.headline_metrics) <= set(
            cls(names).evaluate(outputs, targets))
        assert _rows(name, 2, 0), f"the contract test has no data for task {name!r}: add it to _rows"
        HEADS[cls.head](BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
                                   problem_type=cls.problem_type).with_labels(names))


def _sample(cls: type[Task]) -> tuple[list[str], object, object]:
    """(output names, outputs of examples, their targets) for a task's evaluate."""
    if cls.name == "qa":  # per question: the decoded spans of its windows; targets are the answer texts
        from bertfit.tasks.qa.task import QAOutputs
        from bertfit.tasks.qa.decode import QAPrediction
        from bertfit.tasks.qa.windows import QAWindows
        from bertfit.tokenizer import Encoded

        windows = QAWindows([Encoded([2, 5, 3], [0, 0, 0], False)], np.array([0]), np.array([1]), [np.array([[0, 1]])],
                            [np.array([0])], [np.array([True])], ["a"], ["q"], np.zeros((1, 2), np.int64), np.array([1]))
        return ["start", "end"], QAOutputs([QAPrediction("a", 0, 1, 1.0, 2.0, -1.0)], 0.5, windows), [["a"]]
    if cls.name == "multiple-choice":  # per question: one score per choice; targets are the right choices
        from bertfit.tasks.multiple_choice import ChoiceScores

        return ["score"], ChoiceScores([np.zeros(2, np.float32), np.zeros(3, np.float32)]), np.array([0, 2])
    if cls.name == "ner":  # per word: one (words, L) array per sentence; targets are the tags
        return ["O", "B-a", "I-a"], [np.zeros((2, 3), np.float32), np.zeros((1, 3), np.float32)], [("B-a", "O"), ("O",)]
    return ["a", "b"], np.zeros((2, 2), np.float32), cls(["a", "b"]).targets(_labels_for(cls))


def _labels_for(cls: type[Task]) -> list:
    return {"single-label": ["a", "b"], "multi-label": [("a",), ("a", "b")], "regression": [(1.0, 2.0), (0.0, 1.0)]}[cls.name]


@pytest.mark.parametrize("task", sorted(FINE_TUNING))
def test_contract_round_trip(task, tmp_path, tiny_model_dir):
    """read → encode → collate → forward → loss → decode → save → load → export: the same outputs."""
    pytest.importorskip("onnxruntime")
    from bertfit.predict.export import export_onnx

    run, rows = _train(tmp_path, tiny_model_dir, task)
    saved = json.loads((run / "task.json").read_text())
    assert saved["task"] == task
    # config.json tells transformers the head (problem_type, or the architecture for a token or span head).
    from bertfit.weights import load_config  # the loader gives a head named by its architecture its problem type

    assert load_config(run).problem_type == TASKS[task].problem_type
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"validation", "test"} and metrics["test"]["n"] > 0

    # A task with inputs of its own that are not a text and a pair (multiple choice) gives them as objects.
    texts = [r["input"] if "input" in r else r["text"] for r in rows]
    pairs = [r["text_pair"] for r in rows] if task in ("regression", "qa") else None
    torch_model = Predictor.load(run, engine="pytorch")
    assert torch_model.task.name == task and torch_model.task.state() == saved["state"]
    outputs = torch_model.predict_logits(texts, pairs)
    assert len(outputs) == len(texts) and np.isfinite(_flat(outputs)).all()
    records = torch_model.predictions(texts, pairs)
    split, _ = torch_model.outputs(texts if pairs is None else list(zip(texts, pairs)))
    assert records == torch_model.task.decode(outputs, split) and len(records) == len(texts)
    json.dumps(records)  # what predict prints and the server returns is JSON

    # A fresh process-like load gives the same task state and outputs.
    again = Predictor.load(run, engine="pytorch")
    np.testing.assert_array_equal(_flat(again.predict_logits(texts, pairs)), _flat(outputs))

    _check_served(run, tmp_path, texts, pairs, records)

    export_onnx(run, tmp_path / "onnx")
    exported = Predictor.load(tmp_path / "onnx")
    assert exported.engine == "onnxruntime" and exported.task.state() == torch_model.task.state()
    np.testing.assert_allclose(_flat(exported.predict_logits(texts, pairs)), _flat(outputs), atol=1e-4)
    assert [r.keys() for r in exported.predictions(texts, pairs)] == [r.keys() for r in records]

    # int8, checked on a labelled file with the task's own metric and agreement
    check = _write_jsonl(tmp_path / "check.jsonl", rows)
    report = export_onnx(run, tmp_path / "int8", int8=True, check_file=str(check))
    metric = report["metric"]
    assert metric == ("accuracy" if task == "single-label" else TASKS[task].default_metric)
    got = Predictor.load(tmp_path / "int8").predict_logits(texts, pairs)
    truth = _truth(torch_model.task, rows)
    assert report[f"{metric}_export"] == pytest.approx(torch_model.task.evaluate(got, truth)[metric])
    assert report[f"{metric}_pytorch_fp32"] == pytest.approx(torch_model.task.evaluate(outputs, truth)[metric], abs=1e-6)


def _check_served(run: Path, tmp_path: Path, texts: list[str], pairs: list[str] | None, records: list[dict]) -> None:
    """`bertfit serve RUN` answers /predict with the task's records (the default engine: same to 1e-4)."""
    pytest.importorskip("fastapi")
    import httpx

    from test_serve import Server

    server = Server(run, tmp_path / "serve.log")
    try:
        server.wait("/ready")
        body = {"inputs": texts} if isinstance(texts[0], dict) else {"texts": texts, **({"pairs": pairs} if pairs else {})}
        answer = httpx.post(server.url + "/predict", json=body, timeout=60).json()
        info = httpx.get(server.url + "/info", timeout=10).json()
    finally:
        server.stop()
    assert answer["task"] == TASKS[json.loads((run / "task.json").read_text())["task"]].name
    served = answer["predictions"]
    assert [sorted(r) for r in served] == [sorted(r) for r in records]
    for got, want in zip(served, records):
        for key, value in want.items():
            if isinstance(value, float):
                assert got[key] == pytest.approx(value, abs=1e-4)
            elif isinstance(value, dict):
                assert got[key] == pytest.approx(value, abs=1e-4)
            elif isinstance(value, list) and value and isinstance(value[0], float):  # per-choice scores: to 1e-4
                assert got[key] == pytest.approx(value, abs=1e-4)
            elif isinstance(value, list) and value and isinstance(value[0], dict):  # entities: scores to 1e-4
                assert [{k: pytest.approx(v, abs=1e-4) if isinstance(v, float) else v for k, v in e.items()}
                        for e in value] == got[key]
            elif key != "labels":  # multi-label: a probability within 1e-4 of its threshold may flip
                assert got[key] == value
    assert info["labels"] == json.loads((run / "task.json").read_text())["labels"]


def _hf_pair(problem_type: str, num_labels: int):
    transformers = pytest.importorskip("transformers")
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        problem_type=problem_type).with_labels([f"l{i}" for i in range(num_labels)])
    torch.manual_seed(0)
    ours = BertForSequenceClassification(config).eval()
    from bertfit.weights import to_transformers_state_dict

    theirs = transformers.BertForSequenceClassification(transformers.BertConfig(**config.to_dict())).eval()
    missing, unexpected = theirs.load_state_dict(to_transformers_state_dict(ours), strict=False)
    assert not unexpected and set(missing) <= {"bert.embeddings.position_ids"}
    assert theirs.config.problem_type == problem_type
    return ours, theirs


@pytest.mark.parametrize("problem_type,num_labels", [("multi_label_classification", 5), ("regression", 1),
                                                      ("regression", 3), ("single_label_classification", 3)])
def test_heads_match_transformers(problem_type, num_labels):
    ours, theirs = _hf_pair(problem_type, num_labels)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 50, (4, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[3, 4:] = 0
    types = torch.zeros_like(ids)
    if problem_type == "multi_label_classification":
        targets = (torch.rand(4, num_labels, generator=gen) > 0.5).float()
    elif problem_type == "regression":
        targets = torch.randn(4, num_labels, generator=gen) * 2 + 1
    else:
        targets = torch.randint(0, num_labels, (4,), generator=gen)
    with torch.no_grad():
        reference = theirs(input_ids=ids, attention_mask=mask, token_type_ids=types,
                           labels=targets.squeeze(-1) if num_labels == 1 else targets)
        for fast in (True, False):
            logits = ours(ids, mask, types, fast=fast)
            torch.testing.assert_close(logits, reference.logits, atol=1e-5, rtol=1e-5)
            task = task_class(problem_type)([f"l{i}" for i in range(num_labels)])  # the loss is the task's
            summed, weight = task.loss(logits, targets)
            torch.testing.assert_close(summed / weight, reference.loss, atol=1e-5, rtol=1e-5)


def test_threshold_tuning_finds_the_known_optimum():
    # Label 0: positives score 0.9/0.8/0.35, negatives 0.4/0.3/0.1 → best F1 keeps the top two (F1 0.8)
    # unless the cut goes to 0.35 (tp 3, fp 1 → F1 6/7 = 0.857): the optimum is between 0.35 and 0.3.
    proba = np.array([[0.9, 0.2], [0.8, 0.7], [0.35, 0.6], [0.4, 0.1], [0.3, 0.05], [0.1, 0.65]])
    targets = np.array([[1, 0], [1, 1], [1, 0], [0, 0], [0, 0], [0, 1]], dtype=np.float32)
    thresholds = tune_thresholds(proba, targets)
    assert thresholds[0] == pytest.approx((0.35 + 0.3) / 2)
    # Label 1: positives 0.7 and 0.65, negative 0.6 between them and 0.2 below: cut at 0.625 (F1 1.0).
    assert thresholds[1] == pytest.approx((0.65 + 0.6) / 2)
    f1 = multilabel_metrics(proba >= thresholds, targets, ["a", "b"])["per_label"]
    assert f1["a"]["f1"] == pytest.approx(6 / 7) and f1["b"]["f1"] == 1.0
    # A label with no positives keeps 0.5.
    assert tune_thresholds(proba, np.zeros_like(targets)).tolist() == [0.5, 0.5]


def test_multilabel_metrics_match_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for case in range(30):
        n, k = rng.integers(1, 40), rng.integers(2, 6)  # one column: sklearn reads it as binary, not multi-label
        true = rng.random((n, k)) < rng.random()
        pred = rng.random((n, k)) < rng.random()
        ours = multilabel_metrics(pred, true.astype(np.float32), [str(i) for i in range(k)])
        for average in ("micro", "macro"):
            assert ours[f"{average}_f1"] == pytest.approx(metrics.f1_score(true, pred, average=average, zero_division=0))
        assert ours["hamming_loss"] == pytest.approx(metrics.hamming_loss(true, pred))
        assert ours["subset_accuracy"] == pytest.approx(metrics.accuracy_score(true, pred))
        p, r, f, s = metrics.precision_recall_fscore_support(true, pred, average=None, zero_division=0)
        assert [ours["per_label"][str(i)]["f1"] for i in range(k)] == pytest.approx(list(f))
        assert [ours["per_label"][str(i)]["support"] for i in range(k)] == list(s)
        # samples-F1: sklearn scores a row with no true and no predicted labels as zero_division.
        assert ours["samples_f1"] == pytest.approx(metrics.f1_score(true, pred, average="samples", zero_division=0)), case


def test_regression_metrics_match_scipy_and_sklearn():
    stats = pytest.importorskip("scipy.stats")
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(20):
        true = np.round(rng.normal(size=rng.integers(3, 50)) * 2, 1)  # rounding makes ties for Spearman
        pred = true + rng.normal(size=len(true))
        ours = regression_metrics(pred, true)
        assert ours["pearson"] == pytest.approx(stats.pearsonr(pred, true)[0])
        assert ours["spearman"] == pytest.approx(stats.spearmanr(pred, true)[0])
        assert ours["rmse"] == pytest.approx(np.sqrt(metrics.mean_squared_error(true, pred)))
        assert ours["mae"] == pytest.approx(metrics.mean_absolute_error(true, pred))
        assert ours["r2"] == pytest.approx(metrics.r2_score(true, pred))


def test_regression_head_starts_at_the_target_mean_and_outputs_real_values(tmp_path, tiny_model_dir):
    run, rows = _train(tmp_path, tiny_model_dir, "regression")
    state = json.loads((run / "task.json").read_text())["state"]
    scores = [r["score"] for r in _rows("regression", 120, seed=1)]
    mean, std = state["target_mean"][0], state["target_std"][0]
    assert 0 < mean < 5 and std > 0.5  # the scores are spread over 0..5 (the split's own, checked exactly below)
    assert mean == pytest.approx(np.mean(scores), abs=0.5)  # a training split of these rows
    out = Predictor.load(run, engine="pytorch").predict([r["text"] for r in rows], [r["text_pair"] for r in rows])
    assert all(isinstance(v, float) for v in out)
    # real scale, not standardised: standardised outputs would centre on 0, mean / std ≥ 1 away from here
    assert abs(np.mean(out) - mean) < 0.5 * std and abs(np.mean(out)) > 0.5 * std, (np.mean(out), mean, std)


def test_regression_fresh_head_predicts_the_training_mean_on_the_training_scale():
    """init_head: bias = the training targets' mean and the weights scaled by their std, so before any
    step the head outputs the mean plus std-scaled (not unit-scaled) deviations; the loss then works on
    standardised targets."""
    task = TASKS["regression"](["a", "b"])
    targets = np.array([[1.0, 10.0], [2.0, 30.0], [3.0, 20.0], [6.0, 40.0]], dtype=np.float32)
    task.prepare_training({}, targets)
    np.testing.assert_array_equal(task.mean, targets.mean(axis=0))
    np.testing.assert_allclose(task.std, targets.std(axis=0), rtol=1e-12)
    config = BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=8, problem_type="regression").with_labels(task.labels)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    before = model.classifier.weight.detach().clone()
    task.init_head(model)
    torch.testing.assert_close(model.classifier.bias, torch.tensor(targets.mean(axis=0)))
    torch.testing.assert_close(model.classifier.weight, before * torch.tensor(targets.std(axis=0))[:, None])
    # the loss standardises: predicting the targets exactly costs 0, predicting the mean costs one unit per element
    exact, weight = task.loss(torch.tensor(targets), torch.tensor(targets))
    at_mean, _ = task.loss(torch.tensor(targets.mean(axis=0)).expand(4, 2), torch.tensor(targets))
    assert float(exact) == 0 and float(weight) == 8 and float(at_mean) / float(weight) == pytest.approx(1.0)


def test_multilabel_head_starts_at_the_label_prior():
    task = TASKS["multi-label"](["a", "b", "c"])
    targets = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0]], dtype=np.float32)
    task.prepare_training({}, targets)
    model = BertForSequenceClassification(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=8,
                                                     problem_type="multi_label_classification").with_labels(task.labels))
    task.init_head(model)
    p = torch.sigmoid(model.classifier.bias)  # the fresh head's prediction before any step
    torch.testing.assert_close(p, torch.tensor([0.75, 0.25, 1e-4]), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("weights", [None, "balanced"])
def test_ner_head_starts_at_the_tag_prior(weights):
    """init_head: the token head's bias is the log of each tag's share of the labelled training words
    (add-one smoothed; ignored subwords -100 not counted), so before any step the head predicts the tag
    prior; with class weights, the prior the weighted loss sees (balanced: uniform, bias all equal)."""
    from bertfit.heads import BertForTokenClassification

    task = TASKS["ner"](["O", "B-LOC", "I-LOC", "B-PER", "I-PER"])
    # 14 labelled words: 10 O, 3 B-LOC, 1 B-PER, no I-LOC / I-PER; -100 marks continuation subwords
    targets = np.empty(2, dtype=object)
    targets[0] = np.array([-100, 0, 0, 1, -100, 0, 0, 0, -100], dtype=np.int64)
    targets[1] = np.array([-100, 0, 1, 1, 0, 3, 0, 0, 0, -100], dtype=np.int64)
    task.prepare_training({"class_weights": weights}, targets)
    model = BertForTokenClassification(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1,
                                                  num_attention_heads=2, intermediate_size=8,
                                                  problem_type="token_classification").with_labels(task.labels))
    torch.testing.assert_close(model.classifier.bias, torch.zeros(5))  # as drawn: transformers' init
    task.init_head(model)
    p = torch.softmax(model.classifier.bias, dim=0)  # the fresh head's prediction before any step
    if weights is None:
        expected = torch.tensor([11.0, 4.0, 1.0, 2.0, 1.0]) / 19  # (count + 1) / (14 + 5)
    else:  # balanced weights n / (k · count), 0 for an absent tag: each present tag weighs 14 / 5 in all
        expected = torch.tensor([14 / 5 + 1, 14 / 5 + 1, 1.0, 14 / 5 + 1, 1.0]) / (3 * 14 / 5 + 5)
    torch.testing.assert_close(p, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("problem_type,transformers_type", [("multi-label", "multi_label_classification"),
                                                            ("regression", "regression")])
def test_run_directory_loads_in_transformers(problem_type, transformers_type, tmp_path, tiny_model_dir):
    transformers = pytest.importorskip("transformers")
    run, rows = _train(tmp_path, tiny_model_dir, problem_type)
    model, info = transformers.AutoModelForSequenceClassification.from_pretrained(run, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.problem_type == transformers_type
    ours = Predictor.load(run, engine="pytorch")
    tok = transformers.AutoTokenizer.from_pretrained(run)
    texts = [r["text"] for r in rows[:6]]
    pairs = [r["text_pair"] for r in rows[:6]] if problem_type == "regression" else None
    enc = tok(texts, pairs, padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = model.eval()(**enc).logits.numpy()
    np.testing.assert_allclose(ours.predict_logits(texts, pairs), theirs, atol=1e-4)


def test_problem_type_detection(caplog):
    assert detect_problem_type([["a", "b"], ["c"]])[0] == "multi-label"
    assert detect_problem_type(["anger,joy", "joy"])[0] == "multi-label"
    assert detect_problem_type(["2,10", "27"])[0] == "multi-label"  # GoEmotions' ids
    assert detect_problem_type(["3.8", "5.000", "0.5"])[0] == "regression"
    assert detect_problem_type([[1.5, 2.0], [0.0, 1.0]])[0] == "regression"
    assert detect_problem_type(["1", "2", "5"])[0] == "single-label"  # ratings are classes by default
    assert detect_problem_type(["negative", "positive"])[0] == "single-label"
    name, why = detect_problem_type([str(i) for i in range(30)])
    assert name == "regression" and "30 distinct" in why


def test_detected_problem_type_is_logged(tmp_path, tiny_model_dir, caplog):
    train = _write_jsonl(tmp_path / "ml.jsonl", _rows("multi-label", 60, seed=3))
    config = TrainConfig(train_file=str(train), model=str(tiny_model_dir), output_dir=str(tmp_path / "run"),
                         max_steps=2, batch_size=16, threads=1, max_length=32)
    with caplog.at_level(logging.INFO, logger="bertfit.train.finetune"):
        result = fine_tune(config)
    assert result.task.name == "multi-label"
    assert any("problem type: multi-label (detected: 60 labels are JSON lists" in r.getMessage() for r in caplog.records)


BAD = [
    ("multi-label", {"text": "x", "labels": ["joy", "surprise"]}, "label 'surprise' in the list was not seen in training"),
    ("multi-label", {"text": "x", "labels": [["joy"]]}, "label list holds"),
    ("multi-label", {"text": "x", "labels": "joy,,anger"}, "empty item"),
    ("regression", {"text": "x", "text_pair": "y", "score": "high"}, "target 'high' is not a number"),
    ("regression", {"text": "x", "text_pair": "y", "score": "nan"}, "not a finite number"),
    ("regression", {"text": "x", "text_pair": "y", "score": "inf"}, "not a finite number"),
    ("regression", {"text": "x", "text_pair": "y", "score": [1.0, 2.0]}, "2 target value(s), but this task has 1"),
    ("single-label", {"text": "x", "label": []}, "empty list"),
    ("single-label", {"text": "x", "label": ["positive", "negative"]}, "expected one label"),
]


@pytest.mark.parametrize("task,row,message", BAD)
def test_bad_labels_are_row_errors_or_counted_skips(task, row, message, tmp_path, tiny_model_dir):
    train = _write_jsonl(tmp_path / "train.jsonl", _rows(task, 60, seed=4))
    valid_rows = _rows(task, 10, seed=5)
    validation = _write_jsonl(tmp_path / "valid.jsonl", valid_rows[:3] + [row] + valid_rows[3:])
    base = dict(train_file=str(train), validation_file=str(validation), model=str(tiny_model_dir), problem_type=task,
                max_steps=1, batch_size=16, threads=1, max_length=32,
                pair_column="text_pair" if task == "regression" else None)
    with pytest.raises(DataError) as excinfo:
        fine_tune(TrainConfig(**base, output_dir=str(tmp_path / "a")))
    assert "valid.jsonl, row 4: " in str(excinfo.value) and message in str(excinfo.value)
    assert not (tmp_path / "a").exists()  # nothing written for a run that failed on its data
    result = fine_tune(TrainConfig(**base, skip_bad_rows=True, output_dir=str(tmp_path / "b")))
    summary = json.loads((result.run_dir / "data.json").read_text())
    assert summary["rows"]["validation"] == 10 and summary["rejected"] == 1
    assert any(message in line for line in summary["rejected_examples"])
