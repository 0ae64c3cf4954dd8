"""Named-entity recognition: one tag per word (IOB2), entities out as character spans of the input.

Reading (tasks/ner_data.py): CoNLL files, JSON lines with tokens + tags, JSON lines with raw text and
character-offset entities (annotation tools); every scheme normalised to IOB2. Encoding
(tasks/ner_encode.py): each word's tag on its first subword, sentences longer than the window split
into overlapping windows, every word's prediction read back from its most central window. Metrics
(tasks/entities.py): entity-level precision/recall/F1 with CoNLL matching (seqeval's default), per
type, and token accuracy; the best checkpoint is chosen by entity micro-F1. Decoding: entities as
``{text, type, start, end, score}``, start/end character offsets into the input text (word indices,
end exclusive, for pre-tokenised input), score the mean of the entity's words' tag probabilities.
"""

from __future__ import annotations

from typing import Any, ClassVar, Hashable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from bertfit.errors import DataError, InputError
from bertfit.heads import token_loss, token_loss_weight
from bertfit.tasks.base import LabelProblem, Task
from bertfit.tasks.ner.entities import OUTSIDE, entity_metrics, spans, split_tag, type_confusion
from bertfit.tasks.ner.data import NER_SETTINGS, Sentence, from_text, from_tokens, read_ner_file
from bertfit.data import token_cache
from bertfit.tasks.ner.encode import IGNORE, encode_cached, encode_windows, stitch


def softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def _words(tokens: Any, row: int, name: str) -> list[str]:
    """Pre-tokenised words, checked as the training files' are: a non-empty list of non-blank strings."""
    if not isinstance(tokens, (list, tuple)):
        raise InputError(row, f"{name} must be a list of strings, not {type(tokens).__name__}", "tokens")
    if not tokens:
        raise InputError(row, f"{name} must not be empty", "tokens")
    for i, word in enumerate(tokens):
        if not isinstance(word, str) or not word.strip():
            what = f"{type(word).__name__}" if not isinstance(word, str) else "blank"
            raise InputError(row, f"{name}[{i}] is {what}; every token must be a non-blank string", "tokens")
    return list(tokens)


def tag_names(types: Sequence[str]) -> list[str]:
    """The head's outputs: O, then B-/I- of each type (sorted), as transformers' NER models name them."""
    return [OUTSIDE] + [f"{prefix}-{t}" for t in sorted(types) for prefix in "BI"]


class NER(Task):
    name = "ner"
    hub_task = "token-classification"
    head = "token"
    problem_type = "token_classification"
    metric_names = ("f1", "macro_f1", "precision", "recall", "token_accuracy", "loss")
    default_metric = "f1"
    headline_metrics: ClassVar[tuple[str, ...]] = ("loss", "f1", "precision", "recall", "token_accuracy")
    metric_labels: ClassVar[dict[str, str]] = {**Task.metric_labels, "f1": "entity F1", "macro_f1": "macro entity F1"}
    mistake_score = "confidence"
    input_columns: ClassVar[tuple[str, ...]] = ("tokens",)  # predict --file: pre-tokenised rows
    takes_pairs: ClassVar[bool] = False  # one sentence per input: entities' offsets are into that text
    settings = NER_SETTINGS  # tag_column, tag_scheme (reading), label_all_subwords (encoding)

    def configure(self, label_all_subwords: bool = False, window_stride: int | None = None, **state: Any) -> None:
        super().configure(**state)
        self.label_all_subwords = bool(label_all_subwords)
        self.window_stride = window_stride
        self.class_weight: Tensor | None = None
        self.tag_prior: np.ndarray | None = None  # the training words' tag shares (prepare_training; init_head)
        self.index = {tag: i for i, tag in enumerate(self.labels)}
        self.types = sorted({split_tag(t)[1] for t in self.labels if t != OUTSIDE})

    @classmethod
    def create(cls, labels: Sequence[str], settings: Mapping[str, Any]) -> "NER":
        return cls(labels, label_all_subwords=bool(settings.get("label_all_subwords", False)),
                   window_stride=settings.get("window_stride"))

    def state(self) -> dict[str, Any]:
        return {"label_all_subwords": self.label_all_subwords, "window_stride": self.window_stride}

    # -- reading ------------------------------------------------------------------------------
    @classmethod
    def read(cls, path: Any, config: Any, options: Mapping[str, Any], known: "Task | None" = None):
        get = config.get if isinstance(config, Mapping) else lambda k, d=None: getattr(config, k, d)
        if get("pair_column"):
            raise DataError(f"--pair-column {get('pair_column')}: a NER model reads one sentence per row, not text "
                            "pairs; leave --pair-column out (or train a sequence task on pairs)")
        sentences, report = read_ner_file(path, {
            "tag_column": get("tag_column", -1), "tag_scheme": get("tag_scheme", "auto"),
            "encoding": get("encoding"), "skip_bad_rows": bool(get("skip_bad_rows", False))})
        if known is not None:
            known.check_labels(sentences, report.path)
        return sentences, report

    @classmethod
    def parse_label(cls, raw: object, options: Mapping[str, Any]) -> Hashable:
        if isinstance(raw, (list, tuple)) and all(isinstance(t, str) for t in raw):
            return tuple(raw)
        raise LabelProblem(f"a NER label is a list of tags, one per word, not {raw!r}")

    @classmethod
    def label_space(cls, labels: Sequence[Hashable], options: Mapping[str, Any]) -> list[str]:
        types = {split_tag(t)[1] for tags in labels for t in (tags or ()) if t != OUTSIDE}
        if not types:
            raise DataError("the training data has no entities (every tag is O); a tagger needs tagged words")
        return tag_names(sorted(types))

    def check_labels(self, examples: Sequence[Any], where: str) -> None:
        unknown: dict[str, list[int]] = {}
        for e in examples:
            for tag in e.tags or ():
                if tag != OUTSIDE and tag not in self.index:
                    unknown.setdefault(split_tag(tag)[1], []).append(e.row)
        if unknown:
            shown = "; ".join(f"{t!r} (line {', '.join(map(str, sorted(set(r))[:3]))})" for t, r in sorted(unknown.items()))
            raise DataError(f"{where}: entity type(s) the training data does not have: {shown}. Known types: "
                            f"{', '.join(self.types)}. Fix the tags, or add examples of them to the training file")

    def label_summary(self, labels: Sequence[Hashable]) -> dict[str, int]:
        """Words per tag (B-X counts the entities of type X) for the data summary."""
        from collections import Counter

        return dict(Counter(tag for tags in labels if tags is not None for tag in tags))

    def strata(self, labels: Sequence[Hashable]) -> list[str | None]:
        # Split files by whether a sentence has an entity (the rare class of sentences).
        return [None if tags is None else str(any(t != OUTSIDE for t in tags)) for tags in labels]

    def targets(self, labels: Sequence[Hashable]) -> np.ndarray:
        out = np.empty(len(labels), dtype=object)
        for i, tags in enumerate(labels):
            out[i] = np.asarray([self.index[t] for t in tags], dtype=np.int64)
        return out

    # -- encoding -----------------------------------------------------------------------------
    def encode(self, tokenizer: Any, examples: Sequence[Sentence], max_length: int,
               settings: Mapping[str, Any] | None = None) -> Any:
        """Sentences → windows of at most ``max_length`` subwords with per-token targets (-100 where
        ignored); ``gold`` is the labelled sentences themselves (evaluate and mistakes read their tags
        and text), ``meta`` the windows that ``gather`` stitches back."""
        from bertfit.batching import EncodedSplit

        sentences = [self.sentence(e, i) for i, e in enumerate(examples)]
        labelled = bool(sentences) and all(s.tags is not None for s in sentences)
        tag_index = self.index if labelled else None
        if token_cache.cache_enabled(len(sentences)):  # a large split: mapped from the tokenized cache on disk
            encoded, targets, windows = encode_cached(tokenizer, sentences, max_length, self.window_stride, tag_index,
                                                      self.label_all_subwords)
            example_index = windows.example_index
        else:
            encoded, targets, windows, _ = encode_windows(tokenizer, sentences, max_length, self.window_stride,
                                                         tag_index, self.label_all_subwords)
            example_index = np.asarray([w.example for w in windows], dtype=np.int64)
        meta = {"windows": windows, "sentences": sentences, "words": [len(s.words) for s in sentences]}
        return EncodedSplit(encoded, targets if labelled else None, gold=sentences if labelled else None,
                            example_index=example_index, meta=meta)

    def collate(self, split: Any, indices: Sequence[int], pad_id: int, epoch: int | None = None) -> Any:
        from bertfit.batching import collate

        batch = collate(split.encoded, indices, None, pad_id)
        if split.targets is not None:
            labels = np.full(tuple(batch.input_ids.shape), IGNORE, dtype=np.int64)  # (B, T)
            for row, i in enumerate(indices):
                target = split.targets[i]
                labels[row, : len(target)] = target
            batch.labels = torch.from_numpy(labels)
        return batch

    def gather(self, split: Any, outputs: Any) -> list[np.ndarray]:
        """Per-window (T_i, L) outputs → per-sentence (words, L), each word from its most central window."""
        return stitch(outputs, split.meta["windows"], split.meta["words"], outside=self.index[OUTSIDE])

    def inputs(self, items: Sequence[Any]) -> list[Sentence]:
        return [self.sentence(item, i) for i, item in enumerate(items)]

    def sample_inputs(self) -> list[Any]:
        return ["Warm-up text in Paris", {"tokens": ["warm", "up"]}]

    # -- training -----------------------------------------------------------------------------
    def prepare_training(self, settings: Mapping[str, Any], train_targets: Any) -> None:
        from bertfit.tasks.classify import class_weight_vector

        flat = np.concatenate([np.asarray(t).reshape(-1) for t in train_targets]) if len(train_targets) else np.zeros(0)
        tags = flat[flat != IGNORE].astype(np.int64)
        spec = settings.get("class_weights")
        self.class_weight = None if spec is None else class_weight_vector(spec, self.labels, tags)
        counts = np.bincount(tags, minlength=len(self.labels)).astype(np.float64)
        if self.class_weight is not None:  # the prior the weighted loss sees
            counts = counts * self.class_weight.numpy().astype(np.float64)
        self.tag_prior = (counts + 1.0) / (counts.sum() + len(self.labels)) if counts.sum() > 0 else None

    def init_head(self, model: Any) -> None:
        """Start the head's bias at the log of the tags' share of the training words (add-one smoothed),
        so a fresh head predicts the prior (WNUT-17: 95% O, loss ~0.3) instead of a uniform 1/13 (loss 2.56).

        Why: AdamW moves a bias by about lr a step, so at fine-tuning rates (1e-4) the bias cannot learn
        the prior (log(0.95/0.004) ≈ 5.5 would take tens of thousands of steps). With a zero bias the
        prior is learned by the encoder instead: the first ~15 steps' gradients (clipped at norm 1, every
        parameter moving ~lr) all say "more O, everywhere", the encoder's features are bent to make
        every word O-like, and at a short budget some seeds never leave that state (issue 31: WNUT-17
        seed 0 at 150 steps tagged every test word O). Starting at the prior, the very first gradients
        are the entity words' (benchmarks/RESULTS.md, issue 31). Multi-label's head starts the same way."""
        if self.tag_prior is None:
            return
        with torch.no_grad():
            model.classifier.bias.copy_(torch.tensor(np.log(self.tag_prior), dtype=model.classifier.bias.dtype))

    def loss_weight(self, targets: Tensor) -> Tensor:
        return token_loss_weight(targets.reshape(-1), self.class_weight)

    def loss(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        weight = self.class_weight
        if weight is not None and weight.device != outputs.device:
            weight = self.class_weight = weight.to(outputs.device)
        return token_loss(outputs, targets, class_weight=weight)

    # -- outputs ------------------------------------------------------------------------------
    def predicted_tags(self, outputs: Sequence[np.ndarray]) -> list[list[str]]:
        return [[self.labels[i] for i in np.asarray(o).argmax(axis=-1)] if len(o) else [] for o in outputs]

    def evaluate(self, outputs: Sequence[np.ndarray], targets: Sequence[Any]) -> dict[str, Any]:
        """Entity metrics (tasks/entities.py) against ``targets``: labelled sentences (a split's gold) or tag lists."""
        gold = [list(t.tags if isinstance(t, Sentence) else t) for t in targets]
        predicted = self.predicted_tags(outputs)
        metrics = entity_metrics(gold, predicted)
        nll, count = 0.0, 0
        for o, tags in zip(outputs, gold):
            if len(tags):
                o = np.asarray(o, dtype=np.float64)
                shifted = o - o.max(axis=1, keepdims=True)
                log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
                nll -= float(log_p[np.arange(len(tags)), [self.index.get(t, 0) for t in tags]].sum())
                count += len(tags)
        metrics["loss"] = nll / count if count else float("nan")
        metrics["n"] = len(gold)
        metrics["confusion"] = type_confusion(gold, predicted, self.types)
        metrics["types"] = list(self.types)
        return metrics

    def warnings(self, outputs: Sequence[np.ndarray]) -> list[str]:
        tags = [t for row in self.predicted_tags(outputs) for t in row]
        if tags and all(t == OUTSIDE for t in tags):
            return ["the model tags every word O (finds no entity); train longer, try a higher --lr, or "
                    "--class-weights balanced"]
        return []

    def entities(self, sentence: Sentence, output: np.ndarray) -> list[dict[str, Any]]:
        """One sentence's entities as records with offsets into its text (word indices if pre-tokenised)."""
        if not len(output):
            return []
        proba = softmax(np.asarray(output, dtype=np.float64))
        best = proba.argmax(axis=-1)
        tags = [self.labels[i] for i in best]
        records = []
        for type_, a, b in spans(tags):
            score = float(proba[np.arange(a, b + 1), best[a:b + 1]].mean())
            if sentence.pretokenized:
                records.append({"text": " ".join(sentence.words[a:b + 1]), "type": type_, "start": a, "end": b + 1,
                                "score": score})
            else:
                start, end = sentence.spans[a][0], sentence.spans[b][1]
                records.append({"text": sentence.text[start:end], "type": type_, "start": start, "end": end,
                                "score": score})
        return records

    def decode(self, outputs: Sequence[np.ndarray], split: Any = None) -> list[dict[str, Any]]:
        """One record per sentence: {"entities": [{text, type, start, end, score}, ...]}."""
        if split is None:  # no text to point into: word indices
            sentences = [from_tokens([f"w{i}" for i in range(len(o))]) for o in outputs]
        else:
            sentences = split.meta["sentences"]
        return [{"entities": self.entities(s, o)} for s, o in zip(sentences, outputs)]

    def explain_plan(self, tokenizer: Any, example: Any, max_length: int) -> Any:
        """The sentence as one row (its first ``max_length`` subwords: a longer sentence's later words are
        neither explained nor explaining), its own words; a target per predicted entity: the mean
        probability of the entity's tags at its words' first subwords (what ``entities`` scores)."""
        from bertfit.tasks.explaining import ExplainPlan, Target, Word, pick
        from bertfit.tokenizer import Encoded

        sentence = self.sentence(example, 0)
        ((ids, word_ids),) = tokenizer.encode_words([sentence.words])
        keep = max(0, max_length - 2)
        row = Encoded([tokenizer.cls_id, *ids[:keep], tokenizer.sep_id], [0] * (min(len(ids), keep) + 2), len(ids) > keep)
        word_of = np.asarray([-1, *word_ids[:keep], -1], dtype=np.int64)
        first: dict[int, int] = {}
        for position, word in enumerate(word_of.tolist()):
            if word >= 0:
                first.setdefault(word, position)
        words = [Word(w, a, b) for w, (a, b) in zip(sentence.words, sentence.spans)]

        def choose(outputs: Tensor, which: Sequence[str] | None) -> list[Target]:
            logits = outputs[0].float()  # (T, L)
            best = {w: int(logits[p].argmax()) for w, p in first.items()}
            tags = [self.labels[best[w]] if w in best else OUTSIDE for w in range(len(words))]
            targets = []
            for type_, a, b in spans(tags):
                positions = torch.tensor([first[w] for w in range(a, b + 1)])
                chosen = torch.tensor([best[w] for w in range(a, b + 1)])
                text = sentence.text[words[a].start:words[b].end]
                targets.append(Target(f"{type_}: {text}", lambda out, p=positions, c=chosen: torch.softmax(
                    out[:, 0, p, :].float(), -1)[:, torch.arange(len(p)), c].mean(-1),
                    {"of": "probability", "type": type_, "start": words[a].start, "end": words[b].end}))
            names = [t.name for t in targets]
            return [targets[i] for i in pick(names, which, "entity")] if which else targets

        return ExplainPlan([row], words, [word_of], choose)

    def answer(self, record: Mapping[str, Any]) -> Any:
        return record["entities"]

    def columns(self, record: Mapping[str, Any]) -> dict[str, Any]:
        # A list: JSON lines keep it as a list, CSV/TSV cells hold its JSON text.
        return {"entities": record["entities"]}

    def display(self, record: Mapping[str, Any]) -> str:
        """One terminal line: each entity as TYPE "text" [start:end] score."""
        shown = [f'{e["type"]} "{e["text"]}" [{e["start"]}:{e["end"]}] {e["score"]:.3f}' for e in record["entities"]]
        return "; ".join(shown) or "(no entities)"

    def output_names(self) -> list[str]:
        return ["entities"]

    def agreement(self, reference: Any, outputs: Any, split: Any = None) -> tuple[str, float]:
        a, b = self.predicted_tags(reference), self.predicted_tags(outputs)
        words = sum(len(x) for x in a)
        same = sum(x == y for ra, rb in zip(a, b) for x, y in zip(ra, rb))
        return "word tags agree", same / words if words else 1.0

    def mistakes(self, outputs: Sequence[np.ndarray], sentences: Sequence[Sentence], limit: int = 20
                 ) -> list[dict[str, Any]]:
        """The most confident false positives and false negatives, each in its sentence (entity marked)."""
        found = []
        for index, (o, s) in enumerate(zip(outputs, sentences)):
            if s.tags is None or not len(o):
                continue
            proba = softmax(np.asarray(o, dtype=np.float64))
            predicted = [self.labels[i] for i in proba.argmax(axis=-1)]
            gold = {(a, b): t for t, a, b in spans(list(s.tags))}
            pred = {(a, b): t for t, a, b in spans(predicted)}
            for (a, b), t in pred.items():
                if gold.get((a, b)) != t:  # false positive: confidence = mean probability of its tags
                    score = float(proba[np.arange(a, b + 1), [self.index[x] for x in predicted[a:b + 1]]].mean())
                    found.append(("false positive", index, a, b, gold.get((a, b), "–"), t, score))
            for (a, b), t in gold.items():
                if pred.get((a, b)) != t:  # false negative: how sure the model was of what it said instead
                    score = float(proba[np.arange(a, b + 1), proba[a:b + 1].argmax(axis=-1)].mean())
                    found.append(("false negative", index, a, b, t, pred.get((a, b), "–"), score))
        found.sort(key=lambda m: -m[-1])
        out = []
        for kind, index, a, b, true, pred, score in found[:limit]:
            s = sentences[index]
            start, end = s.spans[a][0], s.spans[b][1]
            marked = f"{s.text[:start]}[{s.text[start:end]}]{s.text[end:]}"
            out.append({"index": index, "kind": kind, "true": true, "predicted": pred, "score": score,
                        "entity": s.text[start:end], "text": marked, "row": s.row})
        return out

    # -- prediction inputs --------------------------------------------------------------------
    @staticmethod
    def sentence(item: Any, row: int = 0) -> Sentence:
        """A prediction input: a text, {"text": ...}, {"tokens": [...]} (pre-tokenised) or a list of words.
        A bad one raises InputError (row: its 0-based position), whose reason names the field."""
        if isinstance(item, Sentence):
            return item
        if isinstance(item, str):
            return from_text(item, row)
        if isinstance(item, Mapping):
            if "tokens" in item:
                if item.get("text") is not None:
                    raise InputError(row, "give either text or tokens (pre-tokenised words), not both", "tokens")
                return from_tokens(_words(item["tokens"], row, "tokens"), None, row)
            if isinstance(item.get("text"), str):
                return from_text(item["text"], row)
        if isinstance(item, (list, tuple)) and all(isinstance(t, str) for t in item):
            return from_tokens(_words(item, row, "the word list"), None, row)
        raise InputError(row, f"a NER model takes a text, {{'text': ...}} or {{'tokens': [...]}}, not {item!r:.60}")

    # -- report -------------------------------------------------------------------------------
    def format_metrics(self, m: Mapping[str, Any]) -> str:
        names = [*m.get("types", sorted(m.get("per_type", {}))), "micro avg", "macro avg", "weighted avg"]
        width = max(len(n) for n in names) + 1
        lines = [f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}", ""]
        for t in m.get("types", sorted(m.get("per_type", {}))):
            r = m["per_type"].get(t, {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0})
            lines.append(f"{t:>{width}} {r['precision']:9.4f} {r['recall']:9.4f} {r['f1']:9.4f} {r['support']:9d}")
        lines.append("")
        for name, prefix in (("micro avg", ""), ("macro avg", "macro_"), ("weighted avg", "weighted_")):
            lines.append(f"{name:>{width}} {m[prefix + 'precision']:9.4f} {m[prefix + 'recall']:9.4f} "
                         f"{m[prefix + 'f1']:9.4f} {m['entities']:9d}")
        lines.append(f"\nentity-level (CoNLL matching); token accuracy {m['token_accuracy']:.4f} over {m['tokens']} words")
        return "\n".join(lines)

    def headline(self, m: Mapping[str, Any]) -> list[Any]:
        from bertfit.report.document import Strong, fmt_score

        parts: list[Any] = ["entity F1 ", Strong(fmt_score(m.get("f1"))), f" (precision {fmt_score(m.get('precision'))}, "
                            f"recall {fmt_score(m.get('recall'))}; macro-F1 {fmt_score(m.get('macro_f1'))}), "
                            f"token accuracy {fmt_score(m.get('token_accuracy'))}. "]
        scored = [(t, r["f1"]) for t, r in (m.get("per_type") or {}).items() if r.get("support")]
        if len(scored) > 1:
            weakest = min(scored, key=lambda item: item[1])
            parts.append(f"Weakest type: {weakest[0]} (F1 {fmt_score(weakest[1])}). ")
        return parts

    def report_sections(self, m: Mapping[str, Any], split: str, plots: Any, outputs: Any = None,
                        targets: Any = None) -> list[Any]:
        from bertfit.report.document import Paragraph, Strong, Table, fmt_int, fmt_score

        types = list(m.get("types") or sorted(m.get("per_type", {})))
        rows: list[list[Any]] = []
        for t in types:
            r = m["per_type"].get(t, {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "predicted": 0})
            rows.append([t, fmt_score(r["precision"]), fmt_score(r["recall"]), fmt_score(r["f1"]),
                         fmt_int(r["support"]), fmt_int(r.get("predicted", 0))])
        for name, prefix in (("micro avg", ""), ("macro avg", "macro_"), ("weighted avg", "weighted_")):
            rows.append([Strong(name), fmt_score(m[prefix + "precision"]), fmt_score(m[prefix + "recall"]),
                         Strong(fmt_score(m[prefix + "f1"])), fmt_int(m["entities"]), fmt_int(m["predicted_entities"])])
        blocks: list[Any] = [
            Table(["entity type", "precision", "recall", "F1", "gold entities", "predicted"], rows,
                  ["l", "r", "r", "r", "r", "r"]),
            Paragraph([f"Entity-level scores with CoNLL matching (type and both boundaries exact, as seqeval's "
                       f"default); token accuracy {fmt_score(m.get('token_accuracy'))} over {fmt_int(m.get('tokens', 0))} "
                       f"words. Loss: {float(m.get('loss', float('nan'))):.4f}"]),
        ]
        confusion = m.get("confusion")
        if confusion:
            matrix = confusion["matrix"]
            peak = max((v for row in matrix for v in row), default=0) or 1
            blocks.append(Paragraph([Strong("Entity-type confusion"), " (rows: gold type, columns: predicted type for "
                                     "the same span; missed: no entity predicted with that span, spurious: a predicted "
                                     "span that no gold entity has)"]))
            blocks.append(Table(["gold \\ predicted", *confusion["columns"]],
                                [[r, *(fmt_int(v) for v in row)] for r, row in zip(confusion["rows"], matrix)],
                                ["l"] + ["r"] * len(confusion["columns"]),
                                shade=[[None, *(v / peak for v in row)] for row in matrix]))
        return blocks
