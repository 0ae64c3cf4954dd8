"""Task heads on the encoder. Sequence classification first."""

from __future__ import annotations

from torch import Tensor, nn

from bertfit.config import BertConfig
from bertfit.model import BertModel


class BertForSequenceClassification(nn.Module):
    """Dropout + linear on the sentence vector, one output per class.

    The sentence vector is the pooled [CLS] vector by default (the original BERT recipe, and what
    transformers' BertForSequenceClassification computes, so a saved run loads there unchanged);
    ``classifier_input="cls"`` feeds the raw final [CLS] hidden state instead.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        if config.num_labels < 2:
            raise ValueError(f"a classifier needs at least 2 labels, got {config.labels}")
        self.config = config
        self.bert = BertModel(config)
        dropout = config.classifier_dropout
        self.dropout = nn.Dropout(config.hidden_dropout_prob if dropout is None else dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.reset_classifier()

    def reset_classifier(self) -> None:
        nn.init.normal_(self.classifier.weight, std=self.config.initializer_range)
        nn.init.zeros_(self.classifier.bias)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        *,
        fast: bool = True,
    ) -> Tensor:
        """Logits (B, num_labels). fast=False runs the plain padded reference path."""
        out = self.bert(input_ids, attention_mask, token_type_ids, unpad=fast, cls_only=fast)
        features = out.pooled if self.config.classifier_input == "pooled" else out.cls
        return self.classifier(self.dropout(features))
