"""The one reader of a workflow script's ``--hparams``: a JSON object whose keys and value types the
script declares. Bounds are not checked here: the workflow config schema (config/schema.yaml) and the
typed configs of the library check each bound once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

KIND_NAMES = {
    int: "an integer",
    float: "a number",
    bool: "true or false",
    str: "a string",
    dict: "a mapping",
    list: "a list",
}
"""The value types a script may declare (``float``: any number, ``int`` included), as the errors name them."""


def _is(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def read_hparams(text: str, schema: Mapping[str, type], optional: Iterable[str] = ()) -> dict[str, Any]:
    """The ``--hparams`` JSON object ``text``, checked against ``schema`` (key -> one of
    :data:`KIND_NAMES`; every key required except those in ``optional``, which may also be null; no
    other key allowed).
    Raises SystemExit naming the key at fault (the script then writes nothing)."""
    try:
        hp = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"--hparams: not valid JSON: {exc}") from None
    if not isinstance(hp, dict):
        raise SystemExit(f"--hparams: expected a JSON object, got {type(hp).__name__}")
    optional = set(optional)
    required = set(schema) - optional
    if not required <= set(hp) <= set(schema):
        also = f" and optionally {sorted(optional)}" if optional else ""
        missing, unknown = sorted(required - set(hp)), sorted(set(hp) - set(schema))
        raise SystemExit(
            f"--hparams: expected keys {sorted(required)}{also}, got {sorted(hp)} "
            f"(missing keys {missing}, unknown keys {unknown})"
        )
    for key, kind in schema.items():
        if key in hp and not _is(hp[key], kind) and not (key in optional and hp[key] is None):
            raise SystemExit(f"--hparams: {key} must be {KIND_NAMES[kind]}, got {hp[key]!r}")
    return hp
