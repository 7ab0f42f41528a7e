"""The scripts' --hparams reader (ssrl.hparams.read_hparams)."""

from __future__ import annotations

import json

import pytest

from ssrl.hparams import read_hparams

SCHEMA = {"n": int, "x": float, "on": bool, "name": str, "extra": dict}


def test_reads_a_valid_object():
    hp = {"n": 3, "x": 2, "on": False, "name": "a", "extra": {"k": 1}}
    assert read_hparams(json.dumps(hp), SCHEMA) == hp
    assert read_hparams(json.dumps({**hp, "extra": None}), SCHEMA, optional=["extra"])["extra"] is None
    del hp["extra"]
    assert read_hparams(json.dumps(hp), SCHEMA, optional=["extra"]) == hp


@pytest.mark.parametrize(
    "hp, message",
    [
        ("[1]", "expected a JSON object, got list"),
        ("{", "not valid JSON"),
        ({"n": 1}, "expected keys ['extra', 'n', 'name', 'on', 'x'], got ['n']"),
        (
            {"n": 1, "x": 1.0, "on": True, "name": "a", "extra": {}, "typo": 1},
            "got ['extra', 'n', 'name', 'on', 'typo'",
        ),
        ({"n": True, "x": 1.0, "on": True, "name": "a", "extra": {}}, "n must be an integer, got True"),
        ({"n": 1.5, "x": 1.0, "on": True, "name": "a", "extra": {}}, "n must be an integer, got 1.5"),
        ({"n": 1, "x": False, "on": True, "name": "a", "extra": {}}, "x must be a number, got False"),
        ({"n": 1, "x": 1.0, "on": 1, "name": "a", "extra": {}}, "on must be true or false, got 1"),
        ({"n": 1, "x": 1.0, "on": True, "name": 2, "extra": {}}, "name must be a string"),
        ({"n": 1, "x": 1.0, "on": True, "name": "a", "extra": None}, "extra must be a mapping, got None"),
    ],
)
def test_names_the_key_at_fault(hp, message):
    with pytest.raises(SystemExit) as exc:
        read_hparams(hp if isinstance(hp, str) else json.dumps(hp), SCHEMA)
    assert message in str(exc.value.code)
