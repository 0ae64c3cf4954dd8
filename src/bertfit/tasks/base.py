"""The task contract: everything that differs between uses of the one encoder lives behind it.

The trainer, predictor, exporter, report and server never ask which task they run; they call these
methods. A task instance carries what it learned from the training data (its label names, class or
positive weights, target scaling, decision thresholds); ``state()`` is saved in the run directory
(task.json, see artifact.py) and ``from_state`` rebuilds the same task for prediction.

The data path, each step the task's (defaults: one feature per example, today's sequence tasks):

    read(file) → examples → encode() → EncodedSplit of features (windows, alignment, offsets)
    → collate() → batches for loss() → the model's outputs per feature → gather() → outputs per
    example → evaluate() / mistakes() / decode() (records with text offsets) ; inputs() turns what
    predict and the server receive into examples.

Shapes: ``outputs`` (after ``gather``) are one row per example for sequence tasks (a float array);
``targets`` are what ``targets()`` built from parsed labels ((N,) int64 class ids, or (N, L) float32).
A head with an output per token gives ``gather`` a list of (T_i, L) arrays, one per feature.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Hashable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from bertfit.tasks.settings import Setting
from bertfit.tasks.windows import LongText

if TYPE_CHECKING:
    from bertfit.batching import Batch, EncodedSplit
    from bertfit.tokenizer import WordPieceTokenizer


class LabelProblem(ValueError):
    """A label cell this task cannot use; the message is the row-level reason shown to the user."""


class Task(ABC):
    name: ClassVar[str]  # registry key (--problem-type / --task value)
    head: ClassVar[str]  # key into heads.HEADS
    problem_type: ClassVar[str]  # the head's config.json problem_type (transformers' name)
    metric_names: ClassVar[tuple[str, ...]]  # what --metric may select the best checkpoint on
    default_metric: ClassVar[str]
    lower_is_better: ClassVar[frozenset[str]] = frozenset({"loss"})
    # Metrics shown in a progress line / eval record (a short subset of evaluate()'s keys).
    headline_metrics: ClassVar[tuple[str, ...]]
    # How plots and tables name a metric key (a task overrides the names its metrics mean differently:
    # NER's f1 is entity F1, SQuAD's is token-overlap F1); keys not listed are shown as they are.
    metric_labels: ClassVar[dict[str, str]] = {
        "macro_f1": "macro-F1", "micro_f1": "micro-F1", "weighted_f1": "weighted F1", "samples_f1": "samples F1",
        "f1": "F1", "exact_match": "exact match", "subset_accuracy": "subset accuracy", "hamming_loss": "Hamming loss",
        "token_accuracy": "token accuracy", "mlm_accuracy": "masked-token accuracy", "nsp_accuracy": "NSP accuracy"}
    # Whether `bertfit train` without --train-file may use the bundled tweets corpus for this task.
    default_corpus: ClassVar[bool] = False
    # How texts longer than max_length are read (windows.py): set from the training settings by
    # ``encode`` and saved in task.json by artifact.py; sequence tasks use it, others may ignore it.
    long_text: LongText = LongText()
    # The command that trains this task: "train" (a labelled file) or "pretrain" (unlabelled corpora).
    command: ClassVar[str] = "train"
    # How the report names the run and its rows ("fine-tuned on 800 training examples"), and whether it
    # has a most-confident-mistakes section (pretraining predicts masked tokens, it has no mistakes to list).
    trained_as: ClassVar[str] = "fine-tuned"
    # The Hugging Face hub's task id of its models (the model card's pipeline_tag and model-index type).
    hub_task: ClassVar[str] = "text-classification"
    row_noun: ClassVar[str] = "examples"
    reports_mistakes: ClassVar[bool] = True
    # The most-confident-mistakes table's titles for the gold value, the prediction, the text and the pair.
    mistake_columns: ClassVar[tuple[str, str, str, str]] = ("true", "predicted", "text", "text pair")
    # The fields of one prediction input besides a plain text (NER: "tokens"; QA: "question", "context"):
    # `predict --file` reads these columns, and the server takes {field: ...} for one input or
    # {"inputs": [{field: ...}, ...]}. None here: texts (and pairs) only.
    input_columns: ClassVar[tuple[str, ...]] = ()
    # Whether an input may be a (text, pair) two-segment pair (the server's "pairs", predict's
    # --pair-column, Predictor(texts, pairs)). A task that reads one segment (NER) refuses pairs: a
    # zipped (text, pair) would otherwise read as a two-word pre-tokenised sentence.
    takes_pairs: ClassVar[bool] = True
    # Per-input options ``inputs`` reads next to those fields (QA: "top_k"), which the server passes on.
    input_options: ClassVar[tuple[str, ...]] = ()
    # Settings of this task's own (tasks/settings.py), declared in a torch-free module and listed in
    # tasks/declared.py: the CLI adds their flags, TrainConfig validates and saves the training ones.
    settings: ClassVar[tuple[Setting, ...]] = ()

    def __init__(self, labels: Sequence[str], **state: Any) -> None:
        self.labels = [str(label) for label in labels]
        self.configure(**state)

    @classmethod
    def create(cls, labels: Sequence[str], settings: Mapping[str, Any]) -> "Task":
        """A fresh task for training, from its label space and the run's settings (TrainConfig.to_dict())."""
        return cls(labels)

    def apply_options(self, values: Mapping[str, Any]) -> None:
        """Prediction settings given to ``bertfit predict`` (this task's settings of the predict command,
        e.g. QA's --top-k), already checked: each becomes the attribute of its name."""
        for name, value in values.items():
            setattr(self, name, value)

    def configure(self, **state: Any) -> None:
        """Set what ``state()`` saved (thresholds, scaling); the default task has no state."""
        if state:
            raise ValueError(f"{self.name}: unknown task state {sorted(state)}")

    # -- reading ------------------------------------------------------------------------------
    @classmethod
    def read(cls, path: Any, settings: Any, options: Mapping[str, Any], known: "Task | None" = None) -> tuple[list[Any], Any]:
        """A labelled file → (examples, report): examples carry ``.text``, ``.text_pair``, ``.label``
        (parsed) and ``.row``; the report accounts for every row (``rows_read``, ``rows_used``,
        ``rejected``, ``summary()``, as data.LoadReport). ``known``: the trained task the labels must fit.
        settings: the TrainConfig (or the run's reading settings); options: ``reading_options``."""
        raise NotImplementedError(f"{cls.name} does not read files")

    def label_summary(self, labels: Sequence[Hashable]) -> dict[str, int]:
        """How often each output name occurs among ``labels`` (the data summary)."""
        from collections import Counter

        return dict(Counter(str(label) for label in labels if label is not None))

    @classmethod
    @abstractmethod
    def parse_label(cls, raw: object, options: Mapping[str, Any]) -> Hashable:
        """One label cell (a string, a number, a JSON list) → this task's label; LabelProblem if unusable.

        options: the reading settings (label_map, label_separator), from TrainConfig or the run.
        """

    @classmethod
    @abstractmethod
    def label_space(cls, labels: Sequence[Hashable], options: Mapping[str, Any]) -> list[str]:
        """The names of the head's outputs, from the training labels (sorted classes, target names)."""

    def check_label(self, label: Hashable) -> str | None:
        """Why ``label`` does not fit this (trained) task, e.g. a class it never saw; None if it fits."""
        return None

    def check_labels(self, examples: Sequence[Any], where: str) -> None:
        """Raise DataError if any example's label does not fit the trained task (all named at once)."""
        from bertfit.errors import DataError

        problems = [(e.row, p) for e in examples if e.label is not None and (p := self.check_label(e.label))]
        if problems:
            shown = "; ".join(f"row {row}: {p}" for row, p in problems[:5])
            raise DataError(f"{where}: {len(problems)} label(s) do not fit the training data ({shown}"
                            f"{'; ...' if len(problems) > 5 else ''})")

    def split_groups(self, examples: Sequence[Any]) -> list[Hashable] | None:
        """Examples that must land in the same split when one file is split (QA: the questions of one
        passage), so no test example shares its source with training; None: each example alone."""
        return None

    def strata(self, labels: Sequence[Hashable]) -> list[str | None]:
        """The group each labelled example is stratified by when one file is split."""
        return [None if label is None else str(label) for label in labels]

    # -- encoding -----------------------------------------------------------------------------
    @abstractmethod
    def targets(self, labels: Sequence[Hashable]) -> np.ndarray:
        """Parsed labels → the training targets (a row per example)."""

    def inputs(self, items: Sequence[Any]) -> list[Any]:
        """What predict and the server receive → examples for ``encode``: a text, a (text, pair)
        two-item list/tuple, or {"text", "text_pair"}. A task with other inputs (tokens, question +
        context: its ``input_columns``) overrides this; a bad item raises errors.InputError (its
        position, and a reason that names the field)."""
        from bertfit.errors import InputError
        from bertfit.data.examples import Example

        examples = []
        for i, item in enumerate(items):
            if isinstance(item, Mapping):
                item = (item.get("text"), item.get("text_pair")) if item.get("text_pair") is not None else item.get("text")
            if isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(t, str) for t in item):
                examples.append(Example(item[0], None, item[1], row=i))
            elif isinstance(item, str):
                examples.append(Example(item, None, None, row=i))
            else:
                raise InputError(i, f"the text is {type(item).__name__}, expected a string", "text")
        return examples

    def probe_inputs(self, texts: Sequence[str]) -> list[Any]:
        """Inputs of this task built from probe sentences (the export check runs them); default: the texts."""
        return list(texts)

    def sample_inputs(self) -> list[Any]:
        """Inputs of every shape ``inputs`` takes (the server warms its model up on them)."""
        return ["warm-up", ("warm-up", "pair")]

    def encode(self, tokenizer: "WordPieceTokenizer", examples: Sequence[Any], max_length: int,
               settings: Mapping[str, Any] | None = None) -> "EncodedSplit":
        """Examples → the features the model runs on, with their targets (examples without labels
        get none). Default: one feature per example, cut to ``max_length`` tokens. settings: the
        training settings when training, None when predicting (keep what encoding needs in ``state()``)."""
        from bertfit.batching import EncodedSplit

        texts = [e.text for e in examples]
        pairs = [e.text_pair or "" for e in examples] if any(e.text_pair is not None for e in examples) else None
        encoded = tokenizer.encode(texts, pairs, max_length=max_length) if examples else []
        labelled = bool(examples) and all(e.label is not None for e in examples)
        return EncodedSplit(encoded, self.targets([e.label for e in examples]) if labelled else None)

    def collate(self, split: "EncodedSplit", indices: Sequence[int], pad_id: int, epoch: int | None = None) -> "Batch":
        """Features → one padded batch with this task's targets. ``epoch``: the training epoch (None
        when evaluating); a task that draws per epoch (dynamic masks) seeds from (seed, epoch, index)."""
        from bertfit.batching import collate

        return collate(split.encoded, indices, split.targets, pad_id)

    def train_units(self, split: "EncodedSplit") -> list[list[int]] | None:
        """Features that train together, as one unit of the batch order (a long text's windows, whose
        loss is the text's); None: every feature on its own (the default)."""
        return None

    def batch_outputs(self, outputs: Tensor, batch: "Batch") -> Tensor:
        """The model's outputs for a training batch → what ``loss`` takes with ``batch.labels`` (a task
        whose batches group rows, ``batch.groups``, combines them here). Default: unchanged."""
        return outputs
    def forward(self, model: Any, batch: "Batch") -> Any:
        """The model's outputs for a training batch (what ``loss`` takes). A task whose head needs its
        targets to run (masked LM: the vocabulary projection at the masked positions only) overrides it."""
        from bertfit.heads import run_head

        return run_head(model, batch)

    def evaluation_outputs(self, model: Any, split: "EncodedSplit", pad_id: int, device: torch.device,
                           max_tokens: int, bf16: bool = False, indices: Sequence[int] | None = None) -> Any:
        """The model's outputs for the features ``indices`` (default: all) of an evaluation split, in that
        order (what ``gather`` takes once every shard is back). Default: the length-sorted inference path
        on the features alone; a task whose outputs depend on its targets (masked LM: the held-out masks,
        drawn from each feature's index) collates its own batches (``collate`` with epoch=None)."""
        from bertfit.inference import predict_logits

        encoded = split.encoded if indices is None else [split.encoded[i] for i in indices]
        return predict_logits(model, encoded, pad_id, device, max_tokens, bf16=bf16)

    def gather(self, split: "EncodedSplit", outputs: Any) -> Any:
        """The model's outputs per feature → per example (stitch windows, aggregate, decode spans):
        what ``evaluate``, ``mistakes``, ``fit_decisions`` and ``decode`` take. Default: one feature per example."""
        return outputs

    # -- training -----------------------------------------------------------------------------
    def prepare_training(self, settings: Mapping[str, Any], train_targets: np.ndarray) -> None:
        """Fit what the loss needs from the training targets (weights, scaling)."""

    def init_head(self, model: Any) -> None:
        """Adjust a freshly initialised head to the training targets (regression: their mean/scale)."""

    # How many separately normalised terms ``loss`` sums (masked LM + NSP: 2, each a mean over its own
    # elements). With more than one, ``loss_weight`` and ``loss`` return one value per term.
    loss_components: int = 1

    def loss_weight(self, targets: Tensor) -> Tensor:
        """The weight ``loss`` returns for these targets, known before the forward pass: the trainer
        sums it over a whole optimizer step (and over the ranks of a distributed job) to scale each
        micro-batch's loss. With ``loss_components`` > 1: a (K,) tensor, one weight per term."""
        return torch.tensor(float(targets.numel()))

    @abstractmethod
    def loss(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """(summed loss, weight) of a micro-batch; the trainer divides by the whole step's weight, so
        the step's gradient does not depend on how the step is split (micro-batches, ranks). With
        ``loss_components`` > 1: (K,) sums and (K,) weights; the step's loss is Σ_k sum_k / step weight_k."""

    # -- evaluation ---------------------------------------------------------------------------
    @abstractmethod
    def evaluate(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        """Every metric of this task (with "loss"), JSON-able."""

    def fit_decisions(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        """After training, on validation outputs: tune decision rules (thresholds); returns what it chose."""
        return {}

    def calibrate(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        """After training, on validation outputs: fit how raw outputs become calibrated probabilities
        (a temperature, Platt scaling; kept in ``state()``); returns what it fitted. Default: nothing."""
        return {}

    def warnings(self, outputs: np.ndarray) -> list[str]:
        """Problems visible in a set of outputs (e.g. a model that collapsed to one class)."""
        return []

    def better(self, metric: str, value: float, best: float | None) -> bool:
        if best is None:
            return True
        return value < best if metric in self.lower_is_better else value > best

    # -- decoding -----------------------------------------------------------------------------
    @abstractmethod
    def decode(self, outputs: Any, split: "EncodedSplit | None" = None) -> list[dict[str, Any]]:
        """Outputs (per example, after ``gather``) → one JSON-able prediction record per example (what
        predict and the server return). ``split``: the encoded inputs, to map back to text (offsets)."""

    def display(self, record: Mapping[str, Any]) -> str | None:
        """One record as ``bertfit predict`` prints it on a terminal (a task with records of its own
        shape: entities, answers); None: the answer and the text on one line."""
        return None

    def answer(self, record: Mapping[str, Any]) -> Any:
        """The record's answer alone (what ``Predictor.predict`` returns per text)."""
        return next(iter(record.values()))

    def agreement(self, reference: Any, outputs: Any, split: "EncodedSplit | None" = None) -> tuple[str, float]:
        """How often two models' outputs give the same answer (int8 vs fp32): (what is compared, fraction)."""
        import json

        same = [json.dumps(self.answer(a), sort_keys=True) == json.dumps(self.answer(b), sort_keys=True)
                for a, b in zip(self.decode(reference, split), self.decode(outputs, split))]
        return "labels agree", float(np.mean(same)) if same else 1.0

    def probabilities(self, outputs: np.ndarray) -> np.ndarray:
        """Per-output probabilities, for tasks that have them."""
        from bertfit.errors import BertfitError

        raise BertfitError(f"a {self.name} model predicts values, not probabilities; use predict()")

    @abstractmethod
    def columns(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """A prediction record as flat file columns (predict --file writes these)."""

    def output_names(self) -> list[str]:
        """Column names ``columns`` writes, in order."""
        return list(self.columns(self.decode(np.zeros((1, len(self.labels)), dtype=np.float32))[0]))

    @abstractmethod
    def mistakes(self, outputs: np.ndarray, targets: np.ndarray, limit: int = 20) -> list[dict[str, Any]]:
        """The worst errors, most confident (or largest) first: [{"index", "true", "predicted", "score"}]."""

    def state(self) -> dict[str, Any]:
        """What ``configure`` needs to rebuild this task for prediction (saved as task.json)."""
        return {}

    # -- explaining ---------------------------------------------------------------------------
    def explain_plan(self, tokenizer: "WordPieceTokenizer", example: Any, max_length: int) -> Any:
        """One input (an example from ``inputs``) → the rows, words and targets the explainer runs
        (tasks/explaining.py). Default: a text (or pair) as one row, truncated as ``encode`` truncates it,
        its targets from ``explain_targets`` on that row's output."""
        from bertfit.tasks.explaining import text_plan

        pair = example.text_pair
        encodings = tokenizer.encode_offsets([example.text], None if pair is None else [pair], max_length)
        fields = [(("text", example.text),) + ((("text_pair", pair),) if pair is not None else ())]
        return text_plan(encodings, fields, lambda outputs, which: self.explain_targets(outputs[0], which))

    def explain_targets(self, output: Tensor, which: Sequence[str] | None) -> list[Any]:
        """What to explain, from one row's output (L,) for the input itself (tasks/explaining.Target s):
        ``which`` names outputs the user asked for ("all": every one), None: the task's default."""
        from bertfit.errors import BertfitError

        raise BertfitError(f"{self.name} models have no word-level explanations")

    # -- report -------------------------------------------------------------------------------
    @abstractmethod
    def format_metrics(self, metrics: Mapping[str, Any]) -> str:
        """The metrics as a plain-text table (the CLI prints it)."""

    @abstractmethod
    def report_sections(self, metrics: Mapping[str, Any], split: str, plots: Any, outputs: Any = None,
                        targets: Any = None) -> list[Any]:
        """Report blocks for one split's results (report.document blocks). plots: a report.Plotter or
        None; outputs/targets: that split's arrays, for plots of every prediction (may be None)."""

    def objective(self) -> str:
        """What the run learned, for the report's first sentence: "(single_label) for 3 labels (a, b, c)"."""
        shown = ", ".join(map(str, self.labels[:30])) + (", ..." if len(self.labels) > 30 else "")
        what = "targets" if self.problem_type == "regression" else "labels"
        return f"({self.name}) for {len(self.labels)} {what} ({shown})"

    def lr_warning(self, lr: float) -> str | None:
        """A note when the learning rate is far outside what this kind of training uses."""
        if lr >= 1e-3:
            return (f"lr {lr:g} is very high for fine-tuning BERT (typical: 2e-5 to 5e-5); "
                    "training is likely to diverge or collapse to one class")
        return None

    @abstractmethod
    def headline(self, metrics: Mapping[str, Any]) -> list[Any]:
        """The summary sentence's figures for the headline split (report.document inline parts)."""
