"""`bertfit tune` against transformers' `Trainer.hyperparameter_search(backend="optuna")` at the same
wall-clock budget, search space, data, sampler and pruner (issue 28), on the tweets (the quick job's
16,000 training rows, full validation and test splits) or STS-B (`../shared/data/stsb`, all of it).
One contender per invocation; the JSON says what each bought: trials completed, pruned and stopped
by the budget, the best validation metric (macro-F1 / Pearson), its test figures, the wall time.

The budget is hard for both: bertfit sizes its trials to the budget and stops a trial still running
when it ends (tune/study.py); transformers' search is optuna's `timeout` (no new trial after it) plus
a callback here that stops its trial in flight at the deadline (optuna records it as pruned), so
neither contender is credited with work done after the budget.

As run for benchmarks/RESULTS.md (issue 28), one thread and one core per contender:

    taskset -c 0 env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_tune.py --task tweets \
        --contender bertfit-median --budget 1800 --fixed-epochs 1 --work /work/tune-bench/tweets-bertfit \
        --out benchmarks/tune_tweets_bertfit-median.json        # with --contender hf-optuna on core 1
    taskset -c 0 env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_tune.py --task tweets \
        --contender bertfit-median --resume-final-seeds --final-seeds 3 --work /work/tune-bench/tweets-bertfit \
        --out benchmarks/tune_tweets_bertfit-final-seeds.json
    taskset -c 1 env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_tune.py --task stsb \
        --contender bertfit-none --budget 1800 --work /work/tune-bench/stsb-bertfit \
        --out benchmarks/tune_stsb_bertfit-none.json           # then --contender hf-optuna, same core
    PYTHONPATH=src python benchmarks/pruner_replay.py --study /work/tune-bench/stsb-bertfit/tune/study.db \
        --out benchmarks/pruner_replay_stsb.json
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPACE = {"lr": (1e-5, 2e-4), "epochs": (1, 3), "batch_size": (16, 32), "warmup_ratio": (0.0, 0.2),
         "weight_decay": (0.0, 0.1)}
SEED, STARTUP = 0, 3
# task: (metric the search maximises, training rows (None: all), evaluation every N optimizer steps)
TASKS = {"tweets": ("macro_f1", 16000, 125), "stsb": ("pearson", None, 90)}
STSB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "stsb"


def stsb_files(work: Path) -> dict[str, str]:
    """The STS-B TSVs (genre, source, year, id, score, sentence 1, sentence 2) as JSON lines."""
    out = {}
    for split, name in (("train", "train"), ("validation", "dev"), ("test", "test")):
        with open(STSB / f"{name}.tsv", encoding="utf-8", newline="") as f:
            rows = [{"text": r[5], "text_pair": r[6], "score": float(r[4])}
                    for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
        target = work / f"stsb-{name}.jsonl"
        target.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        out[split] = str(target)
    return out


def base_config(task: str, work: Path, train_rows: int | None, eval_rows: int | None, eval_every: int):
    from bertfit.train.config import TrainConfig

    common = dict(model="minilm-l6", eval_every=eval_every, threads=1, seed=SEED, max_eval_examples=eval_rows)
    if task == "tweets":
        return TrainConfig(max_train_examples=train_rows, **common)
    files = stsb_files(work)
    return TrainConfig(train_file=files["train"], validation_file=files["validation"], test_file=files["test"],
                       label_column="score", problem_type="regression", pair_column="text_pair", deduplicate=False,
                       max_train_examples=train_rows, **common)


def run_bertfit(task: str, pruner: str, budget: float, work: Path, base, final_seeds: int,
                fixed_epochs: int | None = None) -> dict:
    from bertfit.tune.lengths import choose_max_length
    from bertfit.tune.space import Param
    from bertfit.tune.study import TuneSettings, run_study, save_settings

    metric = TASKS[task][0]
    lengths = choose_max_length(base)
    base = base.replace(max_length=lengths["chosen"])
    space = {"lr": Param("lr", *SPACE["lr"], log=True), "epochs": Param("epochs", *SPACE["epochs"], integer=True),
             "batch_size": Param("batch_size", choices=SPACE["batch_size"]),
             "warmup_ratio": Param("warmup_ratio", *SPACE["warmup_ratio"]),
             "weight_decay": Param("weight_decay", *SPACE["weight_decay"])}
    fixed = {}
    if fixed_epochs:  # a space file's `epochs: N`
        del space["epochs"]
        fixed["epochs"] = fixed_epochs
    settings = TuneSettings(base, space, fixed, work / "tune", None, budget, SEED, STARTUP, "best", pruner=pruner,
                            lengths=lengths, final_seeds=final_seeds)
    save_settings(settings)
    started = time.monotonic()
    result = run_study(settings)
    wall_s = time.monotonic() - started
    states = [r["state"] for r in result.trials]
    summary = json.loads((work / "tune" / "summary.json").read_text()) if (work / "tune" / "summary.json").exists() else {}
    search_s = sum(r["seconds"] or 0 for r in result.trials)
    return {"max_length": lengths["chosen"], "search_s": search_s, "wall_with_test_and_seeds_s": wall_s,
            "trials": len(states), "complete": states.count("complete"), "pruned": states.count("pruned"),
            "failed": states.count("fail"), f"best_validation_{metric}": result.best["value"],
            "best_params": result.best["params"], "best_test": result.best["test"],
            "final_seeds": summary.get("final_seeds"), "tune_dir": str(work / "tune"),
            "trial_rows": [{k: r.get(k) for k in ("dir", "state", "value", "params", "seconds")} for r in result.trials]}


def run_hf(task: str, budget: float, work: Path, base, retrain: bool, fixed_epochs: int | None = None) -> dict:
    import numpy as np
    import optuna
    import torch
    from datasets import Dataset
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainerCallback,
                              TrainingArguments)

    from bertfit.hub import resolve_model
    from bertfit.train.finetune import prepare_data
    from bertfit.tune.lengths import choose_max_length

    torch.set_num_threads(1)
    metric_name, eval_every = TASKS[task][0], base.eval_every  # bertfit's cadence, in optimizer steps
    max_length = choose_max_length(base)["chosen"]  # the same max_length bertfit's search fixes
    prepared = prepare_data(base)  # the very same train / validation / test rows
    regression = task == "stsb"
    labels = ["score"] if regression else sorted({e.label for e in prepared.train})
    model_dir = str(resolve_model(base.model))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def dataset(examples):
        target = [float(e.label[0]) for e in examples] if regression else [labels.index(e.label) for e in examples]
        data = Dataset.from_dict({"text": [e.text for e in examples], "pair": [e.text_pair for e in examples],
                                  "label": target})
        return data.map(lambda b: tokenizer(b["text"], b["pair"] if regression else None, truncation=True,
                                            max_length=max_length), batched=True, remove_columns=["text", "pair"])

    train, validation, test = (dataset(s) for s in (prepared.train, prepared.validation, prepared.test))

    def metrics(prediction):
        if regression:
            guess = prediction.predictions.reshape(-1)
            return {"pearson": float(np.corrcoef(guess, prediction.label_ids)[0, 1])}
        from sklearn.metrics import accuracy_score, f1_score

        guess = np.argmax(prediction.predictions, axis=-1)
        return {"macro_f1": f1_score(prediction.label_ids, guess, average="macro"),
                "accuracy": accuracy_score(prediction.label_ids, guess)}

    def model_init(trial=None):
        return AutoModelForSequenceClassification.from_pretrained(
            model_dir, num_labels=len(labels), problem_type="regression" if regression else None)

    def hp_space(trial):
        epochs = {} if fixed_epochs else {"num_train_epochs": trial.suggest_int("num_train_epochs", *SPACE["epochs"])}
        return {"learning_rate": trial.suggest_float("learning_rate", *SPACE["lr"], log=True), **epochs,
                "per_device_train_batch_size": trial.suggest_categorical("per_device_train_batch_size",
                                                                         list(SPACE["batch_size"])),
                "warmup_steps": trial.suggest_float("warmup_steps", *SPACE["warmup_ratio"]),  # < 1: a ratio
                "weight_decay": trial.suggest_float("weight_decay", *SPACE["weight_decay"])}

    started = time.monotonic()
    deadline = started + budget
    stopped_at_budget: list[int] = []

    class Deadline(TrainerCallback):
        """The search's budget is hard: the trial in flight stops when it runs out."""

        def on_step_end(self, args, state, control, **kwargs):
            if time.monotonic() >= deadline:
                stopped_at_budget.append(state.global_step)
                raise optuna.TrialPruned(f"budget spent at step {state.global_step}")

    args = TrainingArguments(output_dir=str(work / "hf"), eval_strategy="steps", eval_steps=eval_every,
                             save_strategy="no", per_device_eval_batch_size=64, warmup_steps=0.0,
                             num_train_epochs=float(fixed_epochs or 3), use_cpu=True, report_to=[],
                             disable_tqdm=True, seed=SEED, logging_steps=eval_every, dataloader_num_workers=0)
    trainer = Trainer(model_init=model_init, args=args, train_dataset=train, eval_dataset=validation,
                      processing_class=tokenizer, compute_metrics=metrics, callbacks=[Deadline()])
    storage = f"sqlite:///{work / 'hf.db'}"
    try:
        best = trainer.hyperparameter_search(
            hp_space=hp_space, compute_objective=lambda m: m[f"eval_{metric_name}"], n_trials=1000,
            direction="maximize", backend="optuna", timeout=budget, storage=storage, study_name="hf",
            sampler=optuna.samplers.TPESampler(seed=SEED),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=STARTUP, n_warmup_steps=0, n_min_trials=1))
    except ValueError:  # optuna's "Record does not exist": no trial completed within the budget
        best = None
    search_s = time.monotonic() - started
    study = optuna.load_study(study_name="hf", storage=storage)
    trials = study.get_trials(deepcopy=False)
    states = [t.state.name.lower() for t in trials]
    finished = [t for t in trials if t.state.name == "COMPLETE"]
    # Trials optuna started after the deadline (its timeout counts from later than ours) stop at their
    # first step: only the one in flight at the deadline is counted, as "stopped at the budget".
    late = max(0, len(stopped_at_budget) - 1)
    result = {"max_length": max_length, "search_s": search_s, "trials": len(states) - late,
              "complete": states.count("complete"), "pruned_by_pruner": states.count("pruned") - len(stopped_at_budget),
              "failed": states.count("fail"), "stopped_at_budget": min(1, len(stopped_at_budget)),
              f"best_validation_{metric_name}": max((t.value for t in finished), default=None),
              "best_params": best.hyperparameters if best else None,
              "trial_rows": [{"state": t.state.name.lower(), "value": t.value, "params": t.params,
                              "intermediate": t.intermediate_values,
                              "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
                              if t.datetime_complete else None} for t in trials]}
    if retrain and best:  # HF returns settings, not the model: its best trained again, outside the budget
        started = time.monotonic()
        for name, value in best.hyperparameters.items():
            setattr(trainer.args, name, value)
        trainer.args.eval_strategy = "no"
        final = Trainer(model_init=model_init, args=trainer.args, train_dataset=train, processing_class=tokenizer,
                        compute_metrics=metrics)
        final.train()
        scores = final.evaluate(test)
        result["retrain_outside_budget"] = {"test": {k[5:]: v for k, v in scores.items() if k[5:] in ("macro_f1", "accuracy", "pearson")},
                                            "seconds": time.monotonic() - started}
    return result


def resume_bertfit(work: Path, final_seeds: int) -> dict:
    """A finished bertfit search resumed only to train its best settings with fresh seeds."""
    from bertfit.tune.study import load_settings, run_study

    import optuna

    storage = f"sqlite:///{(work / 'tune' / 'study.db').resolve()}"
    done = [t for t in optuna.load_study(study_name="bertfit-tune", storage=storage).get_trials(deepcopy=False)
            if t.state == optuna.trial.TrialState.COMPLETE]
    # the trials it has as the trial limit: a resume's budget is a new one, and would start more trials
    settings = load_settings(work / "tune", len(done), None, final_seeds=final_seeds)
    started = time.monotonic()
    run_study(settings, resume=True)
    summary = json.loads((work / "tune" / "summary.json").read_text())
    return {"final_seeds": summary["final_seeds"], "best": summary["best"], "seconds": time.monotonic() - started}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", choices=tuple(TASKS), default="tweets")
    parser.add_argument("--contender", required=True,
                        choices=("bertfit-median", "bertfit-halving", "bertfit-none", "hf-optuna"))
    parser.add_argument("--budget", type=float, default=1800)
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", help="keep the search here (default: a temporary directory)")
    parser.add_argument("--final-seeds", type=int, default=0, help="bertfit: retrain the best with N fresh seeds")
    parser.add_argument("--resume-final-seeds", action="store_true",
                        help="bertfit: only train the finished search in --work with --final-seeds seeds")
    parser.add_argument("--hf-retrain", action="store_true", help="transformers: train its best again for test")
    parser.add_argument("--fixed-epochs", type=int, help="fix the epochs for both contenders (not searched)")
    parser.add_argument("--train-rows", type=int, help="a smoke run's smaller slice")
    parser.add_argument("--eval-rows", type=int)
    parser.add_argument("--eval-every", type=int)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    metric, default_rows, default_every = TASKS[args.task]
    train_rows = args.train_rows or default_rows
    eval_every = args.eval_every or default_every
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.resume_final_seeds:
            result = resume_bertfit(work, args.final_seeds)
        else:
            base = base_config(args.task, work, train_rows, args.eval_rows, eval_every)
            if args.contender == "hf-optuna":
                result = run_hf(args.task, args.budget, work, base, args.hf_retrain, args.fixed_epochs)
            else:
                result = run_bertfit(args.task, args.contender.split("-", 1)[1], args.budget, work, base,
                                     args.final_seeds, args.fixed_epochs)
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip()
    flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n")[0].split()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    result.update(task=args.task, metric=metric, contender=args.contender, budget_s=args.budget,
                  threads=torch.get_num_threads(), cpu=cpu,
                  cpu_flags=[f for f in ("avx512_bf16", "amx_bf16", "avx512_vnni", "avx2", "avx512f") if f in flags],
                  commit=commit, python=platform.python_version(), command=" ".join(sys.argv),
                  scale={"train_rows": train_rows, "eval_rows": args.eval_rows, "eval_every_steps": eval_every},
                  fixed_epochs=args.fixed_epochs)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "trial_rows"}, indent=1))


if __name__ == "__main__":
    main()
