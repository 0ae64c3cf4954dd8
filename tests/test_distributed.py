"""Data-parallel training on torch.distributed (gloo, 2 processes on this machine, tiny random model).

- 2 processes and 1 process with the same global batch give the same per-step losses, held-out
  losses and final weights (≤ 1e-5), for every registered task (each task brings a tiny data maker:
  MAKERS; `bertfit pretrain`, masked LM with and without NSP, under torchrun and under `--nproc 2`),
  except the weights no loss depends on (`invisible`: question answering's span-head bias and last
  LayerNorm bias, whose true gradient is 0, see there);
- `bertfit pretrain --nproc 2` killed and resumed is bit-identical to the uninterrupted run;
- evaluation is sharded and gathered back complete and in order (7, 40, 101 texts), and exactly one
  rank writes the run directory (tests/dist_worker.py, run under torchrun);
- kill -9 of the job and `--resume` with the same world size is bit-identical to an uninterrupted
  distributed run; another world size is refused with the reason;
- a rank killed, or hung, mid-run ends the job with an error that names the rank, within a timeout;
- a 2-"node" job (`--nnodes 2` over a loopback c10d rendezvous) completes;
- --gradient-checkpointing recomputes every layer (one more layer call per step and layer), keeps only
  each layer's input for the backward, and gives the same weights as without.

Every subprocess has a timeout, so a hang fails the test instead of the suite. Deselect with
`-m "not distributed"`.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import load_file

from bertfit.train.run_dir import RunDir
from bertfit.tasks import TASKS
from conftest import BF16_EPS, NEGATIVE, POSITIVE, WORDS, synthetic_rows, write_csv

pytestmark = pytest.mark.distributed

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"
TIMEOUT = 240  # seconds for any one launched job: a hang fails the test, not the suite
TIMING = ("tokens_per_s", "examples_per_s")


# --- one tiny data file per task: a task joins these tests by adding its maker ------------------
def _text(rng: random.Random, extra: list[str]) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(2, 12))] + extra
    rng.shuffle(words)
    return " ".join(words)


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def single_label(path: Path) -> dict:
    return {"train_file": str(write_csv(path / "single.csv", synthetic_rows(130, seed=3))), "problem_type": "single-label"}


def multi_label(path: Path) -> dict:
    rng = random.Random(4)
    emotions = {"joy": POSITIVE[:2], "love": POSITIVE[2:], "anger": NEGATIVE[:2], "fear": NEGATIVE[2:]}
    rows = []
    for _ in range(130):
        labels = rng.sample(sorted(emotions), rng.randint(1, 2))
        rows.append({"text": _text(rng, [rng.choice(emotions[e]) for e in labels]), "labels": labels})
    return {"train_file": str(_jsonl(path / "multi.jsonl", rows)), "problem_type": "multi-label"}


def regression(path: Path) -> dict:
    rng = random.Random(5)
    rows = []
    for _ in range(130):
        k = rng.randint(0, 3)
        words = rng.sample(POSITIVE, k) + rng.sample(NEGATIVE, 3 - k)
        rows.append({"text": _text(rng, words[:2]), "text_pair": _text(rng, words[2:]), "score": k * 5 / 3})
    return {"train_file": str(_jsonl(path / "regression.jsonl", rows)), "problem_type": "regression",
            "pair_column": "text_pair"}


def ner(path: Path) -> dict:
    """Sentiment words are the entities (B-POS / B-NEG): the loss is per token, normalised globally."""
    rng = random.Random(6)
    rows = []
    for _ in range(130):
        words = _text(rng, [rng.choice(POSITIVE), rng.choice(NEGATIVE)]).split()
        tags = ["B-POS" if w in POSITIVE else "B-NEG" if w in NEGATIVE else "O" for w in words]
        rows.append({"text": " ".join(words), "tokens": words, "tags": tags})
    return {"train_file": str(_jsonl(path / "ner.jsonl", rows)), "problem_type": "ner"}


def qa(path: Path) -> dict:
    """The sentiment word of the context answers "the good" / "the bad"; contexts cut into windows."""
    rng = random.Random(7)
    rows = []
    for _ in range(130):
        ask = rng.choice(["good", "bad"])
        answer = rng.choice(POSITIVE if ask == "good" else NEGATIVE)
        context = _text(rng, [answer])
        rows.append({"question": "the " + ask, "context": context,
                     "answers": {"text": [answer], "answer_start": [(" " + context + " ").index(f" {answer} ")]}})
    return {"train_file": str(_jsonl(path / "qa.jsonl", rows)), "problem_type": "qa", "doc_stride": 8}


def multiple_choice(path: Path) -> dict:
    """The choice with a positive word answers "the good"; 2 to 4 choices, so batches mix question sizes
    and the loss is per question (its rows' scores, one cross-entropy)."""
    rng = random.Random(9)
    rows = []
    for _ in range(130):
        count = rng.randint(2, 4)
        choices = [f"{_text(rng, [w])} {i}" for i, w in enumerate(rng.sample(NEGATIVE, count - 1))]
        k = rng.randrange(count)
        choices.insert(k, _text(rng, [rng.choice(POSITIVE)]) + " x")
        rows.append({"question": "the good", "choices": choices, "label": k})
    return {"train_file": str(_jsonl(path / "choices.jsonl", rows)), "problem_type": "multiple-choice"}


# Each maker writes a small learnable file for its task into the folder and returns the TrainConfig
# fields that read it (train_file, problem_type, columns...).
MAKERS: dict[str, Callable[[Path], dict]] = {
    "single-label": single_label,
    "multi-label": multi_label,
    "regression": regression,
    "ner": ner,
    "qa": qa,
    "multiple-choice": multiple_choice,
}
# Tasks trained by `bertfit train` (fine_tune); `bertfit pretrain` (its own job) is PRETRAINING below.
FINE_TUNING = {name for name, cls in TASKS.items() if getattr(cls, "command", "train") == "train"}


def corpus(path: Path, documents: int = 120, seed: int = 8) -> Path:
    """Documents of a few sentences, each repeating one word (BERT's format: a blank line between documents)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(documents):
        lines += [" ".join([rng.choice(WORDS)] * rng.randint(3, 8)) for _ in range(rng.randint(2, 5))] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# `bertfit pretrain` jobs in the torchrun launch (name → PretrainSettings fields; the fixture adds the
# corpus); masked LM alone (--no-nsp) runs through `bertfit pretrain --nproc 2` in its own test.
PRETRAINING = {"pretrain": {"nsp": True, "validation_fraction": 0.1}}


def test_every_task_has_a_data_maker():
    missing = sorted(FINE_TUNING - set(MAKERS))
    assert not missing, f"tests/test_distributed.py has no data maker for task(s) {missing}: add one to MAKERS"
    assert {cls.command for cls in TASKS.values()} <= {"train", "pretrain"}  # pretrain: PRETRAINING's jobs


# --- launching ----------------------------------------------------------------------------------
def env(**extra: str) -> dict[str, str]:
    full = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
            "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", **extra}
    for key in ("BERTFIT_KILL_AT_STEP", "BERTFIT_HANG_AT_STEP", "BERTFIT_FAULT_RANK", "WORLD_SIZE", "RANK"):
        if key not in extra:
            full.pop(key, None)
    return full


def bertfit(args: list[str], timeout: float = TIMEOUT, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bertfit", "train", *args], env=env(**extra), capture_output=True,
                          text=True, timeout=timeout)


def cli_args(model_dir: Path, data: Path, run: Path, extra: list[str]) -> list[str]:
    return ["--model", str(model_dir), "--train-file", str(data), "--output-dir", str(run), "--max-length", "32",
            "--lr", "5e-4", "--log-every", "1", "--save-every", "3", "--epochs", "2", "--threads", "1",
            "--grad-accum", "2", *extra]


def train_records(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in RunDir(run).read_log() if r["kind"] == "train"]


def last_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(RunDir(run).checkpoint_path(RunDir(run).checkpoint_steps()[-1]) / "model.safetensors"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- one launch under torchrun (tests/dist_worker.py): each rank's own view ----------------------
def job_config(model_dir: Path, run: Path, batch_size: int, data: dict) -> dict:
    """fp32 (bf16=False), whatever this processor's automatic choice: the equality tests below hold
    1 and 2 processes to 1e-5, which fp32 rounding meets and bf16's (2^-8 relative) does not; the
    same property under bf16 is test_two_processes_match_one_process_in_bf16."""
    return {"model": str(model_dir), "output_dir": str(run), "max_length": 32, "lr": 5e-4, "log_every": 1,
            "save_every": 3, "epochs": 2.0, "threads": 1, "grad_accum": 2, "batch_size": batch_size, "bf16": False,
            **data}


@pytest.fixture(scope="module")
def launched(tmp_path_factory, no_dropout_model_dir):
    """Every task trained by 2 processes × batch 4 × accumulation 2 (global batch 16), plus the gather
    and agreement checks, in one torchrun launch; returns (folder, tasks' data, each rank's report)."""
    base = tmp_path_factory.mktemp("dist-launched")
    data = {task: make(base / task) for task, make in MAKERS.items() if (base / task).mkdir() is None}
    jobs = [{"name": task, "config": job_config(no_dropout_model_dir, base / task / "two", 4, data[task])}
            for task in MAKERS]
    text = corpus(base / "corpus.txt")
    for name, settings in PRETRAINING.items():
        data[name] = {**settings, "corpus": [str(text)]}
        jobs.append({"name": name, "pretrain": data[name],
                     "config": job_config(no_dropout_model_dir, base / name / "two", 4, {})})
    spec = base / "spec.json"
    spec.write_text(json.dumps({"model": str(no_dropout_model_dir), "jobs": jobs}), encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(TESTS / "dist_worker.py"), str(spec), str(base)],
                         env=env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]
    return base, data, [json.loads((base / f"rank{r}.json").read_text()) for r in (0, 1)]


# Parameters that no loss depends on, so their true gradient is exactly 0, per task. Question answering:
# the start (end) logits go through a softmax over the window's positions, which a constant shift does not
# change; the span head's bias shifts every position's logit by the same amount, and so does the last
# encoder layer's output LayerNorm bias (its only reader is the span head, whose logits it moves by
# W·bias at every position). Their computed gradient is float32 rounding noise (~1e-8, and ~1e-17 in
# float64: test_qa_invisible_parameters_get_no_gradient), which differs with the summation order of 1
# vs 2 processes; AdamW divides by the gradient's own running RMS, so noise above its eps (1e-8)
# becomes an update of up to ~lr per step, in different directions in the two runs: these two parameters
# drift apart (with plain SGD, or a larger adam_eps, they would not). The losses and answers cannot see
# them, so the held-out losses are compared and every other weight is held to 1e-5.
# Multiple choice: the softmax is over a question's choices, and the score head's bias shifts every choice's
# score by the same amount, so it is invisible in the same way (tests/test_multiple_choice.py checks its gradient).
def invisible(task: str, layers: int) -> set[str]:
    if task == "multiple-choice":
        return {"classifier.bias"}
    return {"qa_outputs.bias", f"bert.layers.{layers - 1}.feed_forward.norm.bias"} if task == "qa" else set()


def close(x, y) -> bool:
    """Equal, or for floats within 1e-5 (relative beyond 1: a perplexity is exp of a loss)."""
    return abs(x - y) <= 1e-5 * max(1.0, abs(x)) if isinstance(x, float) else x == y


def assert_same_run(one: Path, two: Path, model_dir: Path, task: str) -> None:
    """The same steps (examples, lr, loss ≤ 1e-5), evaluations and final weights (≤ 1e-5, but the invisible ones)."""
    a, b = train_records(one), train_records(two)
    assert [r["step"] for r in a] == [r["step"] for r in b] and len(a) >= 10
    for x, y in zip(a, b):
        assert x["batch_hash"] == y["batch_hash"] and x["lr"] == y["lr"]  # the same examples in every step
        assert abs(x["loss"] - y["loss"]) <= 1e-5, (x, y)
    evals = [[r for r in RunDir(run).read_log() if r["kind"] == "eval"] for run in (one, two)]
    assert len(evals[0]) == len(evals[1]) >= 1
    for x, y in zip(*evals):  # the held-out loss (invariant to the invisible parameters); the other metrics
        # (Pearson, F1) amplify 1e-6 differences of the outputs, or flip on a near tie, so they are not compared
        assert x["step"] == y["step"] and close(x["loss"], y["loss"]), (x, y)
    wa, wb = last_weights(one), last_weights(two)
    assert wa.keys() == wb.keys()
    layers = json.loads((model_dir / "config.json").read_text())["num_hidden_layers"]
    hidden = invisible(task, layers)
    assert hidden <= wa.keys()
    diffs = {k: float((wa[k] - wb[k]).abs().max()) for k in wa if k not in hidden}
    assert max(diffs.values()) <= 1e-5, sorted(diffs.items(), key=lambda kv: -kv[1])[:5]
    start = RunDir(two).read_log()[0]
    assert start["world_size"] == 2 and start["global_batch"] == 16


@pytest.mark.parametrize("task", sorted(MAKERS))
def test_two_processes_match_one_process(launched, no_dropout_model_dir, task):
    """The same global batch: 2 processes × 4 × 2 and 1 process × 8 × 2 take the same steps."""
    from bertfit.train.finetune import fine_tune
    from bertfit.train.config import TrainConfig

    base, data, _ = launched
    one, two = base / task / "one", base / task / "two"
    fine_tune(TrainConfig(**job_config(no_dropout_model_dir, one, 8, data[task])))
    assert_same_run(one, two, no_dropout_model_dir, task)


def test_qa_invisible_parameters_get_no_gradient(no_dropout_model_dir):
    """invisible()'s premise: in float64 their gradient is 0 (≤ 1e-15) while every other parameter's is not;
    in float32 it is rounding noise, far below every real gradient."""
    from bertfit.weights import load_model

    layers = json.loads((no_dropout_model_dir / "config.json").read_text())["num_hidden_layers"]
    hidden = invisible("qa", layers)
    torch.manual_seed(0)
    grads = {}
    for dtype in (torch.float64, torch.float32):
        model = load_model(no_dropout_model_dir, ["start", "end"], problem_type="question_answering")
        model = model.to(dtype).train()
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(5, model.config.vocab_size, (6, 20), generator=g)
        mask = (torch.arange(20) < torch.tensor([[20], [17], [12], [20], [9], [15]])).long()
        targets = torch.randint(0, 9, (6, 2), generator=g)
        logits = model(ids, mask, torch.zeros_like(ids))  # (B, T, 2); padding filled with a large negative logit
        loss = (torch.nn.functional.cross_entropy(logits[..., 0], targets[:, 0])
                + torch.nn.functional.cross_entropy(logits[..., 1], targets[:, 1])) / 2
        loss.backward()
        grads[dtype] = {n: float(p.grad.abs().max()) for n, p in model.named_parameters() if p.grad is not None}
    exact, single = grads[torch.float64], grads[torch.float32]
    assert all(exact[n] <= 1e-15 for n in hidden), {n: exact[n] for n in hidden}
    visible = {n: v for n, v in exact.items() if n not in hidden}
    assert min(visible.values()) > 1e-6, min(visible.items(), key=lambda kv: kv[1])
    assert all(single[n] < 1e-6 for n in hidden), {n: single[n] for n in hidden}


def assert_same_pretraining(one: Path, two: Path, model_dir: Path) -> None:
    assert_same_run(one, two, model_dir, "pretrain")
    ma, mb = (json.loads((run / "metrics.json").read_text()) for run in (one, two))
    assert ma.keys() == mb.keys() == {"validation", "before"}
    for split in ("validation", "before"):  # the held-out figures before and after pretraining
        assert all(close(ma[split][k], mb[split][k]) for k in ma[split]), (ma[split], mb[split])


def test_pretraining_two_processes_match_one_process(launched, no_dropout_model_dir):
    """`bertfit pretrain` (masked LM + NSP) under torchrun: the same masks (drawn from (seed, epoch,
    sequence), whichever rank draws them), the masked-LM loss normalised by the masked tokens of the
    whole step across the ranks and the NSP loss by its sequences."""
    from bertfit.train.pretrain import PretrainSettings, pretrain
    from bertfit.train.config import TrainConfig

    base, data, _ = launched
    one, two = base / "pretrain" / "one", base / "pretrain" / "two"
    pretrain(TrainConfig(**job_config(no_dropout_model_dir, one, 8, {})), PretrainSettings(**data["pretrain"]))
    assert_same_pretraining(one, two, no_dropout_model_dir)


def pretrain_cli(*args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bertfit", "pretrain", *args], env=env(**extra), capture_output=True,
                          text=True, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def pretrain_nproc(tmp_path_factory, no_dropout_model_dir):
    """`bertfit pretrain --nproc 2` (masked LM alone, packed sequences, whole-word masking): the run's
    folder, its corpus, and its command line for another --output-dir."""
    base = tmp_path_factory.mktemp("dist-pretrain")
    text = corpus(base / "corpus.txt", seed=9)
    args = lambda run: ["--corpus", str(text), "--no-nsp", "--whole-word-masking", "--validation-fraction", "0.1",  # noqa: E731
                        "--model", str(no_dropout_model_dir), "--output-dir", str(run), "--max-length", "32",
                        "--lr", "5e-4", "--log-every", "1", "--save-every", "3", "--epochs", "2", "--threads", "1",
                        "--grad-accum", "2", "--batch-size", "4", "--nproc", "2", "--no-bf16"]  # fp32: compared to 1e-5
    out = pretrain_cli(*args(base / "two"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stderr.count("global batch 16 = 4 per process × 2 processes × 2 accumulation") == 1
    assert out.stdout.count("run directory:") == 1  # rank 0 prints the results
    return base, text, args


def test_pretrain_nproc_matches_one_process(pretrain_nproc, no_dropout_model_dir):
    from bertfit.train.pretrain import PretrainSettings, pretrain
    from bertfit.train.config import TrainConfig

    base, text, _ = pretrain_nproc
    settings = {"corpus": [str(text)], "nsp": False, "whole_word_masking": True, "validation_fraction": 0.1}
    pretrain(TrainConfig(**job_config(no_dropout_model_dir, base / "one", 8, {})), PretrainSettings(**settings))
    assert_same_pretraining(base / "one", base / "two", no_dropout_model_dir)


def test_two_processes_match_one_process_in_bf16(tmp_path, no_dropout_model_dir):
    """The same property under bf16 autocast (--bf16, emulated where the CPU lacks the instructions):
    2 processes × 4 × 2 and 1 process × 8 × 2 take the same steps, to bf16's precision. 2 processes
    sum each matmul over other batch rows, so each bf16-rounded activation may differ by one rounding
    (2^-8 relative); a loss is a mean over them, so its difference is held to 4 roundings of its size.
    The weights: every step's update must agree to within what one rounding of each gradient can move
    AdamW's (≤ lr per step and weight), checked on the weights' mean difference against the distance
    training moved them, which must be 100x larger."""
    csv = write_csv(tmp_path / "data.csv", synthetic_rows(130, seed=3))
    runs = {}
    for nproc, batch in ((2, 4), (1, 8)):
        runs[nproc] = tmp_path / f"nproc{nproc}"
        out = bertfit(cli_args(no_dropout_model_dir, csv, runs[nproc], ["--batch-size", str(batch), "--bf16"])
                      + (["--nproc", "2"] if nproc == 2 else []))
        assert out.returncode == 0, out.stderr[-3000:]
        record = json.loads((runs[nproc] / "precision.json").read_text())
        assert record["bf16"] is True and record["dense_kernel"] == "onednn-bf16"
    a, b = train_records(runs[1]), train_records(runs[2])
    assert [r["step"] for r in a] == [r["step"] for r in b] and len(a) >= 10
    for x, y in zip(a, b):
        assert x["batch_hash"] == y["batch_hash"] and x["lr"] == y["lr"]
        assert abs(x["loss"] - y["loss"]) <= 4 * BF16_EPS * abs(x["loss"]), (x, y)
    wa, wb = last_weights(runs[1]), last_weights(runs[2])
    start = load_file(str(no_dropout_model_dir / "model.safetensors"))
    shared = [k for k in wa if k in start]
    apart = sum(float((wa[k] - wb[k]).abs().mean()) for k in shared) / len(shared)
    moved = sum(float((wa[k] - start[k]).abs().mean()) for k in shared) / len(shared)
    assert apart * 100 <= moved, (apart, moved)


def test_pretrain_kill_then_resume_is_bit_identical(pretrain_nproc):
    base, _, args = pretrain_nproc
    run = base / "killed"
    out = pretrain_cli(*args(run), BERTFIT_KILL_AT_STEP="7")  # every rank: SIGKILL right after step 7's update
    assert out.returncode != 0 and 0 < RunDir(run).checkpoint_steps()[-1] < 7
    assert "bertfit pretrain --resume RUN --nproc 2" in out.stderr  # the launcher's advice names the command
    alone = pretrain_cli("--resume", str(run))
    assert alone.returncode == 3 and "bertfit pretrain --resume RUN --nproc 2" in alone.stderr, alone.stderr[-2000:]
    out = pretrain_cli("--resume", str(run), "--nproc", "2")
    assert out.returncode == 0, out.stderr[-3000:]
    strip = lambda records: [{k: v for k, v in r.items() if k not in TIMING} for r in records]  # noqa: E731
    assert strip(RunDir(run).read_log()) == strip(RunDir(base / "two").read_log())
    a, b = load_file(str(run / "model.safetensors")), load_file(str(base / "two" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b)
    assert json.loads((run / "metrics.json").read_text()) == json.loads((base / "two" / "metrics.json").read_text())


def test_gathered_evaluation_is_complete_and_in_order(launched):
    _, _, ranks = launched
    for r, seen in enumerate(ranks):
        assert seen["rank"] == r and seen["world"] == 2
        for n in (7, 40, 101):
            g = seen["gather"][str(n)]
            assert g["shape"] == [n, 3] and g["max_diff"] <= 1e-5  # equal to one process's outputs
            assert g["order"] == list(range(n))  # complete, in input order, no duplicates
        # rank 0's decision (or its error) reaches every rank; sums are sums
        assert seen["agreement"] == {"result": {"from": 0}, "error": "rank 0 refused", "sum": [3.0, 1.0]}
    for n in (7, 40, 101):  # each example computed by exactly one rank
        assert sorted(ranks[0]["gather"][str(n)]["mine"] + ranks[1]["gather"][str(n)]["mine"]) == list(range(n))


def test_exactly_one_writer(launched):
    base, _, ranks = launched
    for task in [*MAKERS, *PRETRAINING]:
        writes = ranks[0]["writes"][task]
        assert {"create", "append_log", "save_checkpoint", "save_model", "write_report", "progress"} <= set(writes)
        assert ranks[1]["writes"][task] == []  # rank 1 never wrote into the run directory, nor drew a progress bar
        assert (base / task / "two" / "report.md").exists()


# --- faults and exact resume ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir):
    """An uninterrupted 2-process run (dropout on: each rank's RNG matters for the resume)."""
    base = tmp_path_factory.mktemp("dist-resume")
    csv = write_csv(base / "data.csv", synthetic_rows(130, seed=3))
    args = lambda run: cli_args(tiny_model_dir, csv, run, ["--batch-size", "4", "--nproc", "2"])  # noqa: E731
    out = bertfit(args(base / "reference"))
    assert out.returncode == 0, out.stderr[-3000:]
    # printed once, by rank 0: the global batch at the start, the results at the end
    assert out.stderr.count("global batch 16 = 4 per process × 2 processes × 2 accumulation") == 1
    assert out.stdout.count("run directory:") == 1
    return base, args


def test_kill_the_job_then_resume_is_bit_identical(reference):
    base, args = reference
    run = base / "killed"
    out = bertfit(args(run), BERTFIT_KILL_AT_STEP="8")  # every rank: SIGKILL right after step 8's update
    assert out.returncode != 0
    assert 0 < RunDir(run).checkpoint_steps()[-1] < 8
    # another world size: refused, with the reason
    alone = bertfit(["--resume", str(run)])
    assert alone.returncode == 3, alone.stderr[-2000:]
    assert "written by 2 process(es)" in alone.stderr and "global batch" in alone.stderr and "--nproc 2" in alone.stderr
    out = bertfit(["--resume", str(run), "--nproc", "2"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming" in out.stderr
    got, want = RunDir(run).read_log(), RunDir(base / "reference").read_log()
    strip = lambda records: [{k: v for k, v in r.items() if k not in TIMING} for r in records]  # noqa: E731
    assert strip(got) == strip(want)  # every step's loss, lr, batch hash and every evaluation
    for name in ("model.safetensors", f"checkpoints/step-{RunDir(run).checkpoint_steps()[-1]:08d}/model.safetensors"):
        a, b = load_file(str(run / name)), load_file(str(base / "reference" / name))
        assert all(torch.equal(a[k], b[k]) for k in b), name
    assert json.loads((run / "metrics.json").read_text()) == json.loads((base / "reference" / "metrics.json").read_text())


def test_a_killed_rank_ends_the_job_naming_it(reference):
    base, args = reference
    started = time.monotonic()
    out = bertfit(args(base / "rank-killed"), BERTFIT_KILL_AT_STEP="3", BERTFIT_FAULT_RANK="1")
    assert out.returncode == 4, out.stderr[-3000:]
    assert "rank 1" in out.stderr and "SIGKILL" in out.stderr and "--resume" in out.stderr
    assert time.monotonic() - started < 120


def test_a_hung_rank_ends_the_job_naming_it(reference):
    base, args = reference
    out = bertfit(args(base / "rank-hung") + ["--dist-timeout", "12"], BERTFIT_HANG_AT_STEP="3", BERTFIT_FAULT_RANK="1")
    assert out.returncode == 4, out.stderr[-3000:]
    # rank 0 timed out in step 4's first collective and named the rank that never arrived
    assert "rank 0 of 2" in out.stderr and "rank 1 (its last collective was" in out.stderr, out.stderr[-3000:]
    assert "never reached it" in out.stderr


def test_two_nodes_over_a_loopback_rendezvous(tmp_path, tiny_model_dir):
    csv = write_csv(tmp_path / "data.csv", synthetic_rows(60, seed=3))
    endpoint = f"127.0.0.1:{free_port()}"
    train = cli_args(tiny_model_dir, csv, tmp_path / "run", ["--batch-size", "4", "--epochs", "1"])
    nodes = []
    for node in (0, 1):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                   "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "bertfit-test",
                   "--rdzv-conf", f"is_host={'true' if node == 0 else 'false'}", "-m", "bertfit", "train", *train]
        nodes.append(subprocess.Popen(command, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        outs = [p.communicate(timeout=TIMEOUT) for p in nodes]
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in nodes] == [0, 0], [err[-2000:] for _, err in outs]
    start = RunDir(tmp_path / "run").read_log()[0]
    assert start["world_size"] == 2 and start["global_batch"] == 16
    assert (tmp_path / "run" / "metrics.json").exists()
    assert sum(out.count("run directory:") for out, _ in outs) == 1


# --- activation checkpointing ---------------------------------------------------------------------
def test_gradient_checkpointing_recomputes_every_layer_and_gives_the_same_weights(tmp_path, tiny_model_dir, monkeypatch):
    """The flag reaches the encoder: every training step runs each encoder layer once more (the
    recomputation in the backward; evaluation is unchanged), and the weights equal a run without it."""
    from bertfit import model as model_module
    from bertfit.train.config import TrainConfig
    from bertfit.train.finetune import fine_tune

    calls = {"n": 0}
    real_forward = model_module.EncoderLayer.forward

    def counted(self, *args, **kwargs):
        calls["n"] += 1
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(model_module.EncoderLayer, "forward", counted)
    csv = write_csv(tmp_path / "data.csv", synthetic_rows(60, seed=3))
    runs, layer_calls = {}, {}
    for checkpointing in (False, True):  # dropout on: the recomputation must replay the same masks
        config = TrainConfig(train_file=str(csv), model=str(tiny_model_dir), output_dir=str(tmp_path / str(checkpointing)),
                             max_steps=4, batch_size=8, lr=5e-4, threads=1, max_length=32, save_every=4,
                             gradient_checkpointing=checkpointing, bf16=False)
        calls["n"] = 0
        fine_tune(config)
        layer_calls[checkpointing] = calls["n"]
        runs[checkpointing] = last_weights(tmp_path / str(checkpointing))
    layers = json.loads((tiny_model_dir / "config.json").read_text())["num_hidden_layers"]
    assert layer_calls[True] - layer_calls[False] == 4 * layers, layer_calls  # 4 steps of one micro-batch each
    assert max(float((runs[True][k] - runs[False][k]).abs().max()) for k in runs[False]) <= 1e-6


def test_gradient_checkpointing_keeps_only_each_layers_input_for_the_backward(tiny_model_dir):
    """The memory it saves, measured as the bytes of tensors autograd keeps for the backward outside the
    checkpointed layers (a saved-tensors hook sees them all): without checkpointing every layer keeps its
    attention scores, probabilities and feed-forward activations; with it, each layer keeps only its
    input, so what the model holds drops to a small fraction (measured on this batch: 1,472,128 → 152,192
    bytes, 10%; asserted: under a third)."""
    import torch

    from bertfit.tokenizer import WordPieceTokenizer
    from bertfit.weights import load_model

    torch.manual_seed(0)
    model = load_model(tiny_model_dir, ["negative", "positive"]).train()
    tokenizer = WordPieceTokenizer.from_dir(tiny_model_dir)
    texts = [text for text, _ in synthetic_rows(16, seed=4)]
    batch = tokenizer(texts, max_length=32)

    def saved_bytes(checkpointing: bool) -> int:
        model.bert.gradient_checkpointing = checkpointing
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()  # each storage once
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], fast=False)
        logits.float().sum().backward()
        return sum(seen.values())

    without, with_checkpointing = saved_bytes(False), saved_bytes(True)
    assert 0 < with_checkpointing < without / 3, (with_checkpointing, without)


def test_nproc_mistakes_are_one_line_errors(tmp_path):
    out = bertfit(["--nproc", "0", "--output-dir", str(tmp_path / "run")], timeout=60)
    assert out.returncode == 2 and "--nproc must be at least 1" in out.stderr and "Traceback" not in out.stderr
    out = bertfit(["--nproc", "2", "--output-dir", str(tmp_path / "run")], timeout=60, WORLD_SIZE="2", RANK="0")
    assert out.returncode == 2 and "under torchrun leave it out" in out.stderr
    out = bertfit(["--dist-timeout", "0", "--output-dir", str(tmp_path / "run")], timeout=60)
    assert out.returncode == 2 and "--dist-timeout must be a positive number" in out.stderr


def test_without_option_drops_only_the_launchers_flag():
    from bertfit.train.launch import without_option

    assert without_option(["-q", "train", "--nproc", "2", "--batch-size", "4", "--nproc=3"], "--nproc") == \
        ["-q", "train", "--batch-size", "4"]
