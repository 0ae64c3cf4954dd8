"""What a /predict body may hold, checked before anything is queued, and errors as JSON.

Two forms, whatever the task:

- ``{"texts": [...], "pairs": [...]}``: texts (and optional second segments), as for a classifier;
- the task's own inputs (``Task.input_columns``, with ``Task.input_options``): one input as the body
  itself, ``{"tokens": ["Apple", "opened"]}`` or ``{"question": ..., "context": ..., "top_k": 3}``,
  or several as ``{"inputs": [{...}, {...}]}``.

Both answer with the same envelope (one prediction per input, in order). The server checks the
shape, sizes and Unicode here; what an input means is the task's to judge (``Task.inputs``), whose
InputError becomes a 422 naming the input and the field. Nothing here asks which task it serves.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple, Sequence

from bertfit.serve.config import ServeConfig

TEXT_FIELDS = ("texts", "pairs")


class Parsed(NamedTuple):
    """A checked /predict body: texts (or the task's input objects), pairs, and whether it was one input."""

    inputs: list[Any]
    pairs: list[str] | None
    single: bool = False


class ApiError(Exception):
    """An error answer: status, a machine-readable code, a message, and the limit it broke."""

    def __init__(self, status: int, code: str, message: str, *, limit: str | None = None,
                 maximum: float | None = None, headers: dict[str, str] | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.limit, self.maximum, self.headers, self.field = limit, maximum, headers, field

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.message, "code": self.code}
        if self.field is not None:
            out["field"] = self.field
        if self.limit is not None:
            out["limit"] = self.limit
            out["max"] = self.maximum
        return out


def _preview(text: str, limit: int = 80) -> str:
    """At most ``limit`` characters of something the client sent, for an error message."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _too_many(name: str, n: int, config: ServeConfig) -> ApiError:
    return ApiError(422, "too_many_texts", f"{name} has {n} items; at most {config.max_texts_per_request} per request "
                    "(limit max_texts_per_request); split the request",
                    limit="max_texts_per_request", maximum=config.max_texts_per_request)


def _check_text(text: str, name: str, config: ServeConfig, size: int | None = None) -> None:
    """One string the client sent: within max_chars (``size``: its list's characters) and valid Unicode."""
    size = len(text) if size is None else size
    if size > config.max_chars:
        raise ApiError(422, "text_too_long", f"{name} has {size} characters; at most {config.max_chars} per text "
                       "(limit max_chars)", limit="max_chars", maximum=config.max_chars, field=name)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # JSON allows "\ud800"; the tokenizer does not. Refuse it here rather than fail a batch.
        raise ApiError(422, "invalid_text", f"{name} contains an unpaired surrogate (invalid Unicode)",
                       field=name) from None


def _check_strings(value: Any, name: str, config: ServeConfig) -> list[str]:
    if not isinstance(value, list):
        raise ApiError(422, "wrong_type", f"{name} must be a list of strings, got {_json_type(value)}")
    if not value:
        raise ApiError(422, "empty", f"{name} must not be empty")
    if len(value) > config.max_texts_per_request:
        raise _too_many(name, len(value), config)
    for i, text in enumerate(value):
        if not isinstance(text, str):
            raise ApiError(422, "wrong_type", f"{name}[{i}] is {_json_type(text)}, expected a string")
        _check_text(text, f"{name}[{i}]", config)
    return value


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {_preview(str(exc))}") from None
    except RecursionError:  # "[[[[..." deeper than the parser's stack: a client's mistake, not a 500
        raise ApiError(400, "invalid_json", "the request body is not valid JSON: it is nested too deeply") from None


def _forms(columns: Sequence[str]) -> str:
    """The body forms, in words, for an error message."""
    if not columns:
        return 'the body takes "texts" and optionally "pairs"'
    one = ", ".join(f'"{c}"' for c in columns)
    return f'the body takes "texts" (and optionally "pairs"), one input\'s fields ({one}), or "inputs": [{{{one}: ...}}, ...]'


def parse_predict_request(body: bytes, config: ServeConfig, task: Any = None) -> Parsed:
    """The checked (inputs, pairs, single) of a /predict body, or an ApiError naming what is wrong.

    ``task`` (the served Task, or None: texts only) says which input fields it takes. inputs are
    texts (pairs: their second segments, or None) or the task's input objects (pairs None)."""
    payload = _parse_json(body)
    if not isinstance(payload, dict):
        raise ApiError(422, "wrong_type",
                       f'the request body must be a JSON object like {{"texts": ["..."]}}, got {_json_type(payload)}')
    columns = tuple(getattr(task, "input_columns", ()))
    fields = (*columns, *getattr(task, "input_options", ()))
    given = set(payload)
    if columns and given & {"texts", "pairs"} and given & {*fields, "inputs"}:
        text, other = sorted(given & {"texts", "pairs"})[-1], sorted(given & {*fields, "inputs"})[0]
        raise ApiError(422, "mixed_fields", f'"{text}" and "{other}" in one body: send either texts (with "pairs") '
                       f"or the model's own inputs, not both; {_forms(columns)}", field=other)
    if columns and not given & {"texts", "pairs"}:
        if "inputs" in payload:
            return Parsed(_parse_inputs(payload, columns, fields, config), None)
        if given & set(columns):
            return Parsed([_check_input(payload, "", columns, fields, config)], None, single=True)
    unknown = sorted(given - set(TEXT_FIELDS))
    if unknown:
        raise ApiError(422, "unknown_field", f"unknown field {_preview(repr(unknown[0]))}; {_forms(columns)}")
    if "texts" not in payload:
        raise ApiError(422, "missing_field", 'missing field "texts" (a list of strings)'
                       + (f"; {_forms(columns)}" if columns else ""))
    texts = _check_strings(payload["texts"], "texts", config)
    pairs = payload.get("pairs")
    if pairs is not None:
        pairs = _check_strings(pairs, "pairs", config)
        if len(pairs) != len(texts):
            raise ApiError(422, "pairs_mismatch",
                           f"got {len(texts)} texts but {len(pairs)} pairs; pairs must match texts one to one")
    return Parsed(texts, pairs)


def parse_explain_request(body: bytes, config: ServeConfig, task: Any = None) -> tuple[Parsed, list[str] | None]:
    """A /explain body: what /predict takes (the same checks and limits), plus optional "targets": the
    classes, labels, entities or choices to explain (["all"]: every one; absent: the prediction)."""
    payload = _parse_json(body)
    targets = None
    if isinstance(payload, dict) and "targets" in payload:
        targets = _check_strings(payload.pop("targets"), "targets", config)
    return parse_predict_request(json.dumps(payload).encode("utf-8"), config, task), targets


def _parse_inputs(payload: dict, columns: Sequence[str], fields: Sequence[str], config: ServeConfig) -> list[dict]:
    unknown = sorted(set(payload) - {"inputs"})
    if unknown:
        raise ApiError(422, "unknown_field", f'unknown field {_preview(repr(unknown[0]))} next to "inputs"; '
                       f"{_forms(columns)}")
    inputs = payload["inputs"]
    if not isinstance(inputs, list):
        raise ApiError(422, "wrong_type", f"inputs must be a list of objects, got {_json_type(inputs)}")
    if not inputs:
        raise ApiError(422, "empty", "inputs must not be empty")
    if len(inputs) > config.max_texts_per_request:
        raise _too_many("inputs", len(inputs), config)
    return [_check_input(item, f"inputs[{i}]", columns, fields, config) for i, item in enumerate(inputs)]


def _check_input(item: Any, where: str, columns: Sequence[str], fields: Sequence[str], config: ServeConfig) -> dict:
    """One input object: only the task's fields, all its input columns, strings and lists of strings
    within max_chars and valid Unicode. What the values mean, the task checks (``check_inputs``)."""
    at = f"{where}." if where else ""
    if not isinstance(item, dict):
        raise ApiError(422, "wrong_type", f"{where} is {_json_type(item)}; each input is an object with "
                       + ", ".join(f'"{c}"' for c in columns), field=where)
    unknown = sorted(set(item) - set(fields))
    if unknown:
        raise ApiError(422, "unknown_field", f"unknown field {_preview(repr(at + unknown[0]))}; "
                       "an input takes " + ", ".join(f'"{f}"' for f in fields))
    missing = [c for c in columns if c not in item]
    if missing:
        raise ApiError(422, "missing_field", f'missing field "{at}{missing[0]}"', field=at + missing[0])
    for name, value in item.items():
        if isinstance(value, str):
            _check_text(value, at + name, config)
        elif isinstance(value, list):
            strings = [v for v in value if isinstance(v, str)]
            # A word list is one text: its words and the spaces between them count against max_chars.
            _check_text("".join(strings), at + name, config, size=sum(map(len, strings)) + max(0, len(value) - 1))
    return item


def check_inputs(task: Any, items: Sequence[Any], pairs: Sequence[str] | None, single: bool) -> None:
    """The task's own judgement of the inputs (``Task.inputs``), as a 422 naming the input and field.

    single: the body was one input (its errors need no position)."""
    from bertfit.errors import BertfitError, InputError

    objects = bool(items) and isinstance(items[0], dict)
    if pairs is not None and not getattr(task, "takes_pairs", True):
        raise ApiError(422, "invalid_input", f'a {task.name} model reads one text per input: "pairs" is not taken',
                       field="pairs")
    try:
        task.inputs(list(items) if pairs is None else list(zip(items, pairs)))
    except InputError as exc:
        where = "" if single else (f"inputs[{exc.index}]" if objects else f"texts[{exc.index}]")
        field = f"{where}.{exc.field}" if where and exc.field else (exc.field or where or None)
        raise ApiError(422, "invalid_input", f"{where}: {exc.reason}" if where else exc.reason, field=field) from None
    except BertfitError as exc:
        raise ApiError(422, "invalid_input", str(exc)) from None
