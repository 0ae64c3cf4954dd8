"""`bertfit tune` against transformers' `Trainer.hyperparameter_search(backend="optuna")` at the same
wall-clock budget, space, data and sampler, and bertfit's pruner choice (median / successive halving /
none) measured on the same slice (issue 28). One contender per invocation (each under the bench lock,
interleaved by the caller); the JSON says what each bought: trials completed and pruned, the best
validation macro-F1 and its test figures, the wall time the search took.

The scale is honest and stated: the tweets (the bundled corpus, the quick job's split), a 1,000-row
stratified slice of the training split, validation and test capped at 500 rows each, one thread,
a budget of minutes instead of the issue's 30 (a 2-core machine shared with four other agents).

    flock /work/bench.lock taskset -c 0 env OMP_NUM_THREADS=1 python benchmarks/bench_tune.py \
        --contender bertfit-median --budget 300 --out benchmarks/tune_bertfit-median.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPACE = {"lr": (1e-5, 2e-4), "epochs": (1, 3), "batch_size": (16, 32), "warmup_ratio": (0.0, 0.2),
         "weight_decay": (0.0, 0.1)}
TRAIN_ROWS, EVAL_ROWS, EVAL_EVERY, SEED, STARTUP = 1000, 500, 25, 0, 3


def base_config():
    from bertfit.train.config import TrainConfig

    return TrainConfig(model="minilm-l6", max_train_examples=TRAIN_ROWS, max_eval_examples=EVAL_ROWS,
                       eval_every=EVAL_EVERY, threads=1, seed=SEED)


def run_bertfit(pruner: str, budget: float, work: Path) -> dict:
    from bertfit.tune.lengths import choose_max_length
    from bertfit.tune.space import Param
    from bertfit.tune.study import TuneSettings, run_study, save_settings

    base = base_config()
    lengths = choose_max_length(base)
    base = base.replace(max_length=lengths["chosen"])
    space = {"lr": Param("lr", *SPACE["lr"], log=True), "epochs": Param("epochs", *SPACE["epochs"], integer=True),
             "batch_size": Param("batch_size", choices=SPACE["batch_size"]),
             "warmup_ratio": Param("warmup_ratio", *SPACE["warmup_ratio"]),
             "weight_decay": Param("weight_decay", *SPACE["weight_decay"])}
    settings = TuneSettings(base, space, {}, work / "tune", None, budget, SEED, STARTUP, "best", pruner=pruner,
                            lengths=lengths)
    save_settings(settings)
    started = time.monotonic()
    result = run_study(settings)
    search_s = time.monotonic() - started
    states = [r["state"] for r in result.trials]
    return {"max_length": lengths["chosen"], "search_s": search_s, "trials": len(states),
            "complete": states.count("complete"), "pruned": states.count("pruned"), "failed": states.count("fail"),
            "best_validation_macro_f1": result.best["value"], "best_params": result.best["params"],
            "best_test": {k: result.best["test"][k] for k in ("macro_f1", "accuracy")},
            "trial_rows": [{k: r[k] for k in ("dir", "state", "value", "params", "seconds")} for r in result.trials]}


def run_hf(budget: float, work: Path) -> dict:
    import numpy as np
    import optuna
    import torch
    from datasets import Dataset
    from sklearn.metrics import accuracy_score, f1_score
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    from bertfit.hub import resolve_model
    from bertfit.train.finetune import prepare_data
    from bertfit.tune.lengths import choose_max_length

    torch.set_num_threads(1)
    base = base_config()
    max_length = choose_max_length(base)["chosen"]  # the same max_length bertfit's search fixes
    prepared = prepare_data(base)  # the very same train / validation / test rows
    labels = sorted({e.label for e in prepared.train})
    model_dir = str(resolve_model(base.model))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def dataset(examples):
        data = Dataset.from_dict({"text": [e.text for e in examples], "label": [labels.index(e.label) for e in examples]})
        return data.map(lambda b: tokenizer(b["text"], truncation=True, max_length=max_length), batched=True)

    train, validation, test = (dataset(s) for s in (prepared.train, prepared.validation, prepared.test))

    def metrics(prediction):
        guess = np.argmax(prediction.predictions, axis=-1)
        return {"macro_f1": f1_score(prediction.label_ids, guess, average="macro"),
                "accuracy": accuracy_score(prediction.label_ids, guess)}

    def model_init(trial=None):
        return AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(labels))

    def hp_space(trial):
        return {"learning_rate": trial.suggest_float("learning_rate", *SPACE["lr"], log=True),
                "num_train_epochs": trial.suggest_int("num_train_epochs", *SPACE["epochs"]),
                "per_device_train_batch_size": trial.suggest_categorical("per_device_train_batch_size",
                                                                         list(SPACE["batch_size"])),
                "warmup_steps": trial.suggest_float("warmup_steps", *SPACE["warmup_ratio"]),  # < 1: a ratio
                "weight_decay": trial.suggest_float("weight_decay", *SPACE["weight_decay"])}

    args = TrainingArguments(output_dir=str(work / "hf"), eval_strategy="steps", eval_steps=EVAL_EVERY,
                             save_strategy="no", per_device_eval_batch_size=64, use_cpu=True, report_to=[],
                             disable_tqdm=True, seed=SEED, logging_steps=EVAL_EVERY, dataloader_num_workers=0)
    trainer = Trainer(model_init=model_init, args=args, train_dataset=train, eval_dataset=validation,
                      processing_class=tokenizer, compute_metrics=metrics)
    storage = f"sqlite:///{work / 'hf.db'}"
    started = time.monotonic()
    best = trainer.hyperparameter_search(
        hp_space=hp_space, compute_objective=lambda m: m["eval_macro_f1"], n_trials=1000, direction="maximize",
        backend="optuna", timeout=budget, storage=storage, study_name="hf",
        sampler=optuna.samplers.TPESampler(seed=SEED),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=STARTUP, n_warmup_steps=0, n_min_trials=1))
    search_s = time.monotonic() - started
    study = optuna.load_study(study_name="hf", storage=storage)
    states = [t.state.name.lower() for t in study.get_trials(deepcopy=False)]
    # Test for HF's best trial: its settings trained again (HF returns settings, not the model), outside the budget.
    started = time.monotonic()
    for name, value in best.hyperparameters.items():
        setattr(trainer.args, name, value)
    trainer.args.eval_strategy = "no"
    final = Trainer(model_init=model_init, args=trainer.args, train_dataset=train, processing_class=tokenizer,
                    compute_metrics=metrics)
    final.train()
    retrain = {"validation_macro_f1": final.evaluate(validation)["eval_macro_f1"],
               "test": {k: final.evaluate(test)[f"eval_{k}"] for k in ("macro_f1", "accuracy")},
               "seconds": time.monotonic() - started}
    return {"max_length": max_length, "search_s": search_s, "trials": len(states), "complete": states.count("complete"),
            "pruned": states.count("pruned"), "failed": states.count("fail"),
            "best_validation_macro_f1": best.objective, "best_params": best.hyperparameters,
            "best_test": retrain["test"], "retrain_outside_budget": retrain,
            "trial_rows": [{"state": t.state.name.lower(), "value": t.value, "params": t.params,
                            "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
                            if t.datetime_complete else None} for t in study.get_trials(deepcopy=False)]}


def main() -> None:
    global TRAIN_ROWS, EVAL_ROWS
    parser = argparse.ArgumentParser()
    parser.add_argument("--contender", required=True,
                        choices=("bertfit-median", "bertfit-halving", "bertfit-none", "hf-optuna"))
    parser.add_argument("--budget", type=float, default=360)
    parser.add_argument("--out", required=True)
    parser.add_argument("--train-rows", type=int, default=TRAIN_ROWS, help="a smoke run's smaller slice")
    parser.add_argument("--eval-rows", type=int, default=EVAL_ROWS)
    args = parser.parse_args()
    TRAIN_ROWS, EVAL_ROWS = args.train_rows, args.eval_rows
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.contender == "hf-optuna":
            result = run_hf(args.budget, work)
        else:
            result = run_bertfit(args.contender.split("-", 1)[1], args.budget, work)
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip()
    flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n")[0].split()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    result.update(contender=args.contender, budget_s=args.budget, threads=torch.get_num_threads(), cpu=cpu,
                  cpu_flags=[f for f in ("avx512_bf16", "amx_bf16", "avx512_vnni", "avx2") if f in flags],
                  commit=commit, python=platform.python_version(), command=" ".join(sys.argv),
                  scale={"train_rows": TRAIN_ROWS, "eval_rows": EVAL_ROWS, "eval_every_steps": EVAL_EVERY})
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "trial_rows"}, indent=1))


if __name__ == "__main__":
    main()
