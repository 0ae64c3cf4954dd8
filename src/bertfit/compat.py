"""The module names before the layout of issue 34, kept as deprecated aliases.

``import bertfit.job`` (or ``from bertfit.runs import RunDir``) still works: it warns once
(DeprecationWarning) and gives the module at its new place, the same module object, so
monkeypatching either name patches both. Where an old module became a package (``bertfit.train``,
``bertfit.data``, ``bertfit.predict``) that package's ``__getattr__`` forwards the old names.
Installed by ``bertfit/__init__.py``; costs nothing until an old name is imported.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Any, Sequence

MOVED: dict[str, str] = {
    "bertfit.baseline": "bertfit.train.baseline",
    "bertfit.calibration": "bertfit.tasks.calibration",
    "bertfit.checkpoint_checks": "bertfit.train.checks",
    "bertfit.dist": "bertfit.train.dist",
    "bertfit.embedding_grad": "bertfit.train.embedding_grad",
    "bertfit.engines": "bertfit.predict.engines",
    "bertfit.examples": "bertfit.data.examples",
    "bertfit.export": "bertfit.predict.export",
    "bertfit.files": "bertfit.data.files",
    "bertfit.job": "bertfit.train.finetune",
    "bertfit.launch": "bertfit.train.launch",
    "bertfit.metrics": "bertfit.tasks.metrics",
    "bertfit.onnx_runtime": "bertfit.predict.onnx_runtime",
    "bertfit.pretraining": "bertfit.tasks.pretrain",
    "bertfit.pretraining.corpus": "bertfit.tasks.pretrain.corpus",
    "bertfit.pretraining.instances": "bertfit.tasks.pretrain.instances",
    "bertfit.pretraining.job": "bertfit.train.pretrain",
    "bertfit.pretraining.masking": "bertfit.tasks.pretrain.masking",
    "bertfit.pretraining.prepare": "bertfit.tasks.pretrain.prepare",
    "bertfit.pretraining.use": "bertfit.tasks.pretrain.use",
    "bertfit.rows": "bertfit.data.rows",
    "bertfit.runs": "bertfit.train.run_dir",
    "bertfit.seeds": "bertfit.train.seeds",
    "bertfit.splits": "bertfit.data.splits",
    "bertfit.tables": "bertfit.data.tables",
    "bertfit.tasks.entities": "bertfit.tasks.ner.entities",
    "bertfit.tasks.ner_data": "bertfit.tasks.ner.data",
    "bertfit.tasks.ner_encode": "bertfit.tasks.ner.encode",
    "bertfit.tasks.qa_data": "bertfit.tasks.qa.data",
    "bertfit.tasks.qa_decode": "bertfit.tasks.qa.decode",
    "bertfit.tasks.qa_windows": "bertfit.tasks.qa.windows",
    "bertfit.tasks.squad_metric": "bertfit.tasks.qa.squad_metric",
    "bertfit.train_config": "bertfit.train.config",
    "bertfit.train_state": "bertfit.train.state",
    "bertfit.windows": "bertfit.tasks.windows",
}

# Old modules split in two or three: the first new module that has a name serves it.
MERGED: dict[str, tuple[str, ...]] = {"bertfit.checkpoints": ("bertfit.hub", "bertfit.weights", "bertfit.io")}


class _MergedModule(ModuleType):
    def __getattr__(self, name: str) -> Any:
        for new in MERGED[self.__name__]:
            module = importlib.import_module(new)
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")


class _MergedLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(f"{spec.name} was split into {', '.join(MERGED[spec.name])}; the old name will be removed "
                      "in a later release", DeprecationWarning, stacklevel=2)
        return _MergedModule(spec.name)

    def exec_module(self, module: ModuleType) -> None:
        pass


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(f"{spec.name} moved to {self.new}; the old name will be removed in a later release",
                      DeprecationWarning, stacklevel=2)
        module = importlib.import_module(self.new)
        sys.modules[spec.name] = module
        return module

    def exec_module(self, module: ModuleType) -> None:  # already executed under its new name
        pass


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Sequence[str] | None, target: Any = None):
        if fullname in MERGED:
            return importlib.machinery.ModuleSpec(fullname, _MergedLoader())
        new = MOVED.get(fullname)
        if new is None:
            return None
        spec = importlib.util.find_spec(new)
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(new),
                                              is_package=spec is not None and spec.submodule_search_locations is not None)


def install() -> None:
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(_AliasFinder())


def forward(package: str, module: str, name: str) -> Any:
    """``package.name`` for a package that was one module (now ``module``): a submodule of that
    name, else the old module's attribute, with a warning (a package's ``__getattr__`` calls this)."""
    if name.startswith("__"):
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    if importlib.util.find_spec(f"{package}.{name}") is not None:
        return importlib.import_module(f"{package}.{name}")
    old = importlib.import_module(module)
    if not hasattr(old, name):
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    warnings.warn(f"{package}.{name} moved to {module}.{name}", DeprecationWarning, stacklevel=3)
    value = getattr(old, name)
    setattr(sys.modules[package], name, value)  # warned once; later look-ups find it directly
    return value
