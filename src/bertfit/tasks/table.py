"""The one list of tasks. Everything else that names the tasks derives from this table: the
registry (``registry.TASKS``: each row's class, imported on first use), the problem types and
transformers architectures a model directory may name, ``bertfit train --task``'s choices and help,
the settings each task declares (``declared.py``) and the metrics ``--metric`` may select on.

This module imports nothing that imports torch (``bertfit train --help`` reads it). A new task
adds one row here, its module under tasks/ and its head in heads.py; tests/test_layout.py checks
that no other module keeps a list of task names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskRow:
    name: str  # the registry key and the value of --task / --problem-type
    module: str  # the module that defines the task class (imported only when the task is used)
    cls: str  # the class's name in that module
    problem_type: str  # config.json "problem_type" of its models (transformers' name where there is one)
    architecture: str  # the transformers class its run directory loads as (config.json "architectures")
    command: str  # the command that trains it: "train" (labelled files) or "pretrain" (raw text)
    metrics: tuple[str, ...]  # what --metric may select the best checkpoint on (the first is the default)
    summary: str  # one phrase for --help
    settings: str = ""  # "module:NAME" of its own Setting declarations (torch-free), or "" for none
    # Training settings whose default differs for this task (TrainConfig's general ones otherwise:
    # train/config.py GENERAL_DEFAULTS), each from a recorded sweep; benchmarks/RESULTS.md, "Defaults
    # per task", holds the sweeps and the second data sets that confirmed them.
    defaults: tuple[tuple[str, float | int], ...] = ()


TABLE: tuple[TaskRow, ...] = (
    TaskRow("single-label", "bertfit.tasks.classify", "SingleLabel", "single_label_classification",
            "BertForSequenceClassification", "train", ("macro_f1", "accuracy", "weighted_f1", "loss"),
            "one class per text or pair"),
    TaskRow("multi-label", "bertfit.tasks.multilabel", "MultiLabel", "multi_label_classification",
            "BertForSequenceClassification", "train",
            ("macro_f1", "micro_f1", "samples_f1", "subset_accuracy", "hamming_loss", "loss"),
            "any number of labels per text", "bertfit.tasks.multilabel_settings:MULTILABEL_SETTINGS"),
    TaskRow("regression", "bertfit.tasks.regression", "Regression", "regression",
            "BertForSequenceClassification", "train", ("pearson", "spearman", "r2", "rmse", "mae", "loss"),
            "one or more numbers per text or pair"),
    TaskRow("ner", "bertfit.tasks.ner.task", "NER", "token_classification", "BertForTokenClassification", "train",
            ("f1", "macro_f1", "precision", "recall", "token_accuracy", "loss"),
            "named entities (CoNLL or JSON lines)", "bertfit.tasks.ner.data:NER_SETTINGS",
            # WNUT-17 sweep: lr 2.1e-4 batch 16 best, 4x the general lr; confirmed on NCBI-disease
            defaults=(("lr", 2e-4), ("batch_size", 16))),
    TaskRow("qa", "bertfit.tasks.qa.task", "QuestionAnswering", "question_answering", "BertForQuestionAnswering",
            "train", ("f1", "exact_match", "loss"), "extractive question answering on SQuAD-style JSON/JSONL",
            "bertfit.tasks.qa.data:QA_SETTINGS",
            # max_length: BERT's SQuAD window; lr and batch: the SQuAD sweep's best region (batch 16 first),
            # the one-hour recipe's values, confirmed on XQuAD-en
            defaults=(("max_length", 384), ("lr", 1e-4), ("batch_size", 16))),
    TaskRow("multiple-choice", "bertfit.tasks.multiple_choice", "MultipleChoice", "multiple_choice",
            "BertForMultipleChoice", "train", ("accuracy", "loss"),
            "pick the right answer among a question's choices (SWAG / CommonsenseQA-style JSONL or CSV)"),
    TaskRow("pretrain", "bertfit.tasks.pretrain.task", "Pretrain", "pretraining", "BertForPreTraining", "pretrain",
            ("loss", "mlm_loss", "perplexity", "mlm_accuracy", "nsp_accuracy"),
            "masked-LM + next-sentence further pretraining (bertfit pretrain)"),
)

ROWS: dict[str, TaskRow] = {row.name: row for row in TABLE}
# The tasks `bertfit train` trains (--task's choices); the others have a command of their own.
TRAIN_TASKS: tuple[str, ...] = tuple(row.name for row in TABLE if row.command == "train")
# The problem types a fine-tuned model's config.json may hold, and the architectures that name their
# model's kind without one (a pretraining checkpoint is an encoder to fine-tune, not a trained head).
PROBLEM_TYPES: tuple[str, ...] = tuple(dict.fromkeys(row.problem_type for row in TABLE if row.command == "train"))
ARCHITECTURE_PROBLEM_TYPES: dict[str, str] = {row.architecture: row.problem_type for row in TABLE
                                              if row.command == "train"
                                              and row.architecture != "BertForSequenceClassification"}
# Every task's selectable metrics, for validating --metric before the task is built.
METRICS: tuple[str, ...] = tuple(dict.fromkeys(m for row in TABLE for m in row.metrics))


def task_defaults(name: str | None) -> dict[str, float | int]:
    """The training settings task ``name`` defaults differently ({} for None or a task without any)."""
    row = ROWS.get(name) if name is not None else None
    return dict(row.defaults) if row is not None else {}


def tasks_help() -> str:
    """The task list as --help shows it."""
    return "; ".join(f"{row.name}: {row.summary}" for row in TABLE if row.command == "train")
