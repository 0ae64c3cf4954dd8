"""NER labels from annotation tools: Label Studio's JSON export, and the rows of columnar data.

Label Studio exports a project as one JSON array of tasks (its "JSON" export; the "JSON-MIN" export is
read too)::

    [{"id": 7, "data": {"text": "Ada Lovelace was born in London."},
      "annotations": [{"was_cancelled": false, "result": [
          {"type": "labels", "from_name": "label", "to_name": "text",
           "value": {"start": 0, "end": 12, "text": "Ada Lovelace", "labels": ["PER"]}}]}]}]

Each task is one row (numbered by its 1-based position in the array; its ``id`` is named too). The
task's first annotation that was not cancelled is used (``predictions`` are a model's, not a person's,
and are ignored); its ``labels`` results are the entities. Each span is checked against the text: its
offsets must fall inside it, and the ``text`` Label Studio recorded for the span must be what the
offsets cut out. An overlapping, out-of-range or mismatched span is a row error naming the task and
the span. doccano's JSONL export (``{"text", "label": [[start, end, "PER"], ...]}``, or ``entities``
with ``start_offset``/``end_offset``) is JSON lines and is read by data.py.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from bertfit.errors import DataError


def label_studio_records(path: str, text: str) -> list[tuple[int, Mapping[str, Any] | None, str | None]]:
    """(row, {"text", "entities", "task"} or None, problem) for each task of a Label Studio JSON export."""
    try:
        tasks = json.loads(text)
    except RecursionError:
        raise DataError(f"{path}: the JSON is nested too deeply to be a Label Studio export") from None
    except ValueError as e:
        raise DataError(f"{path}: not valid JSON ({getattr(e, 'msg', e)} at line {getattr(e, 'lineno', '?')}); a Label "
                        "Studio export is one JSON array of tasks. Export the project again") from None
    if isinstance(tasks, Mapping) and "data" in tasks:
        tasks = [tasks]  # one task exported on its own (cloud storage writes one file per task)
    if not isinstance(tasks, list):
        raise DataError(f"{path}: a Label Studio export is a JSON array of tasks "
                        '([{"data": {"text": ...}, "annotations": [...]}, ...]); this file holds '
                        f"{type(tasks).__name__}")
    records: list[tuple[int, Mapping[str, Any] | None, str | None]] = []
    for row, task in enumerate(tasks, start=1):
        try:
            records.append((row, _task(task), None))
        except ValueError as e:
            named = f" (task id {task.get('id')})" if isinstance(task, Mapping) and task.get("id") is not None else ""
            records.append((row, None, f"{e}{named}"))
    return records


def _task(task: Any) -> dict[str, Any]:
    if not isinstance(task, Mapping):
        raise ValueError(f"the task is {type(task).__name__}, not an object")
    if "data" not in task and "text" in task:  # the JSON-MIN export: {"text", "label": [{start, end, labels}]}
        return {"text": task["text"], "entities": task.get("label") or [], "id": task.get("id")}
    data = task.get("data")
    if not isinstance(data, Mapping):
        raise ValueError('the task has no "data" object holding its text')
    text = data.get("text")
    if text is None:
        strings = [v for v in data.values() if isinstance(v, str)]
        if len(strings) != 1:
            raise ValueError(f'the task has no "text" in its data (keys: {", ".join(map(str, data))}); name the text field '
                             '"text" in the labeling config ($text)')
        text = strings[0]
    annotations = [a for a in task.get("annotations") or [] if isinstance(a, Mapping) and not a.get("was_cancelled")]
    if not annotations:
        raise ValueError("the task has no annotation (only predictions, or every annotation was cancelled); annotate it, "
                         "or pass --skip-bad-rows to leave unannotated tasks out")
    entities = []
    for result in annotations[0].get("result") or []:
        if not isinstance(result, Mapping) or result.get("type", "labels") != "labels":
            continue  # relations, choices, text areas: not entity spans
        value = result.get("value")
        if not isinstance(value, Mapping):
            raise ValueError(f"a result has no span value ({str(result)[:80]})")
        span = value.get("text")
        start, end = value.get("start"), value.get("end")
        if isinstance(span, str) and isinstance(text, str) and isinstance(start, int) and isinstance(end, int) \
                and 0 <= start < end <= len(text) and text[start:end] != span:
            label = (value.get("labels") or ["?"])[0]
            raise ValueError(f"span [{start}, {end}, {label!r}] reads {text[start:end]!r} in the text, but Label "
                             f"Studio recorded {span!r} for it; the offsets do not match the text (was the text "
                             "changed after annotating?)")
        entities.append(value)
    return {"text": text, "entities": entities, "id": task.get("id")}
