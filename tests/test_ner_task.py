"""NER end to end on a tiny model: a learnable synthetic task, prediction offsets, files, transformers."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from conftest import build_tiny_model_dir, expected_stop, interrupt_at_step

FILLER = "the a this that we they saw met visited near with from and today yesterday said".split()
FIRST = "john mary peter anna paul lisa mark sara".split()
LAST = "smith jones brown miller".split()
CITIES = "paris london berlin rome madrid tokyo".split()
ORGS = "acme globex initech umbrella".split()
WORDS = FILLER + FIRST + LAST + CITIES + ORGS + ["corp", "inc", "."]


def synthetic_sentence(rng: random.Random) -> tuple[list[str], list[str]]:
    """Filler words with 1-3 entities: PER (a first name, maybe a last name), LOC (a city), ORG (a name + corp/inc)."""
    words, tags = [], []
    for _ in range(rng.randint(1, 3)):
        for _ in range(rng.randint(0, 4)):
            words.append(rng.choice(FILLER))
            tags.append("O")
        kind = rng.choice(["PER", "LOC", "ORG"])
        if kind == "PER":
            entity = [rng.choice(FIRST)] + ([rng.choice(LAST)] if rng.random() < 0.5 else [])
        elif kind == "LOC":
            entity = [rng.choice(CITIES)]
        else:
            entity = [rng.choice(ORGS), rng.choice(["corp", "inc"])]
        words += entity
        tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(entity) - 1)
    words.append(".")
    tags.append("O")
    return words, tags


UNKNOWN = "xylophone quasar bramble".split()  # not in the tiny vocabulary: each is one [UNK]


def write_conll(path, n: int, seed: int, unknown: float = 0.0):
    """n synthetic sentences; ``unknown``: the share of O words replaced by out-of-vocabulary words
    (drawn from their own stream, so the sentences are otherwise the same), as real text has them."""
    rng, swap = random.Random(seed), random.Random(seed + 1000)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            words, tags = synthetic_sentence(rng)
            words = [swap.choice(UNKNOWN) if t == "O" and w != "." and swap.random() < unknown else w
                     for w, t in zip(words, tags)]
            f.write("".join(f"{w}\t{t}\n" for w, t in zip(words, tags)) + "\n")
    return path


@pytest.fixture(scope="module")
def ner_model_dir(tmp_path_factory):
    return build_tiny_model_dir(tmp_path_factory.mktemp("ner-bert"), words=WORDS, max_position_embeddings=128)


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory, ner_model_dir):
    """A tiny model trained on the synthetic task (shared by the tests below)."""
    from bertfit.train.finetune import fine_tune
    from bertfit.train.config import TrainConfig

    d = tmp_path_factory.mktemp("ner-data")
    # Some O words unknown to the vocabulary: the tests below tag text with words the tiny vocabulary
    # lacks ("in", emoji: [UNK]), which a model must have seen as O to tag O (issue 31: with the head
    # started at the tag prior, nothing else made a never-seen [UNK] O).
    config = TrainConfig(train_file=str(write_conll(d / "train.conll", 400, 1, unknown=0.1)),
                         validation_file=str(write_conll(d / "dev.conll", 60, 2)),
                         test_file=str(write_conll(d / "test.conll", 100, 3)), problem_type="ner",
                         model=str(ner_model_dir), max_steps=100, batch_size=16, lr=3e-3, warmup_ratio=0.1, threads=1,
                         max_length=32, eval_every=50, save_every=50, seed=0, output_dir=str(d / "run"))
    return fine_tune(config)


def test_tiny_model_learns_synthetic_ner(ner_run):
    test = ner_run.metrics["test"]
    assert test["f1"] >= 0.95, test
    assert set(test["per_type"]) == {"PER", "LOC", "ORG"}
    report = ner_run.report.read_text(encoding="utf-8")
    assert "Entity-type confusion" in report and "entity type" in report


def test_predict_offsets_point_into_the_input(ner_run):
    import bertfit.predict.predictor as predict_mod

    model = predict_mod.Predictor.load(ner_run.run_dir)
    text = "yesterday  John Smith visited Paris and PARIS with acme corp ."
    (record,) = model.predictions([text])
    found = {(e["type"], e["text"]) for e in record["entities"]}
    assert ("PER", "John Smith") in found and ("LOC", "Paris") in found and ("ORG", "acme corp") in found
    for e in record["entities"]:
        assert text[e["start"]:e["end"]] == e["text"] and 0 < e["score"] <= 1
    # Repeated words get their own offsets.
    assert sorted(e["start"] for e in record["entities"] if e["type"] == "LOC") == [text.index("Paris"), text.index("PARIS")]
    # Pre-tokenised input: word indices.
    (tokens,) = model.predictions([{"tokens": ["we", "met", "mary", "jones", "in", "rome"]}])
    assert {(e["type"], e["start"], e["end"], e["text"]) for e in tokens["entities"]} == {
        ("PER", 2, 4, "mary jones"), ("LOC", 5, 6, "rome")}
    assert model.predictions([""])[0]["entities"] == []
    # The Python API's answer per text is its entity list.
    import bertfit

    (answer,) = bertfit.load(ner_run.run_dir, engine="pytorch").predict([text])
    assert [{**e, "score": pytest.approx(e["score"], abs=1e-5)} for e in record["entities"]] == answer


def test_long_sentence_is_windowed_not_truncated(ner_run):
    from bertfit.predict.predictor import Predictor

    model = Predictor.load(ner_run.run_dir)
    assert model.max_length == 32
    text = " ".join(["we met john smith in paris ."] * 12)  # 84 words, ~2.6 windows of 30
    (record,) = model.predictions([text])
    per = [e for e in record["entities"] if e["type"] == "PER"]
    assert len(per) == 12 and per[-1]["start"] > 300  # entities after the first window are found


def test_transformers_loads_the_run_and_the_pipeline_agrees(ner_run):
    transformers = pytest.importorskip("transformers")
    from bertfit.predict.predictor import Predictor

    hf, info = transformers.AutoModelForTokenClassification.from_pretrained(ner_run.run_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(ner_run.run_dir)
    pipe = transformers.pipeline("token-classification", model=hf, tokenizer=tokenizer, aggregation_strategy="first")
    rng = random.Random(9)
    texts = [" ".join(synthetic_sentence(rng)[0]) for _ in range(30)] + ["Anna Brown flew from Tokyo to Berlin ."]
    ours = Predictor.load(ner_run.run_dir).predictions(texts)
    for text, record, theirs in zip(texts, ours, pipe(texts)):
        assert sorted((e["type"], e["start"], e["end"]) for e in record["entities"]) == \
            sorted((e["entity_group"], e["start"], e["end"]) for e in theirs), text
        for a, b in zip(sorted(record["entities"], key=lambda e: e["start"]), sorted(theirs, key=lambda e: e["start"])):
            assert a["score"] == pytest.approx(float(b["score"]), abs=1e-4)


def test_stitched_windows_equal_one_large_window(ner_model_dir):
    """With attention and positions switched off, a token's logits do not depend on its window, so a
    windowed sentence must give exactly the tags (and logits) of one window large enough."""
    import torch

    from bertfit.weights import load_model
    from bertfit.inference import predict_logits
    from bertfit.tasks.ner.task import NER
    from bertfit.tokenizer import WordPieceTokenizer

    task = NER(["O", "B-LOC", "I-LOC", "B-PER", "I-PER"])
    model = load_model(ner_model_dir, task.labels, problem_type="token_classification").eval()
    with torch.no_grad():
        model.bert.embeddings.position.weight.zero_()
        for layer in model.bert.layers:
            layer.attention.output.weight.zero_()
    tok = WordPieceTokenizer.from_dir(ner_model_dir)
    items = [" ".join(random.Random(i).choices(WORDS, k=70)) for i in range(3)]
    sentences = task.inputs(items)
    whole = task.gather(big := task.encode(tok, sentences, 128), predict_logits(model, big.encoded, tok.pad_id, torch.device("cpu"), 4096))
    for max_length, stride in [(16, 5), (20, None), (40, 38)]:
        task.window_stride = stride
        split = task.encode(tok, sentences, max_length)
        assert len(split.encoded) > 3 and all(len(e.ids) <= max_length for e in split.encoded)
        parts = task.gather(split, predict_logits(model, split.encoded, tok.pad_id, torch.device("cpu"), 4096))
        for a, b in zip(parts, whole):
            np.testing.assert_allclose(a, b, atol=1e-5)
        assert task.decode(parts, split) == task.decode(whole, big)


def test_unknown_types_in_validation_are_named(tmp_path, ner_model_dir):
    from bertfit.errors import DataError
    from bertfit.train.finetune import fine_tune
    from bertfit.train.config import TrainConfig

    write_conll(tmp_path / "train.conll", 30, 1)
    (tmp_path / "dev.conll").write_text("paris\tB-LOC\n\nacme\tB-COMPANY\ncorp\tI-COMPANY\n", encoding="utf-8")
    config = TrainConfig(train_file=str(tmp_path / "train.conll"), validation_file=str(tmp_path / "dev.conll"),
                         problem_type="ner", model=str(ner_model_dir), max_steps=2, output_dir=str(tmp_path / "run"))
    with pytest.raises(DataError, match=r"'COMPANY' \(line 3\)"):
        fine_tune(config)


def test_resume_with_class_weights_is_exact(tmp_path, ner_model_dir):
    """An interrupted NER run with class weights resumes to the same weights and history (the weights
    themselves and early stopping are tested exactly below)."""
    import torch
    from safetensors.torch import load_file

    from bertfit.train.finetune import fine_tune
    from bertfit.train.config import TrainConfig

    train = write_conll(tmp_path / "train.conll", 120, 4)
    dev = write_conll(tmp_path / "dev.conll", 30, 5)
    config = TrainConfig(train_file=str(train), validation_file=str(dev), problem_type="ner", model=str(ner_model_dir),
                         max_steps=16, batch_size=8, lr=3e-3, max_length=16, window_stride=6, eval_every=4,
                         save_every=3, log_every=4, class_weights="balanced", patience=50, threads=1,
                         output_dir=str(tmp_path / "a"))
    reference = fine_tune(config)
    assert reference.task.class_weight is not None and reference.task.class_weight[0] < reference.task.class_weight[1]
    evals = [r for r in reference.train.history if r["kind"] == "eval"]
    assert evals and all("f1" in r for r in evals)
    assert json.loads((reference.run_dir / "task.json").read_text())["state"]["window_stride"] == 6
    interrupted = config.replace(output_dir=str(tmp_path / "b"))
    interrupt_at_step(11, lambda: fine_tune(interrupted))
    resumed = fine_tune(interrupted, resume=True)
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("tokens_per_s", "examples_per_s")} for r in h]  # noqa: E731
    assert strip(resumed.train.history) == strip(reference.train.history)
    a, b = (load_file(str(r.run_dir / "model.safetensors")) for r in (reference, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_pipeline_agrees_on_real_subwords(tmp_path, minilm_dir):
    """MiniLM's WordPiece splits words into subwords, lowercases and strips accents: with a random token
    head (many entities of every shape), bertfit and pipeline(aggregation_strategy="first") still
    find the same entities with the same offsets and scores."""
    transformers = pytest.importorskip("transformers")
    import torch

    from bertfit.artifact import write_task
    from bertfit.weights import load_model, save_model
    from bertfit.predict.predictor import Predictor
    from bertfit.tasks.ner.task import NER, tag_names
    from bertfit.tokenizer import WordPieceTokenizer

    task = NER(tag_names(["DIS", "GENE", "LOC"]))
    torch.manual_seed(3)
    model = load_model(minilm_dir, task.labels, problem_type="token_classification")
    with torch.no_grad():
        model.classifier.weight.normal_(0, 0.5)  # confident, varied tags
    save_model(model, tmp_path / "run", tokenizer=WordPieceTokenizer.from_dir(minilm_dir))
    write_task(tmp_path / "run", task, max_length=128, reading={})
    texts = ["Germline mutations in BRCA1 predispose to hereditary breast-ovarian cancer.",
             "Zoë Saldaña visited Café Müller in Zürich, then São Paulo.",
             "The adenomatous polyposis coli (APC) tumour-suppressor protein controls the Wnt pathway."]
    ours = Predictor.load(tmp_path / "run", engine="pytorch").predictions(texts)
    hf = transformers.AutoModelForTokenClassification.from_pretrained(tmp_path / "run")
    pipe = transformers.pipeline("token-classification", model=hf,
                                 tokenizer=transformers.AutoTokenizer.from_pretrained(tmp_path / "run"),
                                 aggregation_strategy="first")
    assert sum(len(r["entities"]) for r in ours) > 6
    for text, record, theirs in zip(texts, ours, pipe(texts)):
        assert [(e["type"], e["start"], e["end"], e["text"]) for e in record["entities"]] == \
            [(e["entity_group"], e["start"], e["end"], text[e["start"]:e["end"]]) for e in theirs]
        assert [e["score"] for e in record["entities"]] == pytest.approx([float(e["score"]) for e in theirs], abs=1e-4)


def test_training_steps_equal_transformers_adamw_on_the_same_batches(tmp_path, monkeypatch):
    """bertfit's NER training (packed fast path, sparse word-embedding gradient, its AdamW groups, clipping,
    warmup + linear decay) takes the same steps as transformers' BertForTokenClassification under torch's
    AdamW fed the same batches and learning rates: per-step losses and final weights within float noise."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file

    from bertfit.weights import save_model
    from bertfit.train.finetune import fine_tune
    from bertfit.tasks.ner.task import NER
    from bertfit.train.loop import Trainer, linear_schedule
    from bertfit.train.config import TrainConfig

    model_dir = build_tiny_model_dir(tmp_path / "bert", words=WORDS, max_position_embeddings=128, dropout=0.0)
    steps, lr = 8, 3e-3
    batches, real_collate, real_train = [], NER.collate, Trainer.train

    def recording_collate(self, split, indices, pad_id, epoch=None):
        batch = real_collate(self, split, indices, pad_id, epoch)
        if epoch is not None:  # training batches only
            batches.append((batch.input_ids.clone(), batch.attention_mask.clone(), batch.labels.clone()))
        return batch

    def snapshot_then_train(self):  # the fresh head bertfit drew, in transformers' layout
        save_model(self.model, tmp_path / "init")
        return real_train(self)

    monkeypatch.setattr(NER, "collate", recording_collate)
    monkeypatch.setattr(Trainer, "train", snapshot_then_train)
    config = TrainConfig(train_file=str(write_conll(tmp_path / "train.conll", 200, 4)), problem_type="ner",
                         model=str(model_dir), max_steps=steps, batch_size=16, lr=lr, warmup_ratio=0.25,
                         weight_decay=0.01, threads=1, max_length=32, seed=0, split=(1.0, 0.0, 0.0),
                         deduplicate=False, calibrate=False, log_every=1, output_dir=str(tmp_path / "run"),
                         bf16=False)  # fp32, as the reference AdamW runs: equality to fp32 rounding
    fine_tune(config)
    ours = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
            if '"kind": "train"' in line]

    torch.manual_seed(0)
    model = transformers.AutoModelForTokenClassification.from_pretrained(tmp_path / "init").train()
    named = list(model.named_parameters())
    no_decay = [p for n, p in named if p.ndim < 2 or "LayerNorm" in n]
    decay = [p for n, p in named if not (p.ndim < 2 or "LayerNorm" in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}])
    schedule = linear_schedule(2, steps)
    theirs = []
    for step, (ids, mask, labels) in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = lr * schedule(step)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        theirs.append(loss.item())
    assert len(batches) == steps and len(ours) == steps
    assert np.allclose(ours, theirs, atol=1e-5), (ours, theirs)
    final = load_file(str(tmp_path / "run" / "model.safetensors"))
    for name, p in named:
        # A key bias adds the same q·b to every score of a query's softmax: its true gradient is 0, and
        # AdamW turns the float noise there into lr-sized steps that differ between any two implementations.
        if name.endswith("attention.self.key.bias"):
            continue
        assert torch.allclose(final[name], p.detach(), atol=1e-5), name


def write_sparse_conll(path, n: int, seed: int, words: int = 20):
    """Sentences of ``words`` filler words, half of them with one one-word entity (a first name: PER, a
    city: LOC): 1 word in 40 is an entity, about WNUT-17's imbalance (95% O) made sharper."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            tokens, tags = [rng.choice(FILLER) for _ in range(words)], ["O"] * words
            if rng.random() < 0.5:
                at, kind = rng.randrange(words), rng.choice(["PER", "LOC"])
                tokens[at], tags[at] = rng.choice(FIRST if kind == "PER" else CITIES), f"B-{kind}"
            f.write("".join(f"{w}\t{t}\n" for w, t in zip(tokens, tags)) + "\n")
    return path


@pytest.mark.parametrize("head", ["default", "zero_bias"])
def test_short_run_on_imbalanced_tags_does_not_collapse_to_all_o(tmp_path, monkeypatch, head):
    """Issue 31: a short run on imbalanced tags must find entities, not tag every word O. The head starts
    at the tag prior (NER.init_head); with the bias at zero instead (transformers' init, bertfit's before
    the fix: the control) the same 30 steps end all-O, because AdamW cannot move a bias far enough at
    these rates and the first steps bend the encoder to say "O" everywhere. Deterministic: no dropout, fp32."""
    from bertfit.tasks.ner.task import NER
    from bertfit.train.config import TrainConfig
    from bertfit.train.finetune import fine_tune

    if head == "zero_bias":
        monkeypatch.setattr(NER, "init_head", lambda self, model: None)  # the fresh head as drawn
    model_dir = build_tiny_model_dir(tmp_path / "bert", words=WORDS, max_position_embeddings=64, dropout=0.0)
    config = TrainConfig(train_file=str(write_sparse_conll(tmp_path / "train.conll", 200, 1)),
                         test_file=str(write_sparse_conll(tmp_path / "test.conll", 60, 2)), problem_type="ner",
                         model=str(model_dir), max_steps=30, batch_size=16, lr=1e-2, warmup_ratio=0.1, threads=1,
                         max_length=40, seed=0, split=(1.0, 0.0, 0.0), deduplicate=False, calibrate=False,
                         save_every=10**6, bf16=False, output_dir=str(tmp_path / "run"))
    test = fine_tune(config).metrics["test"]
    assert test["entities"] == 33  # the test slice's gold entities
    if head == "default":
        assert test["predicted_entities"] > 0 and test["f1"] >= 0.9, test
    else:  # the control: this case does collapse with the old initialisation
        assert test["predicted_entities"] == 0 and test["f1"] == 0.0, test


@pytest.mark.parametrize("patience", [1, 2])
def test_early_stopping_on_entity_f1_stops_at_exactly_the_patience_th_evaluation(tmp_path, ner_model_dir, patience):
    """lr 1e-6 leaves entity F1 where it starts: the run must stop at the patience-th evaluation in a
    row without a strict improvement of entity micro-F1 (NER's default metric), and train no further."""
    from bertfit.train.finetune import fine_tune
    from bertfit.train.config import TrainConfig

    config = TrainConfig(train_file=str(write_conll(tmp_path / "train.conll", 120, 4)),
                         validation_file=str(write_conll(tmp_path / "dev.conll", 30, 5)), problem_type="ner",
                         model=str(ner_model_dir), max_steps=200, batch_size=8, lr=1e-6, max_length=16,
                         eval_every=2, eval_each_epoch=False, save_every=50, log_every=1, patience=patience, threads=1,
                         output_dir=str(tmp_path / "run"))
    result = fine_tune(config)
    evals = [r for r in result.train.history if r["kind"] == "eval"]
    assert evals and all("f1" in r for r in evals)
    stop = expected_stop([r["f1"] for r in evals], patience)
    assert stop is not None and stop == len(evals) - 1, [r["f1"] for r in evals]
    assert [bool(r.get("early_stop")) for r in evals] == [False] * stop + [True]
    assert result.train.state.stopped_early
    assert result.train.state.step == evals[-1]["step"] == 2 * len(evals) < 200
    assert max(r["step"] for r in result.train.history if r["kind"] == "train") == evals[-1]["step"]


@pytest.mark.parametrize("weights", [[1.0, 3.0, 0.5, 2.0, 1.5, 4.0, 0.25], "balanced"], ids=["given", "balanced"])
def test_class_weights_give_the_hand_computed_weighted_token_loss_and_gradient(tmp_path, weights):
    """One optimizer step over every window of a small NER set, with tag weights: the logged loss is
    Σ w_tag · nll / Σ w_tag over the labelled subwords (the first of each word; -100 elsewhere), computed
    here by hand from a copy of the model, and the gradient the optimizer receives is that loss's
    gradient. fp32, no dropout, so both agree to rounding; the unweighted mean is told apart."""
    import copy

    import torch

    from bertfit.tokenizer import WordPieceTokenizer
    from bertfit.train.config import TrainConfig
    from bertfit.train.finetune import encode, prepare_data
    from bertfit.train.loop import Trainer
    from bertfit.train.run_dir import RunDir
    from bertfit.weights import load_model

    model_dir = build_tiny_model_dir(tmp_path / "bert", words=WORDS, max_position_embeddings=128, dropout=0.0)
    config = TrainConfig(train_file=str(write_conll(tmp_path / "train.conll", 40, 8)), problem_type="ner",
                         model=str(model_dir), max_steps=1, batch_size=64, max_length=24, class_weights=weights,
                         max_grad_norm=0.0, log_every=1, bf16=False, threads=1, output_dir=str(tmp_path / "run"))
    prepared = prepare_data(config)
    task = prepared.task
    assert len(task.labels) == 7 and task.labels[0] == "O"
    tokenizer = WordPieceTokenizer.from_dir(model_dir)
    train = encode(tokenizer, prepared.train + prepared.validation + prepared.test, task, config.max_length,
                   config.to_dict())
    assert len(train) <= config.batch_size  # one step sees every window
    torch.manual_seed(0)
    model = load_model(model_dir, task.labels, problem_type=task.problem_type)
    task.prepare_training(config.to_dict(), train.targets)
    task.init_head(model)
    reference = copy.deepcopy(model)
    run = RunDir(config.output_dir)
    run.create()
    trainer = Trainer(model, config, train, None, run, pad_id=tokenizer.pad_id, device=torch.device("cpu"), task=task)
    seen: dict[str, torch.Tensor] = {}
    trainer.optimizer.register_step_pre_hook(lambda opt, a, k: seen.update(
        {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}))
    result = trainer.train()
    assert result.state.step == 1 and not trainer.precision.bf16

    w = task.class_weight
    assert w is not None and w.shape == (len(task.labels),)
    if weights == "balanced":  # n / (k · count) per tag over the labelled subwords, as for the classifier
        flat = np.concatenate([np.asarray(t).reshape(-1) for t in train.targets])
        flat = flat[flat != -100]
        counts = np.bincount(flat, minlength=len(task.labels))
        present = counts > 0
        expected = np.where(present, len(flat) / (len(task.labels) * np.maximum(counts, 1)), 0.0)
        assert np.allclose(w.numpy()[present], expected[present], rtol=1e-6)
    else:
        assert w.tolist() == weights
    batch = task.collate(train, list(range(len(train))), tokenizer.pad_id)
    logits = task.forward(reference.train(), batch).float()
    labels = batch.labels.reshape(-1)
    keep = labels != -100
    nll = -torch.log_softmax(logits.reshape(-1, logits.shape[-1]), dim=-1)[keep, labels[keep]]
    tag_w = w[labels[keep]]
    weighted = (tag_w * nll).sum() / tag_w.sum()
    logged = next(r["loss"] for r in result.history if r["kind"] == "train")
    assert logged == pytest.approx(weighted.item(), abs=1e-6)
    assert abs(nll.mean().item() - weighted.item()) > 1e-4  # the unweighted loss would be told apart
    weighted.backward()
    names = ["classifier.weight", "classifier.bias"]
    names += [n for n, _ in reference.named_parameters() if n.startswith("bert.layers.0.")][:2]
    for name, p in reference.named_parameters():
        if name in names:
            assert name in seen, name
            assert torch.allclose(seen[name], p.grad, rtol=1e-4, atol=1e-7), (name, (seen[name] - p.grad).abs().max())
