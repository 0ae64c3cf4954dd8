"""Heads on the encoder, one class each, behind the HEADS registry.

A head declares its signature, and everything that runs a model calls that and nothing else
(training's forward, inference, both prediction engines, the ONNX export and the final evaluation):

- ``inputs``: the batch tensors its forward takes, by name and in order (``Batch.named``), which are
  also the ONNX graph's input names;
- ``output_axes``: the axes of its output, e.g. ("batch", "label") for one row per sequence or
  ("batch", "sequence", "label") for one per token. A head without a "sequence" axis reads [CLS]
  only, so the encoder's last layer runs on [CLS] alone.

It also says which checkpoint tensors are its own (``weight_map``, ours → transformers' names), so
the loader keeps exactly those (e.g. ``cls.*`` for a masked-LM head) and accounts for the rest. The
losses (tasks/) mirror transformers' so a saved run trains the same there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertfit.config import SEQUENCE_PROBLEM_TYPES, BertConfig
from bertfit.model import BertModel, activation

# The inputs every head here takes; a head with others (a choice index, image features) declares them.
ENCODER_INPUTS: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
SEQUENCE_AXES: tuple[str, ...] = ("batch", "label")
TOKEN_AXES: tuple[str, ...] = ("batch", "sequence", "label")


def head_inputs(model: nn.Module) -> tuple[str, ...]:
    """The batch tensors ``model`` takes, by name, in order (its declaration, or the encoder's three)."""
    return getattr(model, "inputs", ENCODER_INPUTS)


def output_axes(model: nn.Module) -> tuple[str, ...]:
    return getattr(model, "output_axes", SEQUENCE_AXES)


def per_token(model: nn.Module) -> bool:
    """Whether the head has an output per token (a "sequence" axis), so outputs keep each row's length."""
    return "sequence" in output_axes(model)


def run_head(model: nn.Module, batch, **options) -> Tensor:
    """The head's forward on a batch, through the signature it declares (``inputs``)."""
    return model(*batch.named(head_inputs(model)), **options)


class _LinearHead(nn.Module):
    """The encoder, dropout and one linear layer: what every classification head is made of."""

    def __init__(self, config: BertConfig, minimum: int, what: str) -> None:
        super().__init__()
        if config.num_labels < minimum:
            raise ValueError(f"a {what} head needs at least {minimum} labels, got {config.labels}")
        self.config = config
        self.bert = BertModel(config)
        dropout = config.classifier_dropout
        self.dropout = nn.Dropout(config.hidden_dropout_prob if dropout is None else dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.reset_classifier()

    def reset_classifier(self) -> None:
        nn.init.normal_(self.classifier.weight, std=self.config.initializer_range)
        nn.init.zeros_(self.classifier.bias)


class BertForSequenceClassification(_LinearHead):
    """Dropout + linear on the sentence vector: one output per class, per label or per target.

    The sentence vector is the pooled [CLS] vector by default (the original BERT recipe, and what
    transformers' BertForSequenceClassification computes, so a saved run loads there unchanged);
    ``classifier_input="cls"`` feeds the raw final [CLS] hidden state instead. The same head serves
    single-label and multi-label classification and regression: ``config.problem_type`` says how its
    outputs are read (softmax, sigmoid per label, values), exactly as in transformers.
    """

    inputs: ClassVar[tuple[str, ...]] = ENCODER_INPUTS
    output_axes: ClassVar[tuple[str, ...]] = SEQUENCE_AXES
    problem_types: ClassVar[tuple[str, ...]] = SEQUENCE_PROBLEM_TYPES
    weight_map: ClassVar[list[tuple[str, tuple[str, ...]]]] = [("classifier.{p}", ("classifier.{p}",))]

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config, 1 if config.problem_type != "single_label_classification" else 2, config.problem_type)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        *,
        fast: bool = True,
        cls_only: bool | None = None,
    ) -> Tensor:
        """Logits (B, num_labels). fast=False runs the plain padded reference path; cls_only (default:
        fast) skips the last layer's work for tokens other than [CLS] (the exported graph sets it)."""
        out = self.bert(input_ids, attention_mask, token_type_ids, unpad=fast, cls_only=fast if cls_only is None else cls_only)
        features = out.pooled if self.config.classifier_input == "pooled" else out.cls
        return self.classifier(self.dropout(features))


class BertForMultipleChoice(BertForSequenceClassification):
    """One score per (question, choice) row: dropout + Linear(hidden, 1) on the pooled [CLS] vector,
    exactly transformers' BertForMultipleChoice (same ``classifier.*`` names and pooler), which views
    the (B·C, 1) scores as (B, C). Here the task does that viewing (a question's rows are grouped by
    ``Batch.groups``), so questions with different numbers of choices share a batch and the head keeps
    the sequence head's signature: every engine, the ONNX export and inference run it unchanged."""

    problem_types: ClassVar[tuple[str, ...]] = ("multiple_choice",)
    architecture: ClassVar[str] = "BertForMultipleChoice"

    def __init__(self, config: BertConfig) -> None:
        if config.num_labels != 1:  # transformers' head has one output: its config must say num_labels=1
            raise ValueError(f"a multiple-choice head has one output (a score per choice), got labels {config.labels}")
        super().__init__(config)


class BertForTokenClassification(_LinearHead):
    """Dropout + linear on every token's final hidden state: (B, T, num_labels), as transformers'
    BertForTokenClassification (same ``classifier.*`` names, so a run loads there unchanged).

    It needs every position, so the encoder's [CLS]-only last layer never applies; padding removal
    still does (the encoder returns zeros at padding, whose logits the caller ignores).
    """

    inputs: ClassVar[tuple[str, ...]] = ENCODER_INPUTS
    output_axes: ClassVar[tuple[str, ...]] = TOKEN_AXES
    problem_types: ClassVar[tuple[str, ...]] = ("token_classification",)
    weight_map: ClassVar[list[tuple[str, tuple[str, ...]]]] = [("classifier.{p}", ("classifier.{p}",))]
    architecture: ClassVar[str] = "BertForTokenClassification"
    uses_pooler: ClassVar[bool] = False  # saved without it, as transformers' token head has none

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config, 2, "token-classification")

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        *,
        fast: bool = True,
        cls_only: bool | None = None,
    ) -> Tensor:
        """Logits (B, T, num_labels). cls_only is accepted for the common signature and must be falsy."""
        if cls_only:
            raise ValueError("a token head needs every position; cls_only does not apply")
        out = self.bert(input_ids, attention_mask, token_type_ids, unpad=fast, cls_only=False)
        return self.classifier(self.dropout(out.last_hidden_state))  # (B, T, L)


def token_loss(logits: Tensor, targets: Tensor, *, class_weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(summed loss, weight) over the labelled tokens (targets -100 are ignored): the ratio is
    transformers' mean cross-entropy; with class weights, Σ w_y · nll over Σ w_y as torch computes it."""
    flat_logits = logits.float().reshape(-1, logits.shape[-1])
    flat = targets.reshape(-1)
    total = F.cross_entropy(flat_logits, flat, weight=class_weight, ignore_index=-100, reduction="sum")
    return total, token_loss_weight(flat, class_weight)


def token_loss_weight(targets: Tensor, class_weight: Tensor | None = None) -> Tensor:
    labelled = targets[targets != -100]
    if class_weight is None:
        return torch.tensor(float(labelled.numel()))
    return class_weight.to(labelled.device)[labelled].sum().float().cpu()


class BertForQuestionAnswering(nn.Module):
    """A linear layer on every token's final hidden state giving its answer-start and answer-end
    logits: (B, T, 2), as transformers' BertForQuestionAnswering (``qa_outputs.*``, no pooler, no
    dropout before the layer), so a run loads there unchanged.

    It needs every position, so the [CLS]-only last layer never applies; padding removal does. Logits
    at padding positions are set to -10000 (the encoder's fast path leaves zeros there), so a softmax
    over a padded row equals one over the real tokens and the loss does not depend on the padding.
    """

    inputs: ClassVar[tuple[str, ...]] = ENCODER_INPUTS
    output_axes: ClassVar[tuple[str, ...]] = TOKEN_AXES
    weight_map: ClassVar[list[tuple[str, tuple[str, ...]]]] = [("qa_outputs.{p}", ("qa_outputs.{p}",))]
    architecture: ClassVar[str] = "BertForQuestionAnswering"
    problem_types: ClassVar[tuple[str, ...]] = ("question_answering",)
    uses_pooler: ClassVar[bool] = False  # transformers' span head has none (add_pooling_layer=False)
    PAD_LOGIT: ClassVar[float] = -10000.0

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        if config.num_labels != 2:
            raise ValueError(f"a question-answering head has two outputs (start, end), got labels {config.labels}")
        self.config = config
        self.bert = BertModel(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.reset_classifier()

    def reset_classifier(self) -> None:
        nn.init.normal_(self.qa_outputs.weight, std=self.config.initializer_range)
        nn.init.zeros_(self.qa_outputs.bias)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        *,
        fast: bool = True,
        cls_only: bool | None = None,
    ) -> Tensor:
        """Start/end logits (B, T, 2). cls_only is accepted for the common signature and must be falsy."""
        if cls_only:
            raise ValueError("a span head needs every position; cls_only does not apply")
        out = self.bert(input_ids, attention_mask, token_type_ids, unpad=fast, cls_only=False)
        logits = self.qa_outputs(out.last_hidden_state)  # (B, T, 2)
        if attention_mask is not None:
            logits = logits.masked_fill(attention_mask[..., None] == 0, self.PAD_LOGIT)
        return logits


def span_loss(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """(summed loss, weight) of a batch of windows: Σ (CE(start) + CE(end)) / 2 over B windows, so the
    ratio is transformers' BertForQuestionAnswering loss. targets (B, 2): start and end positions."""
    logits = logits.float()
    start = F.cross_entropy(logits[..., 0], targets[:, 0], reduction="sum")
    end = F.cross_entropy(logits[..., 1], targets[:, 1], reduction="sum")
    return (start + end) / 2, torch.tensor(float(len(targets)))




class MaskedLMHead(nn.Module):
    """BERT's masked-LM head (transformers' ``cls.predictions``): dense + activation + LayerNorm, then
    the decoder, whose weight *is* the word-embedding matrix (tied) plus an output bias per token."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = activation(config.hidden_act)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: Tensor, word_embeddings: Tensor) -> Tensor:
        """(M, H) hidden states of the predicted positions → (M, vocab) logits."""
        return F.linear(self.norm(self.act(self.dense(hidden))), word_embeddings, self.bias)


@dataclass
class PretrainingOutput:
    """What BertForPreTraining returns: masked-LM logits and NSP logits."""

    mlm: Tensor  # (M, V) at the selected positions (row-major over (B, T)), or (B, T, V) for all positions
    nsp: Tensor | None  # (B, 2): IsNext (0) / NotNext (1); None without an NSP head


class BertForPreTraining(nn.Module):
    """The encoder with BERT's two pretraining heads: masked LM (tied decoder) and next-sentence
    prediction (a linear layer on the pooled [CLS] vector).

    ``forward(..., positions=mask)`` computes the vocabulary projection only where ``mask`` (B, T) is
    true — the ~15% of tokens that are predicted — instead of at all B·T positions: the projection
    onto 30k words is the largest matmul of a small model. Without ``positions`` it returns logits at
    every position (fill-mask, parity with transformers). ``nsp=False`` builds the masked-LM head alone
    (transformers' BertForMaskedLM; ``--no-nsp``). Saved in transformers' layout (``cls.predictions.*``,
    ``cls.seq_relationship.*``; the decoder weight is the word embeddings and is not stored twice), so a
    run loads in AutoModelForPreTraining / AutoModelForMaskedLM.
    """

    inputs: ClassVar[tuple[str, ...]] = ENCODER_INPUTS
    output_axes: ClassVar[tuple[str, ...]] = TOKEN_AXES
    # The decoder reads the word-embedding matrix as a whole: its gradient is dense over the vocabulary,
    # so the trainer's sparse word-embedding gradient (embedding_grad.py) must not be used with it.
    ties_word_embeddings: ClassVar[bool] = True
    weight_map: ClassVar[list[tuple[str, tuple[str, ...]]]] = [
        ("mlm.dense.{p}", ("cls.predictions.transform.dense.{p}",)),
        ("mlm.norm.{p}", ("cls.predictions.transform.LayerNorm.{p}",)),
        ("mlm.bias", ("cls.predictions.bias",)),
        ("nsp.{p}", ("cls.seq_relationship.{p}",)),
    ]

    def __init__(self, config: BertConfig, nsp: bool = True) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.mlm = MaskedLMHead(config)
        self.nsp = nn.Linear(config.hidden_size, 2) if nsp else None
        for module in (self.mlm, self.nsp):
            if module is not None:
                module.apply(self.bert._init_weights)
        # The output bias starts at zero, as BERT's; the decoder weight is the embeddings (tied).
        nn.init.zeros_(self.mlm.bias)

    @property
    def architecture(self) -> str:
        """transformers' class for config.json "architectures"."""
        return "BertForPreTraining" if self.nsp is not None else "BertForMaskedLM"

    @property
    def head_map(self) -> list[tuple[str, tuple[str, ...]]]:
        """This instance's weight map (without the NSP entry when it has no NSP head)."""
        return [m for m in self.weight_map if self.nsp is not None or not m[0].startswith("nsp.")]

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        *,
        fast: bool = True,
        positions: Tensor | None = None,
    ) -> PretrainingOutput:
        out = self.bert(input_ids, attention_mask, token_type_ids, unpad=fast, keep=positions)
        selected = out.last_hidden_state if positions is None else out.kept  # (B, T, H) or (M, H)
        mlm = self.mlm(selected, self.bert.embeddings.token.weight)
        nsp = self.nsp(out.pooled) if self.nsp is not None else None
        return PretrainingOutput(mlm, nsp)


# The registry: a task names its head by key.
HEADS: dict[str, type[nn.Module]] = {"sequence": BertForSequenceClassification, "token": BertForTokenClassification,
                                     "span": BertForQuestionAnswering, "pretraining": BertForPreTraining,
                                     "choice": BertForMultipleChoice}
