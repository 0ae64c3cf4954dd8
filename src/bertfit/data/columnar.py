"""Columnar data in: Parquet files, Arrow IPC files (Feather v2, and the stream files `datasets` writes),
`datasets` ``save_to_disk`` directories (a Dataset, or a DatasetDict whose split folders are Datasets),
and in the Python API a pandas ``DataFrame`` or a ``datasets.Dataset``.

Everything is read through pyarrow (the ``data`` extra: ``pip install 'bertfit[data]'``; `datasets`
itself is never needed to read a directory it saved), one record batch at a time, and each row comes
out as a mapping of its columns' Python values: the shape a JSON line has (strings, numbers, lists,
objects), so each task's reader validates a Parquet row exactly as it validates a JSON line, with
the same messages and the same row accounting. A column the dataset's features declare a
``ClassLabel`` (``label``, or NER's ``ner_tags`` list of class ids) comes out as the class *names*
(``-1``, `datasets`' "no label", as missing), so a model trained from a Hugging Face dataset names
its labels as the dataset does.

Rows are numbered by their 0-based position in the table, as ``df.iloc[N]``, ``dataset[N]`` and
``table.slice(N, 1)`` find them (the Python lists' convention; files of text number lines from 1).

Which reader a path goes to: its suffix (``.parquet``/``.pq``; ``.arrow``/``.feather``/``.ipc``), a
directory holding ``state.json`` or ``dataset_dict.json``, or the file's first bytes (``PAR1``,
``ARROW1``, an IPC stream's marker). ``FORMAT:PATH`` forces one (:func:`split_format`), for a file
whose name says nothing, e.g. ``parquet:export.bin``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bertfit.errors import DataError

#: Formats a path may be forced to with a ``FORMAT:PATH`` prefix, and the reader family each belongs to.
#: The table readers (csv, tsv, jsonl) and the task-specific ones (NER's annotation tools, CoNLL, SQuAD)
#: read the prefix too; a reader that cannot read a forced format says so.
FORCED_FORMATS: tuple[str, ...] = ("csv", "tsv", "jsonl", "parquet", "arrow", "feather", "datasets",
                                   "conll", "label-studio", "doccano", "squad")
COLUMNAR_FORMATS: tuple[str, ...] = ("parquet", "arrow", "feather", "datasets")
SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow", ".feather": "arrow", ".ipc": "arrow"}
#: The folder names a DatasetDict's splits may have, per split of a run (the first found is used).
SPLIT_NAMES: dict[str, tuple[str, ...]] = {"train": ("train",), "validation": ("validation", "valid", "dev", "val"),
                                            "test": ("test",)}
_BATCH_ROWS = 4096  # rows converted to Python at a time: a batch's objects, not the table's, are in memory
_STRING_TYPES = ("string", "large_string", "string_view", "null")
INSTALL_HINT = "pip install 'bertfit[data]' (or pip install pyarrow)"


def split_format(source: Any) -> tuple[Any, str | None]:
    """(the path without its ``FORMAT:`` prefix, the forced format or None). A path that exists as
    written is never split (a file may be named ``csv:notes``); objects pass through unchanged."""
    if not isinstance(source, (str, os.PathLike)):
        return source, None
    text = os.fspath(source)
    head, sep, rest = text.partition(":")
    if sep and head.lower() in FORCED_FORMATS and rest and not os.path.exists(text):
        return rest, head.lower()
    return text, None


def is_columnar(source: Any) -> bool:
    """Whether ``source`` (a path, maybe ``FORMAT:``-prefixed, or an object) is read by this module."""
    if _object_kind(source) is not None:
        return True
    path, forced = split_format(source)
    if forced is not None:
        return forced in COLUMNAR_FORMATS
    return _detect(str(path)) is not None


@dataclass
class ColumnarSource:
    """A table to read row by row: its columns and types, the ClassLabel names of its columns, and its batches."""

    name: str  # the path, or "<DataFrame>" / "<Dataset>" for an object
    format: str  # parquet, arrow, datasets, dataframe, dataset
    schema: Any  # pyarrow.Schema
    num_rows: int
    batches: Callable[[Sequence[str] | None], Iterator[Any]] = field(repr=False)
    class_names: dict[str, list[str]] = field(default_factory=dict)  # column -> ClassLabel names

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)

    def column_type(self, column: str) -> str:
        return str(self.schema.field(column).type)

    def check_text(self, column: str, what: str, flag: str | None = None) -> None:
        """A DataError when ``column`` is not a column of strings (e.g. a text column of numbers)."""
        kind = self.column_type(column)
        if _base_type(kind) in _STRING_TYPES:
            return
        fix = f"name the right column with {flag}" if flag else "convert the column to strings"
        raise DataError(f"{self.name}: column {column!r} holds {kind} values, but the {what} must be text "
                        f"(a string column); {fix}")

    def check_list_of_text(self, column: str, what: str) -> None:
        """A DataError when ``column`` is not a column of lists of strings (NER's tokens)."""
        kind = self.column_type(column)
        if _base_type(kind) in ("list", "large_list", "list_view", "fixed_size_list", "null") and \
                (kind == "null" or _base_type(_element_type(kind)) in _STRING_TYPES):
            return
        raise DataError(f"{self.name}: column {column!r} holds {kind} values, but the {what} must be a list of "
                        "strings per row")

    def records(self, columns: Sequence[str] | None = None) -> Iterator[tuple[int, dict[str, Any], None]]:
        """(row, {column: value}, None) for every row, in order: the JSON-lines reader's record shape
        (the None: no row of a readable table is malformed as a record; its values are checked later)."""
        row = 0
        try:
            for batch in self.batches(columns):
                names = batch.schema.names
                pydicts = batch.to_pylist()
                for obj in pydicts:
                    for name in names:
                        labels = self.class_names.get(name)
                        if labels is not None:
                            obj[name] = _class_names(obj[name], labels)
                    yield row, obj, None
                    row += 1
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - pyarrow's errors on a damaged file become a DataError
            raise DataError(f"{self.name}: cannot read row {row} or the rows after it ({type(exc).__name__}: "
                            f"{_short(exc)}); the {self.format} data is damaged (truncated or corrupt?): write it "
                            "again") from None


def open_source(source: Any) -> ColumnarSource | None:
    """The columnar table ``source`` names (a path, maybe ``FORMAT:``-prefixed, a DataFrame or a Dataset),
    or None when it is not columnar (a CSV, TSV, JSON-lines or task-specific file)."""
    kind = _object_kind(source)
    if kind == "dataframe":
        return _from_dataframe(source)
    if kind == "dataset":
        return _from_dataset(source)
    if kind == "datasetdict":
        raise DataError(f"a DatasetDict holds several splits ({', '.join(map(str, source))}); pass one of them, "
                        "e.g. data['train'], or its saved directory to `bertfit train --train-file` (its splits "
                        "become train, validation and test)")
    path, forced = split_format(source)
    path = str(path)
    fmt = forced if forced is not None else _detect(path)
    if fmt not in COLUMNAR_FORMATS:
        return None
    _pyarrow()
    if not os.path.exists(path):
        raise DataError(f"no such file or directory: {path}")
    if fmt == "datasets" or os.path.isdir(path):
        return _from_datasets_dir(path)
    if fmt == "parquet":
        return _from_parquet(path)
    return _from_ipc(path)


def dataset_dict_splits(source: Any) -> dict[str, str] | None:
    """A saved DatasetDict directory's splits as the run's train/validation/test paths (the split folders
    found by :data:`SPLIT_NAMES`), or None when ``source`` is not one. No train split is a DataError."""
    path, forced = split_format(source)
    if not isinstance(path, str) or forced not in (None, "datasets"):
        return None
    listed = Path(path) / "dataset_dict.json"
    if not listed.is_file():
        return None
    try:
        splits = json.loads(listed.read_text(encoding="utf-8")).get("splits")
    except (ValueError, OSError, AttributeError) as exc:
        raise DataError(f"{listed}: cannot read the DatasetDict's list of splits ({_short(exc)})") from None
    if not isinstance(splits, list) or not all(isinstance(s, str) for s in splits):
        raise DataError(f"{listed}: expected {{\"splits\": [\"train\", ...]}}")
    found: dict[str, str] = {}
    for split, names in SPLIT_NAMES.items():
        name = next((n for n in names if n in splits), None)
        if name is not None:
            found[split] = str(Path(path) / name)
    if "train" not in found:
        raise DataError(f"{path}: this DatasetDict has no 'train' split (splits: {', '.join(splits) or 'none'}); "
                        f"pass a split's folder as --train-file, e.g. {Path(path) / splits[0]}" if splits else
                        f"{path}: this DatasetDict lists no splits")
    return found


# --------------------------------------------------------------------------------------------
# Internals: which source, and opening each kind
# --------------------------------------------------------------------------------------------


def _object_kind(source: Any) -> str | None:
    module = type(source).__module__ or ""
    name = type(source).__name__
    if module.startswith("pandas") and name == "DataFrame":
        return "dataframe"
    if module.startswith("datasets"):
        if name in ("Dataset", "IterableDataset"):
            return "dataset"
        if name in ("DatasetDict", "IterableDatasetDict"):
            return "datasetdict"
    return None


def _detect(path: str) -> str | None:
    p = Path(path)
    if p.is_dir():
        return "datasets" if (p / "state.json").is_file() or (p / "dataset_dict.json").is_file() else None
    suffix = p.suffix.lower()
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]
    try:
        with open(p, "rb") as f:
            head = f.read(8)
    except OSError:
        return None  # the text readers give the missing-file message
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"ARROW1") or head.startswith(b"\xff\xff\xff\xff"):
        return "arrow"
    return None


def _pyarrow() -> Any:
    try:
        import pyarrow
    except ImportError:
        raise DataError(f"reading Parquet, Arrow and `datasets` data needs pyarrow: {INSTALL_HINT}") from None
    return pyarrow


def _from_parquet(path: str) -> ColumnarSource:
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(path, memory_map=True)
    except Exception as exc:  # noqa: BLE001 - ArrowInvalid, OSError: a damaged or truncated file
        raise DataError(f"{path} is not a readable Parquet file ({_short(exc)}); is it truncated or damaged? "
                        "Write it again") from None
    schema = handle.schema_arrow

    def batches(columns: Sequence[str] | None) -> Iterator[Any]:
        return handle.iter_batches(batch_size=_BATCH_ROWS, columns=list(columns) if columns is not None else None)

    return ColumnarSource(path, "parquet", schema, handle.metadata.num_rows, batches, _features(schema))


def _open_ipc(path: str) -> tuple[Any, str]:
    """An IPC reader of ``path``: the file format (Feather v2), else the stream format (`datasets`' cache files)."""
    import pyarrow as pa

    source = pa.memory_map(path)
    try:
        return pa.ipc.open_file(source), "file"
    except Exception:  # noqa: BLE001 - not the file format: try the stream format
        source.seek(0)
    try:
        return pa.ipc.open_stream(source), "stream"
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path} is not a readable Arrow IPC / Feather file ({_short(exc)}); is it truncated or "
                        "damaged? Write it again") from None


def _from_ipc(path: str) -> ColumnarSource:
    reader, kind = _open_ipc(path)
    schema = reader.schema
    if kind == "file":
        num_rows = sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
    else:
        num_rows = -1  # a stream's length is known once read

    def batches(columns: Sequence[str] | None) -> Iterator[Any]:
        return _ipc_batches([path], columns)

    return ColumnarSource(path, "arrow", schema, num_rows, batches, _features(schema))


def _ipc_batches(paths: Sequence[str], columns: Sequence[str] | None) -> Iterator[Any]:
    for path in paths:
        reader, kind = _open_ipc(path)
        chunks = (reader.get_batch(i) for i in range(reader.num_record_batches)) if kind == "file" else reader
        for batch in chunks:
            if columns is not None:
                batch = batch.select(list(columns))
            for start in range(0, batch.num_rows, _BATCH_ROWS):
                yield batch.slice(start, _BATCH_ROWS)


def _from_datasets_dir(path: str) -> ColumnarSource:
    root = Path(path)
    if (root / "dataset_dict.json").is_file() and not (root / "state.json").is_file():
        splits = dataset_dict_splits(path) or {}
        listed = ", ".join(str(p) for p in splits.values())
        raise DataError(f"{path} is a saved DatasetDict (several splits); pass one split's folder ({listed}), or "
                        "pass the directory as `bertfit train --train-file`, which reads its splits as "
                        "train, validation and test")
    state_file = root / "state.json"
    if not state_file.is_file():
        raise DataError(f"{path} is a directory without state.json; a `datasets` save_to_disk directory holds "
                        "state.json, dataset_info.json and data-*.arrow files")
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        files = [str(root / entry["filename"]) for entry in state["_data_files"]]
    except (ValueError, OSError, KeyError, TypeError) as exc:
        raise DataError(f"{state_file}: not a `datasets` state file ({_short(exc)}); save the dataset again "
                        "with Dataset.save_to_disk") from None
    if not files:
        raise DataError(f"{state_file} lists no data files")
    for name in files:
        if not Path(name).is_file():
            raise DataError(f"{path}: the data file {Path(name).name} that state.json lists is missing")
    schema = _open_ipc(files[0])[0].schema
    features = _features(schema)
    info = root / "dataset_info.json"
    if not features and info.is_file():
        try:
            features = _class_labels(json.loads(info.read_text(encoding="utf-8")).get("features") or {})
        except (ValueError, OSError, AttributeError):
            features = {}

    def batches(columns: Sequence[str] | None) -> Iterator[Any]:
        return _ipc_batches(files, columns)

    return ColumnarSource(path, "datasets", schema, -1, batches, features)


def _from_dataframe(frame: Any) -> ColumnarSource:
    pa = _pyarrow()
    try:
        table = pa.Table.from_pandas(frame, preserve_index=False)
    except Exception as exc:  # noqa: BLE001 - mixed-type object columns
        raise DataError(f"the DataFrame cannot be read as a table ({_short(exc)}); give each column one type "
                        "(e.g. df[column].astype(str))") from None
    names = [str(c) for c in table.column_names]
    if len(set(names)) != len(names):
        raise DataError(f"the DataFrame names a column more than once ({', '.join(names)}); give every column a "
                        "unique name")
    table = table.rename_columns(names)
    return _from_table(table, "<DataFrame>", "dataframe", {})


def _from_dataset(dataset: Any) -> ColumnarSource:
    _pyarrow()
    if type(dataset).__name__ == "IterableDataset":
        raise DataError("an IterableDataset cannot be read as a table; pass a Dataset (e.g. "
                        "Dataset.from_generator) or save it with save_to_disk")
    features = _class_labels(dataset.features)
    arrow = dataset.with_format("arrow")
    schema = arrow[:0].schema

    def batches(columns: Sequence[str] | None) -> Iterator[Any]:
        for start in range(0, len(arrow), _BATCH_ROWS):
            table = arrow[start:start + _BATCH_ROWS]
            if columns is not None:
                table = table.select(list(columns))
            yield from table.to_batches()

    return ColumnarSource("<Dataset>", "dataset", schema, len(dataset), batches, features)


def _from_table(table: Any, name: str, fmt: str, features: dict[str, list[str]]) -> ColumnarSource:
    def batches(columns: Sequence[str] | None) -> Iterator[Any]:
        chosen = table.select(list(columns)) if columns is not None else table
        return iter(chosen.to_batches(max_chunksize=_BATCH_ROWS))

    return ColumnarSource(name, fmt, table.schema, table.num_rows, batches, features or _features(table.schema))


# --------------------------------------------------------------------------------------------
# Internals: `datasets` features (ClassLabel names) and values
# --------------------------------------------------------------------------------------------


def _features(schema: Any) -> dict[str, list[str]]:
    """ClassLabel names from the schema metadata `datasets` writes into every Arrow and Parquet file."""
    meta = (schema.metadata or {}).get(b"huggingface")
    if not meta:
        return {}
    try:
        return _class_labels((json.loads(meta).get("info") or {}).get("features") or {})
    except (ValueError, AttributeError):
        return {}


def _class_labels(features: Any) -> dict[str, list[str]]:
    """{column: names} for the ClassLabel columns and lists of ClassLabels of a features mapping, given
    as `datasets`' JSON (``{"_type": "ClassLabel", "names": [...]}``, in ``Sequence``/``List``) or its objects."""
    found: dict[str, list[str]] = {}
    items = features.items() if hasattr(features, "items") else ()
    for column, feature in items:
        names = _names_of(feature)
        if names is None:
            inner = feature.get("feature") if isinstance(feature, dict) else getattr(feature, "feature", None)
            if isinstance(feature, list) and len(feature) == 1:  # the old JSON form of a list feature
                inner = feature[0]
            names = _names_of(inner) if inner is not None else None
        if names is not None:
            found[str(column)] = names
    return found


def _names_of(feature: Any) -> list[str] | None:
    if isinstance(feature, dict):
        if feature.get("_type") == "ClassLabel" and isinstance(feature.get("names"), list):
            return [str(n) for n in feature["names"]]
        return None
    if type(feature).__name__ == "ClassLabel" and isinstance(getattr(feature, "names", None), list):
        return [str(n) for n in feature.names]
    return None


def _class_names(value: Any, names: list[str]) -> Any:
    """A ClassLabel id (or a list of them) as its name; -1 (`datasets`' "no label") as None. An id out of
    range stays a number, for the task to reject with its row."""
    if isinstance(value, list):
        return [_class_names(v, names) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        if value == -1:
            return None
        if 0 <= value < len(names):
            return names[value]
    return value


def _base_type(kind: str) -> str:
    """"string" for a string type, also dictionary-encoded (a pandas Categorical); else the type's name."""
    if kind.startswith("dictionary<"):
        values = kind.partition("values=")[2].split(",", 1)[0].strip()
        return values if values in _STRING_TYPES else "dictionary"
    return kind.split("<", 1)[0].split("[", 1)[0].strip()


def _element_type(kind: str) -> str:
    inner = kind.partition("<")[2].rpartition(">")[0]  # "item: string" or "element: large_string"
    return inner.partition(":")[2].strip() if ":" in inner else inner.strip()


def _short(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def is_columnar_format(fmt: str) -> bool:
    """Whether a table read as ``fmt`` (a LoadReport's or Table's format) came through this module."""
    return fmt in COLUMNAR_FORMATS or fmt in ("dataframe", "dataset")


def write_columnar(rows: Sequence[dict[str, Any]], columns: Sequence[str], path: str, fmt: str) -> None:
    """Write ``rows`` (mappings, ``columns`` in order) as a Parquet (``fmt="parquet"``) or Arrow IPC file,
    atomically: a temporary file beside ``path`` renamed over it, so a crash never leaves half a file."""
    pa = _pyarrow()
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows])
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        if fmt == "parquet":
            pq.write_table(table, tmp)
        else:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def is_in_memory_table(value: Any) -> bool:
    """Whether ``value`` is a DataFrame or a Dataset (which :func:`table_file` saves for a training run)."""
    return _object_kind(value) in ("dataframe", "dataset", "datasetdict")


def table_file(value: Any) -> str:
    """A DataFrame or Dataset saved as an Arrow file named by its content's hash in bertfit's cache
    directory (``$BERTFIT_CACHE/tables``), its ClassLabel names kept: what TrainConfig records for a
    table given in Python, so the run's settings stay a file path that a resume reads again."""
    import hashlib

    from bertfit.io import cache_dir

    source = open_source(value)
    pa = _pyarrow()
    table = pa.Table.from_batches(list(source.batches(None)), schema=source.schema)
    features = {c: {"_type": "ClassLabel", "names": names} for c, names in source.class_names.items()}
    table = table.replace_schema_metadata({b"huggingface": json.dumps({"info": {"features": features}})}
                                          if features else None)
    folder = cache_dir() / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".table.{os.getpid()}.tmp"
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()[:32]
        final = folder / f"{digest}.arrow"
        os.replace(tmp, final)  # the same content has the same name: replacing it changes nothing
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return str(final)
