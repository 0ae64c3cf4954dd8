"""The package's shape, checked: no import cycles, a CLI that answers --help without torch, and
short modules (model.py, which reads top to bottom by design, is the one exception)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import bertfit

PACKAGE = Path(bertfit.__file__).parent
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Every bertfit module ``path`` imports, at any depth of the file (lazy imports count too)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import loops of ``graph`` (node → the nodes it imports), each as a path back to its start."""
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return cycles


def test_no_import_cycles():
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    cycles = _cycles({name: _imports(path, set(files)) for name, path in files.items()})
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_help_does_not_import_torch():
    code = ("import sys\nfrom bertfit.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "for command in ('train', 'predict', 'evaluate', 'serve', 'export', 'tune'):\n"
            "    try:\n        main([command, '--help'])\n    except SystemExit:\n        pass\n"
            "print('TORCH' if 'torch' in sys.modules or 'optuna' in sys.modules else 'NO-TORCH')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("NO-TORCH"), out[-2000:]


def test_modules_are_short():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if p.name != "model.py" and (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by what they own): {long}"


# --- the layout (issue 34): folders that own one thing each, and what may import what ---------------

def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _imports(path, set(files)) for name, path in files.items()}


def _room(module: str) -> str:
    """A module's folder-level room: the sub-package it lives in (bertfit.train, bertfit.tasks, ...),
    or the module itself for the top level's shared core (bertfit.model, bertfit.hub, ...)."""
    parts = module.split(".")
    return ".".join(parts[:2])


def test_no_folder_level_import_loops():
    """Rooms (a sub-package, or one top-level module) import each other in one direction only:
    a loop between two folders means neither can be read, moved or tested without the other."""
    rooms: dict[str, set[str]] = {}
    for name, targets in _graph().items():
        rooms.setdefault(_room(name), set()).update(_room(t) for t in targets if _room(t) != _room(name))
    # the package's __init__ (bertfit.load, the alias finder) sits on top of every room
    loops = _cycles({room: targets - {"bertfit"} for room, targets in rooms.items() if room != "bertfit"})
    assert not loops, "folder-level import loops: " + "; ".join(" -> ".join(loop) for loop in loops)


def test_no_module_imports_another_modules_private_names():
    """`from bertfit.x import _name` binds two modules to one's internals: make the name public, or
    move the code to the module that owns it."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    found = []
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bertfit") and node.module != name:
                found += [f"{name} imports {node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, found


def test_the_top_level_is_the_shared_core():
    """Training, prediction, data, tasks, the report, the server and the CLI live in their folders;
    the top level keeps what every one of them shares."""
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert top == ["artifact", "batching", "compat", "config", "cpu_linear", "errors", "heads", "hub", "inference",
                   "io", "model", "precision", "tokenizer", "tokenizer_files", "weights"], top
    folders = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert folders == ["cli", "data", "predict", "report", "serve", "tasks", "tracking", "train", "tune"], folders


def test_loading_a_model_for_prediction_never_imports_training():
    code = ("import sys\nimport bertfit.predict.predictor, bertfit.predict.export, bertfit.serve.host\n"
            "print(sorted(m for m in sys.modules if m.startswith('bertfit.train.') and m != 'bertfit.train.config'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_the_task_table_is_the_only_list_of_tasks():
    """No module but tasks/table.py writes down two or more task names together (a list, tuple, set
    or dict of them): each such list is derived from the table, so a new task is one row."""
    from bertfit.tasks.table import TABLE

    names = {row.name for row in TABLE} | {row.problem_type for row in TABLE}
    # transformers' own three sequence problem types (config.py): a fact of its config.json format
    allowed = {("config.py", "SEQUENCE_PROBLEM_TYPES")}
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).as_posix() == "tasks/table.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        exempt = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Assign) and any(
            isinstance(t, ast.Name) and (path.name, t.id) in allowed for t in n.targets)}
        for node in ast.walk(tree):
            if id(node) in exempt:
                continue
            items = node.elts if isinstance(node, (ast.List, ast.Tuple, ast.Set)) else \
                node.keys if isinstance(node, ast.Dict) else []
            listed = {i.value for i in items if isinstance(i, ast.Constant) and i.value in names}
            if len(listed) >= 2:
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {sorted(listed)}")
    assert not found, found


def test_models_are_called_only_through_the_signature_their_head_declares():
    """No module calls a head with the encoder's three tensors spelled out, or asks a head what it
    `needs`: training, inference, both engines and the export go through heads.run_head / head_inputs."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for pattern in ("batch.input_ids, batch.attention_mask, batch.token_type_ids", '"needs"', ".needs "):
            if pattern in text:
                found.append(f"{path.relative_to(PACKAGE)}: {pattern}")
    assert not found, found


def test_old_names_still_work_with_a_deprecation_warning():
    """Code written against the flat layout and the classifier-only names keeps running (a warning,
    not a break): old module paths, names of modules that became packages, and the renamed API."""
    code = """
import warnings
warnings.simplefilter("error")  # every old name must warn, so each is checked by the raise
import bertfit
from bertfit.predict.predictor import Predictor
from bertfit.train.finetune import fine_tune
from bertfit.weights import load_model, save_model
from bertfit.train.loop import Trainer
checks = {
    "import bertfit.job": lambda: __import__("bertfit.job").job.fine_tune is fine_tune,
    "from bertfit.predict import TextClassifier": lambda: __import__("bertfit.predict", fromlist=["TextClassifier"]).TextClassifier is Predictor,
    "from bertfit.train import Trainer": lambda: __import__("bertfit.train", fromlist=["Trainer"]).Trainer is Trainer,
    "bertfit.checkpoints.load_classifier": lambda: __import__("bertfit.checkpoints", fromlist=["x"]).load_model is load_model,
    "bertfit.pretraining.job": lambda: __import__("bertfit.pretraining.job", fromlist=["pretrain"]).pretrain is not None,
    "bertfit.runs.RunDir": lambda: __import__("bertfit.runs", fromlist=["RunDir"]).RunDir is not None,
}
for name, check in checks.items():
    try:
        check()
        print(name, "NO WARNING")
    except DeprecationWarning:
        pass
warnings.simplefilter("ignore")
import bertfit.job, bertfit.checkpoints, bertfit.runs
from bertfit.predict import TextClassifier
from bertfit.train import Trainer as T
from bertfit.weights import load_classifier
assert bertfit.job.fine_tune is fine_tune and TextClassifier is Predictor and T is Trainer
assert bertfit.checkpoints.save_model is save_model and load_classifier is not load_model
print("OK")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "OK", out.stdout + out.stderr[-2000:]
