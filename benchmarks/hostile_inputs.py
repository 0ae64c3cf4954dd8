"""A catalogue of hostile inputs through `bertfit train` and `bertfit predict`, each in a subprocess (issue 18).

Each case must: exit 0 or 2; print no traceback; modify no file outside its run directory or its
declared output (SHA-256 of every file in the case's folder before and after); and for `predict
--file`, write one output row per input row. Uses a tiny random BERT built here, so it runs in about
a minute on 2 cores:

    PYTHONPATH=src python benchmarks/hostile_inputs.py

`serve` hostile inputs belong to the server's owner: add (name, argv builder) pairs to SERVE_CASES,
or a function to EXTRA_CATALOGUES, and they run under the same checks.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import build_tiny_model_dir, synthetic_rows, write_csv  # noqa: E402

BERTFIT = [sys.executable, "-m", "bertfit"]
# Cases run in folders of their own: make a relative PYTHONPATH (PYTHONPATH=src) absolute first.
ENV = {**os.environ, "PYTHONUNBUFFERED": "1",
       "PYTHONPATH": os.pathsep.join(os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)}
SERVE_CASES: list = []  # for the server's owner: (name, callable(folder, run) -> argv)
EXTRA_CATALOGUES: list = []
CLEANUPS: list = []  # callables run once every case has run


def checksums(folder: Path, skip: set[Path]) -> dict[str, str]:
    out = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if Path(root, d) not in skip]
        for name in files:
            path = Path(root, name)
            if path not in skip:
                out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def run_case(name, folder: Path, argv, allowed: set[Path], stdin: bytes | None = None, rows_in: int | None = None,
             output: Path | None = None, expect: tuple[int, ...] = (0, 2), stderr_has: tuple[str, ...] = (),
             stderr_lacks: tuple[str, ...] = (), check=None) -> str | None:
    """One case: ``expect`` the exit statuses it may end with; ``stderr_has``/``stderr_lacks`` what its
    message must (not) say; ``check(folder, proc)``: a problem found in what it left, or None."""
    before = checksums(folder, allowed)
    proc = subprocess.run([*BERTFIT, *argv], capture_output=True, input=stdin, timeout=300, cwd=folder,
                          env=ENV)
    after = checksums(folder, allowed)
    err = proc.stderr.decode("utf-8", "replace")
    problems = []
    if proc.returncode not in expect:
        problems.append(f"exit {proc.returncode} (expected {'/'.join(map(str, expect))})")
    if "Traceback" in err:
        problems.append("traceback")
    problems += [f"stderr lacks {text!r}" for text in stderr_has if text not in err]
    problems += [f"stderr says {text!r}" for text in stderr_lacks if text in err]
    if check is not None and proc.returncode in expect:
        try:
            found = check(folder, proc)
        except Exception as exc:  # noqa: BLE001 - a check that cannot read what the case left is a failure
            found = f"check failed: {type(exc).__name__}: {exc}"
        if found:
            problems.append(found)
    changed = sorted(set(before) ^ set(after) | {k for k in before if k in after and before[k] != after[k]})
    if changed:
        problems.append(f"modified outside the run: {changed[:5]}")
    if rows_in is not None and proc.returncode == 0 and output is not None:
        with open(output, newline="", encoding="utf-8") as f:
            rows_out = sum(1 for _ in csv.reader(f)) - 1
        if rows_out != rows_in:
            problems.append(f"rows in {rows_in} != rows out {rows_out}")
    last = (err.strip().splitlines() or [""])[-1][:160]
    print(f"{'FAIL' if problems else 'ok  '} {name:<42} exit {proc.returncode}  {'; '.join(problems) or last}",
          flush=True)
    return f"{name}: {'; '.join(problems)}" if problems else None


def catalogue(root: Path, model: Path, run: Path) -> list[tuple]:
    cases = []

    def case(name, argv, files=(), allowed=(), **kw):
        folder = root / name
        folder.mkdir()
        for fname, content in files:
            (folder / fname).write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        build = argv(folder) if callable(argv) else argv
        cases.append((name, folder, build, {folder / a for a in allowed} | {folder / "run"}, kw))

    good = "text,label\n" + "".join(f"{t},{l}\n" for t, l in synthetic_rows(40, seed=5))
    train = ["train", "--model", str(model), "--output-dir", "run", "--max-steps", "1", "--max-length", "16",
             "--train-file"]
    for flag, value in [("--lr", "nan"), ("--lr", "inf"), ("--epochs", "1e308"), ("--weight-decay", "-0.0"),
                        ("--eval-batch-tokens", "0"), ("--eval-batch-tokens", "-5"), ("--seed", "-1"),
                        ("--threads", "99999999999"), ("--split", "nan nan nan"), ("--class-weights", "nan inf"),
                        ("--max-length", "100000"), ("--batch-size", "1e3")]:
        case(f"train {flag} {value}", [*train, "d.csv", flag, *value.split()], [("d.csv", good)])
    case("train --overwrite on a home folder", lambda f: [*train, "d.csv", "--output-dir", str(f), "--overwrite"],
         [("d.csv", good), ("notes.txt", "mine"), ("photo.jpg", b"\xff\xd8\xff")])
    case("train --overwrite on its data folder", [*train, "data/d.csv", "--output-dir", "data", "--overwrite"])
    (root / "train --overwrite on its data folder" / "data").mkdir()
    (root / "train --overwrite on its data folder" / "data" / "d.csv").write_text(good)
    case("train --resume on a non-run folder", [*train, "d.csv", "--resume", "."], [("d.csv", good)])
    case("train --output-dir is a file", [*train, "d.csv", "--output-dir", "d.csv"], [("d.csv", good)])
    case("train --output-dir under a file", [*train, "d.csv", "--output-dir", "d.csv/run"], [("d.csv", good)])
    case("train --train-file is a directory", [*train, "."])
    case("train --model is a file", ["train", "--train-file", "d.csv", "--model", "d.csv", "--output-dir", "run"],
         [("d.csv", good)])
    case("train --config is a directory", ["train", "--config", "."])
    case("train unclosed quote", [*train, "d.csv", "--skip-bad-rows"],
         [("d.csv", good.replace("\n", '\n"never closed,positive\n', 1))])
    case("train NUL in the first block", [*train, "d.csv", "--skip-bad-rows"],
         [("d.csv", good.replace("\n", "\nbro\x00ken,negative\n", 1))])
    case("train a 1 MB header line", [*train, "d.csv"], [("d.csv", "x" * 1_000_000 + "\nz\n")])
    case("train headerless without --no-header", [*train, "d.tsv"],
         [("d.tsv", "".join(f"{i}\t{l}\t{t}\n" for i, (t, l) in enumerate(synthetic_rows(30, 6))))])
    case("train headerless with --no-header", [*train, "d.tsv", "--no-header", "--text-column", "3",
                                                "--label-column", "2"],
         [("d.tsv", "".join(f"{i}\t{l}\t{t}\n" for i, (t, l) in enumerate(synthetic_rows(30, 6))))])
    case("train four rows: empty splits", [*train, "d.csv"],
         [("d.csv", "text,label\ngood day,positive\nbad day,negative\ngreat film,positive\nawful film,negative\n")])
    case("train undecodable argv", [*train, b"d\xff.csv".decode("utf-8", "surrogateescape")], [("d.csv", good)])

    inp = "id,text,label\n1,good day,positive\n2,=HYPERLINK(\"http://x\"),-2+3\n3,@SUM(A1),negative\n4,\"a\nb\",+1\n"
    predict = ["predict", str(run), "--engine", "pytorch"]
    case("predict --output is the input", [*predict, "--file", "in.csv", "--output", "in.csv"], [("in.csv", inp)])
    case("predict --output is a link to the input", lambda f: (os.symlink("in.csv", f / "l.csv"),
                                                               [*predict, "--file", "in.csv", "--output", "l.csv"])[1],
         [("in.csv", inp)])
    case("predict --output is a directory", [*predict, "--file", "in.csv", "--output", "."], [("in.csv", inp)])
    case("predict --file with formulas and gold label", [*predict, "--file", "in.csv", "--output", "out.csv"],
         [("in.csv", inp)], allowed=("out.csv",), rows_in=4, output="out.csv")
    case("predict --batch-tokens 0", [*predict, "--batch-tokens", "0", "x"])
    case("predict undecodable stdin", predict, stdin=b"good\ncaf\xe9\n")
    case("predict undecodable argv", [*predict, b"caf\xe9".decode("utf-8", "surrogateescape")])
    case("predict run is a file", ["predict", "in.csv", "x"], [("in.csv", inp)])
    case("predict --file headerless", [*predict, "--file", "in.tsv", "--no-header", "--text-column", "2",
                                        "--output", "out.tsv"],
         [("in.tsv", "1\tgood day\n2\tbad day\t=extra\n")], allowed=("out.tsv",), rows_in=2, output="out.tsv")
    for extra in EXTRA_CATALOGUES:
        cases += extra(root, model, run)
    for name, build in SERVE_CASES:
        folder = root / name
        folder.mkdir()
        cases.append((name, folder, build(folder, run), {folder / "run"}, {}))
    return cases


def main() -> int:
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="bertfit-hostile-"))
    try:
        model = build_tiny_model_dir(root / "model")
        data = write_csv(root / "train.csv", synthetic_rows(60, seed=1))
        run = root / "the-run"
        subprocess.run([*BERTFIT, "-q", "train", "--train-file", str(data), "--model", str(model), "--output-dir", str(run),
                        "--max-steps", "2", "--max-length", "16"], check=True, capture_output=True, env=ENV)
        cases = catalogue(root / "cases", model, run) if (root / "cases").mkdir() is None else []
        with ThreadPoolExecutor(max_workers=3) as pool:
            results = list(pool.map(lambda c: run_case(c[0], c[1], c[2], c[3], c[4].get("stdin"),
                                                       c[4].get("rows_in"),
                                                       c[1] / c[4]["output"] if "output" in c[4] else None,
                                                       **{k: v for k, v in c[4].items()
                                                          if k in ("expect", "stderr_has", "stderr_lacks", "check")}),
                                    cases))
    finally:
        for cleanup in CLEANUPS:  # background processes a catalogue started (issue 33: a trainer holding a run)
            cleanup()
        shutil.rmtree(root, ignore_errors=True)
    failures = [r for r in results if r]
    print(f"\n{len(cases)} hostile inputs, {len(cases) - len(failures)} passed, {len(failures)} failed "
          f"in {time.perf_counter() - started:.0f} s")
    for failure in failures:
        print("  FAIL", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import hostile_runs  # issue 33: run directories, outputs, silent answers, messages

    EXTRA_CATALOGUES.append(hostile_runs.catalogue)
    CLEANUPS.append(hostile_runs.cleanup)
    raise SystemExit(main())
