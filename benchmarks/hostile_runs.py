"""Hostile inputs of issue 33, run by hostile_inputs.py under its checks (exit status, no traceback, no
file changed outside what a case may write): one writer per run directory, outputs that never land on
a run's own files, no silent wrong answers from the newer tasks, and messages that point the right way.

    PYTHONPATH=src python benchmarks/hostile_inputs.py      # runs these with the rest

Each case says what it must end with (``expect``: exit statuses; 3 is "the run is busy"), what its
message must (not) say, and, where the answer is a file, a ``check`` of what it left.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

from conftest import synthetic_rows  # noqa: E402 - benchmarks/hostile_inputs.py puts tests/ on the path
from hostile_inputs import BERTFIT, ENV, checksums

_background: list[subprocess.Popen] = []


def cleanup() -> None:
    """Stop the trainers the catalogue left running (the one holding a run's lock)."""
    for process in _background:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)


def _hanging_trainer(args: list[str], run: Path) -> subprocess.Popen:
    """A trainer that stops at step 2 and waits there (BERTFIT_HANG_AT_STEP), holding the run's lock."""
    process = subprocess.Popen([*BERTFIT, *args], env={**ENV, "BERTFIT_HANG_AT_STEP": "2"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _background.append(process)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if (run / "checkpoints").is_dir() and any(p.name.startswith("step-") for p in (run / "checkpoints").iterdir()):
            time.sleep(3)  # let it finish the step's bookkeeping and reach the wait
            return process
        time.sleep(0.2)
    raise RuntimeError(f"the trainer of {run} never reached its first checkpoint (exit {process.poll()})")


def _unchanged(path: Path, before: dict[str, str]):
    def check(folder: Path, proc) -> str | None:
        after = checksums(path, set())
        changed = sorted(set(before) ^ set(after) | {k for k in before if k in after and before[k] != after[k]})
        return f"changed in {path.name}: {changed[:5]}" if changed else None
    return check


def conll(n: int, seed: int, end: str = "\n") -> str:
    import random

    rng = random.Random(seed)
    names, words = ["ann", "bob", "cara", "dan"], ["met", "saw", "good", "day", "bad", "film", "with", "and"]
    sentences = []
    for _ in range(n):
        rows = [f"{rng.choice(names)} B-PER"] + [f"{rng.choice(words)} O" for _ in range(rng.randint(2, 6))]
        rows.append(f"{rng.choice(names)} B-PER")
        sentences.append(end.join(rows))
    return (end + end).join(sentences) + end


def qa_jsonl(passages: int, questions: int) -> tuple[str, dict[int, str]]:
    lines, context_of_row = [], {}
    for p in range(passages):
        context = f"good day {p} the film was bad and ann saw bob"
        for q in range(questions):
            row = {"id": f"{p}-{q}", "question": f"who saw {q}", "context": context,
                   "answers": {"text": ["bob"], "answer_start": [context.index("bob")]}}
            lines.append(json.dumps(row))
            context_of_row[len(lines)] = context
    return "\n".join(lines) + "\n", context_of_row


def catalogue(root: Path, model: Path, run: Path) -> list[tuple]:
    cases: list[tuple] = []
    setup = root.parent / "issue33"
    setup.mkdir(exist_ok=True)

    def case(name, argv, files=(), allowed=(), **kw):
        folder = root / name
        folder.mkdir()
        for fname, content in files:
            (folder / fname).parent.mkdir(parents=True, exist_ok=True)
            (folder / fname).write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        build = argv(folder) if callable(argv) else argv
        cases.append((name, folder, build, {folder / a for a in allowed} | {folder / "run"}, kw))

    good = "text,label\n" + "".join(f"{t},{l}\n" for t, l in synthetic_rows(40, seed=5))
    small = ["--model", str(model), "--max-steps", "1", "--max-length", "16", "--threads", "1"]
    train = ["train", *small, "--output-dir", "run", "--train-file"]

    # -- one writer per run directory --------------------------------------------------------------
    (setup / "d.csv").write_text(good)
    busy = setup / "busy-run"
    _hanging_trainer(["train", "--model", str(model), "--train-file", str(setup / "d.csv"), "--output-dir", str(busy),
                      "--max-length", "16", "--threads", "1", "--save-every", "1", "--batch-size", "8"], busy)
    busy_before = checksums(busy, set())
    refused = dict(expect=(3,), stderr_has=("is being written by process",), check=_unchanged(busy, busy_before))
    case("lock: a second trainer into a run in training", [*train, "d.csv", "--output-dir", str(busy)],
         [("d.csv", good)], **refused)
    case("lock: --overwrite of a run in training", [*train, "d.csv", "--output-dir", str(busy), "--overwrite"],
         [("d.csv", good)], **refused)
    case("lock: --resume of a run in training", ["train", "--resume", str(busy)], **refused)
    case("lock: pretrain into a run in training", ["pretrain", *small, "--corpus", "c.txt", "--output-dir", str(busy)],
         [("c.txt", "good day. bad film.\n" * 30)], **refused)
    killed = setup / "killed-run"
    victim = _hanging_trainer(["train", "--model", str(model), "--train-file", str(setup / "d.csv"), "--output-dir",
                               str(killed), "--max-length", "16", "--threads", "1", "--save-every", "1",
                               "--batch-size", "8", "--max-steps", "4"], killed)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    case("lock: a kill -9'd trainer leaves no lock", ["train", "--resume", str(killed)], expect=(0,),
         check=lambda folder, proc: None if (killed / "metrics.json").is_file() else "the resumed run did not finish")

    # -- outputs never land on a run's own files ---------------------------------------------------
    inp = "text,label\ngood day,positive\nbad film,negative\n"
    guard = dict(expect=(2,), stderr_has=("never writes its outputs into a run or model directory",))

    def with_run(folder: Path) -> None:
        shutil.copytree(run, folder / "model")

    for name, where in (("its config.json", "model/config.json"), ("its checkpoints", "model/checkpoints/p.csv"),
                        ("its plots", "model/plots/p.csv"), ("a new folder in it", "model/new/p.csv")):
        case(f"predict --output into {name}",
             lambda f, where=where: (with_run(f), ["predict", "model", "--engine", "pytorch", "--file", "in.csv",
                                                   "--output", where])[1], [("in.csv", inp)], **guard)
    case("evaluate --output into the run", lambda f: (with_run(f), ["evaluate", "model", "--engine", "pytorch", "--file",
                                                                     "in.csv", "--output", "model/metrics.json"])[1],
         [("in.csv", inp)], **guard)
    case("predict --output into a model directory", lambda f: (shutil.copytree(model, f / "base"),
                                                               ["predict", str(run), "--engine", "pytorch", "--file",
                                                                "in.csv", "--output", "base/p.csv"])[1],
         [("in.csv", inp)], **guard)
    case("export --output is the run", lambda f: (with_run(f), ["export", "model", "--output", "model"])[1],
         expect=(2,), stderr_has=("not a previous bertfit export",))
    case("export --output inside the run", lambda f: (with_run(f), ["export", "model", "--output", "model/onnx"])[1],
         **guard)
    case("export --output over a user's config.json", lambda f: (with_run(f), ["export", "model", "--output", "mine"])[1],
         [("mine/config.json", '{"mine": true}')], expect=(2,), stderr_has=("not a previous bertfit export",))

    def user_files_kept(folder: Path, proc) -> str | None:
        for name, content in (("old/plots/mine.png", b"PNG of mine"), ("old/checkpoints/notes.txt", b"my notes")):
            if not (folder / name).is_file() or (folder / name).read_bytes() != content:
                return f"--overwrite deleted or changed {name}"
        return None

    def old_run(folder: Path) -> list[str]:
        shutil.copytree(run, folder / "old")
        (folder / "old" / "plots").mkdir(exist_ok=True)
        (folder / "old" / "plots" / "mine.png").write_bytes(b"PNG of mine")
        (folder / "old" / "checkpoints").mkdir(exist_ok=True)
        (folder / "old" / "checkpoints" / "notes.txt").write_bytes(b"my notes")
        return [*train, "d.csv", "--output-dir", "old", "--overwrite"]

    case("--overwrite keeps user files in plots and checkpoints", old_run, [("d.csv", good)], allowed=("old",),
         expect=(0,), stderr_has=("kept what bertfit did not write",), check=user_files_kept)

    # -- no silent wrong answers -------------------------------------------------------------------
    ner_train = ["train", *small, "--output-dir", "run", "--task", "ner", "--train-file"]
    case("ner: train with --pair-column", [*ner_train, "d.conll", "--pair-column", "x"], [("d.conll", conll(40, 1))],
         expect=(2,), stderr_has=("--pair-column",))
    ner_run = setup / "ner-run"
    (setup / "ner.conll").write_text(conll(40, 2))
    subprocess.run([*BERTFIT, "-q", "train", *small, "--task", "ner", "--train-file", str(setup / "ner.conll"),
                    "--output-dir", str(ner_run)], check=True, capture_output=True, env=ENV)
    case("ner: predict --pair-column", ["predict", str(ner_run), "--engine", "pytorch", "--file", "p.csv",
                                        "--pair-column", "b", "--output", "out.csv"],
         [("p.csv", "text,b\nann met bob,in paris\n")], expect=(2,), stderr_has=("not text pairs",))
    text, context_of_row = qa_jsonl(30, 3)

    def split_by_passage(folder: Path, proc) -> str | None:
        split = json.loads((folder / "run" / "split.json").read_text())
        seen = {name: {context_of_row[row] for row in rows} for name, rows in split.items()}
        shared = seen.get("train", set()) & (seen.get("test", set()) | seen.get("validation", set()))
        return f"{len(shared)} passages in both train and test/validation" if shared else None

    case("qa: one file is split by passage", ["train", *small, "--output-dir", "run", "--task", "qa", "--max-length",
                                               "32", "--doc-stride", "8", "--train-file", "qa.jsonl"],
         [("qa.jsonl", text)], expect=(0,), check=split_by_passage)
    reg = ["train", *small, "--output-dir", "run", "--task", "regression", "--train-file", "d.csv"]
    floats = [f"{t},{i / 7:.3f}" for i, (t, _) in enumerate(synthetic_rows(40, seed=3))]
    for name, bad in (("a 1_000 target", "1_000"), ("an inf target", "inf"), ("Arabic-Indic digits", "\u0661\u0662"),
                      ("an overflowing target", "1e300")):
        case(f"regression: {name}", reg, [("d.csv", "text,score\n" + "\n".join(floats[:5] + [f"odd row,{bad}"]
                                                                                   + floats[5:]) + "\n")],
             expect=(2,), stderr_has=("row 7",), stderr_lacks=("Lower --lr",))
    case("auto: one odd cell among numbers", train[:-1] + ["--train-file", "d.csv"],
         [("d.csv", "text,score\n" + "\n".join(floats[:5] + ["odd row,n/a"] + floats[5:]) + "\n")],
         expect=(2,), stderr_has=("row 7", "--problem-type regression"))
    names = [f"{t},{l}" for t, l in synthetic_rows(40, seed=4)]
    case("auto: one joined cell among names", train[:-1] + ["--train-file", "d.csv"],
         [("d.csv", "text,label\n" + "\n".join(names[:3] + ['odd row,"positive,negative"'] + names[3:]) + "\n")],
         expect=(2,), stderr_has=("row 5", "--problem-type"))
    case("auto: numbers with a fraction joined", train[:-1] + ["--train-file", "d.csv"],
         [("d.csv", "text,score\n" + "".join(f'{t},"{i / 3:.2f},1"\n' for i, (t, _) in
                                             enumerate(synthetic_rows(20, seed=7))))],
         expect=(2,), stderr_has=("several targets per row",))
    multi = "".join(json.dumps({"text": t, "labels": ["a,b", "c"] if i == 3 else [l]}) + "\n"
                    for i, (t, l) in enumerate(synthetic_rows(30, seed=8)))
    case("multi-label: a name holding the separator", ["train", *small, "--output-dir", "run", "--task", "multi-label",
                                                       "--train-file", "d.jsonl"],
         [("d.jsonl", multi)], expect=(2,), stderr_has=("holds the separator",))
    lines = [f"tweet {i} was good. the film was bad." for i in range(40)]
    pre = ["pretrain", *small, "--output-dir", "run", "--corpus", "c.txt"]

    def documents_format(folder: Path, proc) -> str | None:
        corpus = json.loads((folder / "run" / "data.json").read_text())["corpus"]
        formats, documents = set(corpus["formats"].values()), corpus["documents"]
        return None if formats == {"documents"} and documents == 40 else f"read as {formats}, {documents} documents"

    case("corpus: trailing blank lines", pre, [("c.txt", "\n".join(lines) + "\n\n\n")], expect=(0,),
         check=documents_format)
    case("corpus: old-Mac line endings", pre, [("c.txt", "\r".join(lines) + "\r")], expect=(0,), check=documents_format)
    pre_run = setup / "pre-run"
    (setup / "c.txt").write_text("\n".join(lines) + "\n")
    subprocess.run([*BERTFIT, "-q", "pretrain", *small, "--corpus", str(setup / "c.txt"), "--output-dir", str(pre_run)],
                   check=True, capture_output=True, env=ENV)
    case("fill-mask: more masks than fit", ["fill-mask", str(pre_run), "[MASK] " + "good " * 80 + "[MASK]"],
         expect=(2,), stderr_has=("fit in this model's",))
    case("nsp: an empty sentence A", ["nsp", str(pre_run), "", "good day"], expect=(2,), stderr_has=("is empty",))
    case("nsp: a blank sentence B", ["nsp", str(pre_run), "good day", "   "], expect=(2,), stderr_has=("is empty",))
    case("nsp: sentences longer than the model", ["nsp", str(pre_run), "good " * 80, "bad day"], expect=(0,),
         stderr_has=("tokens are cut",))

    # -- messages that point the right way ---------------------------------------------------------
    deep = "[" * 100_000 + "]" * 100_000
    case("ner: deeply nested JSON lines", [*ner_train, "d.jsonl"], [("d.jsonl", '{"tokens": ' + deep + "}\n")],
         expect=(2,), stderr_has=("nested too deeply",))
    qa_train = ["train", *small, "--output-dir", "run", "--task", "qa", "--train-file"]
    case("qa: deeply nested SQuAD JSON", [*qa_train, "d.json"], [("d.json", '{"data": ' + deep + "}")],
         expect=(2,), stderr_has=("nested too deeply",))
    case("qa: deeply nested JSON lines", [*qa_train, "d.jsonl"], [("d.jsonl", '{"question": "q", "context": ' + deep + "}\n")],
         expect=(2,), stderr_has=("nested too deeply",))
    case("label map: deeply nested JSON", [*train, "d.csv", "--label-map", "{" + '"a":{' * 5000 + "}" * 5001],
         [("d.csv", good)], expect=(2,), stderr_has=("nested too deeply",))
    case("pretrain: unknown --corpus-column", ["pretrain", *small, "--output-dir", "run", "--corpus", "c.csv",
                                                "--corpus-column", "nope"], [("c.csv", "id,body\n1,good day\n")],
         expect=(2,), stderr_lacks=("--text-column",))
    case("train --resume of a folder that is not a run", ["train", "--resume", "notes"], [("notes/a.txt", "mine")],
         expect=(2,), stderr_has=("--resume",), stderr_lacks=("--output-dir",))
    import random

    rng = random.Random(0)
    noise = bytes(rng.randrange(1, 256) for _ in range(4000))  # random bytes, none of them NUL
    case("a binary file without NUL bytes", [*train, "d.csv"], [("d.csv", noise)], expect=(2,),
         stderr_has=("binary",), stderr_lacks=("carriage return",))
    case("ner: CoNLL with old-Mac line endings", [*ner_train, "d.conll"], [("d.conll", conll(40, 3, end="\r"))],
         expect=(0,))
    return cases
