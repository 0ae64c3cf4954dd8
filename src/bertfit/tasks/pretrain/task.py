"""Further pretraining: BERT's own objectives, masked LM and next-sentence prediction, on unlabelled text.

Features are the sequences pretraining/prepare.py builds (NSP pairs, or packed full-length
sequences with --no-nsp); the per-feature target is the NSP label. Masks are not part of the
features: ``collate`` draws them for each batch from (seed, epoch, feature index) — fresh every
epoch, the same again after a resume — and from one fixed stream for the held-out slice, so its
loss is comparable between evaluations. The collated labels are (B, 1 + T): column 0 the NSP label
(-100 without NSP), columns 1.. the masked-LM labels (-100 where nothing is predicted).

The head (heads.BertForPreTraining) computes the vocabulary projection at the masked positions
only; ``forward`` hands it those positions. Loss, as transformers' BertForPreTraining: mean
cross-entropy over the masked tokens + mean NSP cross-entropy over the sequences, returned as two
(sum, weight) terms (``loss_components``): the trainer divides each sum by its own total over the
whole optimizer step, every micro-batch and every rank, so the two means are the step's, exactly,
however the step is split (accumulation, out-of-memory halving, processes).

Evaluation runs the held-out slice with its fixed masks and returns per-feature statistics —
(masked-LM loss sum, masked tokens, correctly predicted masked tokens, NSP loss, NSP correct) —
which ``evaluate`` sums into masked-LM loss, perplexity (exp of the loss), masked-token accuracy
and NSP accuracy.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar, Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bertfit.tasks.pretrain.masking import IGNORE, TRAIN_STREAM, VALIDATION_STREAM, Masker, MaskingConfig
from bertfit.tasks.base import Task
from bertfit.heads import run_head

if TYPE_CHECKING:
    from bertfit.batching import Batch, EncodedSplit

STATS = ("mlm_loss_sum", "masked", "mlm_correct", "nsp_loss", "nsp_correct")


class Pretrain(Task):
    name = "pretrain"
    hub_task = "fill-mask"
    head = "pretraining"
    problem_type = "pretraining"
    metric_names = ("loss", "mlm_loss", "perplexity", "mlm_accuracy", "nsp_accuracy")
    default_metric = "loss"
    lower_is_better: ClassVar[frozenset[str]] = frozenset({"loss", "mlm_loss", "perplexity"})
    headline_metrics: ClassVar[tuple[str, ...]] = ("loss", "perplexity", "mlm_accuracy", "nsp_accuracy")
    command: ClassVar[str] = "pretrain"  # trained by `bertfit pretrain` on unlabelled text, not `bertfit train`
    trained_as: ClassVar[str] = "further pretrained"
    row_noun: ClassVar[str] = "sequences"
    reports_mistakes: ClassVar[bool] = False

    def __init__(self, labels: Sequence[str] = ("IsNext", "NotNext"), **state: Any) -> None:
        super().__init__(labels, **state)

    def configure(self, nsp: bool = True, **state: Any) -> None:
        super().configure(**state)
        self.nsp = nsp
        self.loss_components = 2 if nsp else 1  # mean over masked tokens (+ mean over sequences)
        self.masker: Masker | None = None
        if not nsp:  # masked LM alone: no NSP figures anywhere (records, tables, selection)
            self.headline_metrics = ("loss", "perplexity", "mlm_accuracy")
            self.metric_names = ("loss", "mlm_loss", "perplexity", "mlm_accuracy")

    def state(self) -> dict[str, Any]:
        return {"nsp": self.nsp}

    def set_masker(self, masker: Masker) -> None:
        """The masking rule (vocabulary, special ids, seed); set by the job before training."""
        self.masker = masker

    @classmethod
    def masker_for(cls, tokenizer: Any, seed: int, whole_word: bool = False, probability: float = 0.15) -> Masker:
        if tokenizer.mask_id is None:
            from bertfit.errors import CheckpointError

            raise CheckpointError("the tokenizer has no [MASK] token, which masked-LM pretraining needs")
        continuation = tokenizer.continuation_mask() if whole_word else None
        return Masker(tokenizer.vocab_size, tokenizer.mask_id, tokenizer.special_ids(), continuation,
                      MaskingConfig(probability=probability, whole_word=whole_word), seed)

    # -- labels (pretraining reads no labelled file; these serve the contract) ----------------
    @classmethod
    def parse_label(cls, raw: object, options: Mapping[str, Any]) -> Hashable:
        return int(raw)  # type: ignore[arg-type]

    @classmethod
    def label_space(cls, labels: Sequence[Hashable], options: Mapping[str, Any]) -> list[str]:
        return ["IsNext", "NotNext"]

    def targets(self, labels: Sequence[Hashable]) -> np.ndarray:
        return np.asarray(labels, dtype=np.int64)

    # -- features and batches -------------------------------------------------------------------
    def encode(self, tokenizer: Any, examples: Sequence[Any], max_length: int,
               settings: Mapping[str, Any] | None = None) -> "EncodedSplit":
        """Instances (pretraining/instances.py) → features; the NSP label is each feature's target."""
        from bertfit.batching import EncodedSplit
        from bertfit.tasks.pretrain.store import StoredSequences

        if isinstance(examples, StoredSequences):  # a large corpus: features mapped from the store, as they are
            return EncodedSplit(examples.features, examples.next_labels)
        encoded = [inst.encode(tokenizer.cls_id, tokenizer.sep_id) for inst in examples]
        return EncodedSplit(encoded, np.asarray([inst.next_label for inst in examples], dtype=np.int64))

    def collate(self, split: "EncodedSplit", indices: Sequence[int], pad_id: int, epoch: int | None = None) -> "Batch":
        """Pad, then draw the masks: epoch given (training): fresh per (seed, epoch, index); None: the fixed
        held-out masks. Labels (B, 1 + T): NSP label, then the masked-LM labels."""
        from bertfit.batching import Batch, collate

        batch = collate(split.encoded, indices, split.targets, pad_id)
        ids, labels = self.mask_batch(batch.input_ids, batch.labels, indices, epoch)
        return Batch(ids, batch.attention_mask, batch.token_type_ids, labels, batch.indices)

    def mask_batch(self, input_ids: Tensor, targets: Tensor | None, indices: Sequence[int],
                   epoch: int | None) -> tuple[Tensor, Tensor]:
        """(masked input ids (B, T), labels (B, 1 + T)) for a padded batch of features ``indices``."""
        if self.masker is None:
            raise RuntimeError("Pretrain.set_masker was not called")
        ids = input_ids.numpy()
        out = ids.copy()
        labels = np.full((ids.shape[0], ids.shape[1] + 1), IGNORE, dtype=np.int64)
        stream, round_ = (VALIDATION_STREAM, 0) if epoch is None else (TRAIN_STREAM, epoch)
        for row, index in enumerate(indices):
            out[row], labels[row, 1:] = self.masker.mask(ids[row], self.masker.rng(stream, round_, int(index)))
        if self.nsp and targets is not None:
            labels[:, 0] = targets.numpy()
        return torch.from_numpy(out), torch.from_numpy(labels)

    def forward(self, model: Any, batch: "Batch") -> Any:
        """The head projects onto the vocabulary at the masked positions only."""
        T = batch.input_ids.shape[1]
        positions = batch.labels[:, 1:1 + T] != IGNORE
        return run_head(model, batch, positions=positions)

    def evaluation_outputs(self, model: Any, split: "EncodedSplit", pad_id: int, device: torch.device,
                           max_tokens: int, bf16: bool = False, indices: Sequence[int] | None = None) -> np.ndarray:
        """(len(indices), 5) per-feature statistics (STATS) on the split's fixed masks (each feature's own,
        whichever shard evaluates it), length-sorted batches."""
        from bertfit.batching import inference_batches

        chosen = np.arange(len(split)) if indices is None else np.asarray(indices, dtype=np.int64)
        was_training = model.training
        model.eval()
        out = np.zeros((len(chosen), len(STATS)), dtype=np.float64)
        lengths = [len(split.encoded[i].ids) for i in chosen]
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            for rows in inference_batches(lengths, max_tokens, 256):
                batch = self.collate(split, chosen[rows].tolist(), pad_id, epoch=None).to(device)
                out[rows] = self.statistics(self.forward(model, batch), batch.labels.cpu())
        model.train(was_training)
        return out

    # -- training -----------------------------------------------------------------------------
    def loss_weight(self, targets: Tensor) -> Tensor:
        """The masked tokens (and, with NSP, the sequences): each term's own normaliser."""
        masked = (targets[:, 1:] != IGNORE).sum().float()
        return torch.stack([masked, torch.tensor(float(targets.shape[0]))]) if self.nsp else masked

    def loss(self, outputs: Any, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Summed masked-LM cross-entropy (and summed NSP cross-entropy): the trainer divides each by the
        step's total over every micro-batch and rank, so the loss is exactly transformers' mean over the
        masked tokens + mean over the sequences of the whole step, however the step is split."""
        mlm_labels = targets[:, 1:]
        gold = mlm_labels[mlm_labels != IGNORE]  # row-major, as the head's selected positions
        mlm = F.cross_entropy(outputs.mlm.float(), gold, reduction="sum")
        if not self.nsp:
            return mlm, torch.tensor(float(len(gold)))
        nsp = F.cross_entropy(outputs.nsp.float(), targets[:, 0], reduction="sum")
        return torch.stack([mlm, nsp]), self.loss_weight(targets)

    def statistics(self, outputs: Any, targets: Tensor) -> np.ndarray:
        """Per-feature (B, 5) evaluation statistics, see STATS."""
        mlm_labels = targets[:, 1:]
        chosen = mlm_labels != IGNORE
        gold = mlm_labels[chosen]
        logits = outputs.mlm.float().cpu()
        ce = F.cross_entropy(logits, gold, reduction="none")
        correct = (logits.argmax(-1) == gold).float()
        rows = chosen.nonzero()[:, 0]
        B = targets.shape[0]
        stats = torch.zeros(B, len(STATS))
        stats[:, 0].index_add_(0, rows, ce)
        stats[:, 1] = chosen.sum(1).float()
        stats[:, 2].index_add_(0, rows, correct)
        if self.nsp and outputs.nsp is not None:
            nsp = outputs.nsp.float().cpu()
            stats[:, 3] = F.cross_entropy(nsp, targets[:, 0], reduction="none")
            stats[:, 4] = (nsp.argmax(-1) == targets[:, 0]).float()
        return stats.numpy()

    # -- evaluation ---------------------------------------------------------------------------
    def evaluate(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        sums = np.asarray(outputs, dtype=np.float64).sum(axis=0) if len(outputs) else np.zeros(len(STATS))
        masked = max(sums[1], 1.0)
        mlm_loss = float(sums[0] / masked)
        metrics: dict[str, Any] = {
            "mlm_loss": mlm_loss,
            "perplexity": float(math.exp(min(mlm_loss, 50.0))),
            "mlm_accuracy": float(sums[2] / masked),
            "masked_tokens": int(sums[1]),
            "sequences": int(len(outputs)),
            "n": int(len(outputs)),
        }
        if self.nsp:
            n = max(len(outputs), 1)
            metrics["nsp_loss"] = float(sums[3] / n)
            metrics["nsp_accuracy"] = float(sums[4] / n)
        metrics["loss"] = metrics["mlm_loss"] + metrics.get("nsp_loss", 0.0)
        return metrics

    # -- decoding (the statistics of one sequence; pretraining is used through fill-mask / nsp) --
    def decode(self, outputs: np.ndarray, split: Any = None) -> list[dict[str, Any]]:
        return [{name: float(v) for name, v in zip(STATS, row)} for row in np.asarray(outputs)]

    def columns(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return dict(record)

    def output_names(self) -> list[str]:
        return list(STATS)

    def mistakes(self, outputs: np.ndarray, targets: np.ndarray, limit: int = 20) -> list[dict[str, Any]]:
        return []

    # -- report -------------------------------------------------------------------------------
    def format_metrics(self, metrics: Mapping[str, Any]) -> str:
        lines = [f"masked-LM loss  {metrics['mlm_loss']:.4f}",
                 f"perplexity      {metrics['perplexity']:.2f}",
                 f"masked accuracy {metrics['mlm_accuracy']:.4f}  ({metrics['masked_tokens']:,} masked tokens)"]
        if self.nsp:
            lines.append(f"NSP accuracy    {metrics['nsp_accuracy']:.4f}  ({metrics['sequences']:,} pairs)")
        return "\n".join(lines)

    def report_sections(self, metrics: Mapping[str, Any], split: str, plots: Any, outputs: Any = None,
                        targets: Any = None) -> list[Any]:
        from bertfit.report.document import Paragraph, Table

        rows = [["masked-LM loss", f"{metrics['mlm_loss']:.4f}"], ["perplexity", f"{metrics['perplexity']:.2f}"],
                ["masked-token accuracy", f"{metrics['mlm_accuracy']:.4f}"],
                ["masked tokens", f"{metrics['masked_tokens']:,}"]]
        if self.nsp:
            rows += [["NSP accuracy", f"{metrics['nsp_accuracy']:.4f}"], ["NSP pairs", f"{metrics['sequences']:,}"]]
        blocks = [Paragraph([f"On the held-out {split} slice, with its fixed masks:"]), Table(["metric", "value"], rows, ["l", "r"])]
        fills = metrics.get("fill_examples") or []
        if fills:
            blocks.append(Paragraph(["Held-out sentences with one word masked: the top 3 fillers before and after "
                                     "pretraining (probabilities)."]))
            show = lambda fs: ", ".join(f"{w} {p:.2f}" for w, p in fs)  # noqa: E731
            blocks.append(Table(["text", "answer", "before", "after"],
                                [[f["text"], f["answer"], show(f.get("fills", [])), show(f["fills_after"])] for f in fills],
                                ["l", "l", "l", "l"]))
        return blocks

    def objective(self) -> str:
        return "with masked LM and next-sentence prediction" if self.nsp else "with masked LM"

    def lr_warning(self, lr: float) -> str | None:
        if lr >= 1e-3:  # BERT pretrained at 1e-4; continued pretraining usually uses 2e-5 to 1e-4
            return f"lr {lr:g} is very high for pretraining BERT (typical: 2e-5 to 1e-4); training is likely to diverge"
        return None

    def headline(self, metrics: Mapping[str, Any]) -> list[Any]:
        parts: list[Any] = [f"held-out perplexity {metrics['perplexity']:.2f}, masked-token accuracy "
                            f"{metrics['mlm_accuracy']:.3f}"]
        if self.nsp:
            parts.append(f", NSP accuracy {metrics['nsp_accuracy']:.3f}")
        parts.append(". ")
        return parts
