"""fastframe.wire._minijson gives what the json module gives: the same values, the same bytes, the same refusals.

The file protocol reads and writes its JSON with it so that a client command does not import the json package
(tests/test_startup.py); these tests hold it to json's own results on the inputs the protocol sees and on the
ones a hostile peer could send.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastframe.wire import _minijson

VALID = [
    '{"size": 10, "offset": 0, "length": 10, "validator": "abc", "trailer": true}',
    ' \t\n{"a": [1, 2.5, -3e4, null, false, "\\u00e9\\ud83d\\ude00"], "b": {"c": {}}}\r\n ',
    '"just a string"',
    "12345678901234567890123",
    "[NaN, Infinity, -Infinity]",
    '{"dup": 1, "dup": 2}',
    "[]",
]
INVALID = [
    "",
    "   ",
    "{",
    '{"a": 1} x',
    '{"a": 1}{}',
    "\ufeff{}",
    '{"a": "\x01"}',  # a control character inside a string: strict mode refuses it
    "{'a': 1}",
    "[1,]",
    "nul",
    '"\\ud800',
]


@pytest.mark.parametrize("text", VALID)
def test_loads_gives_what_json_gives(text: str) -> None:
    def same(a: Any, b: Any) -> bool:
        if isinstance(a, float) and math.isnan(a):
            return isinstance(b, float) and math.isnan(b)
        if isinstance(a, list):
            return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return type(a) is type(b) and a == b

    assert same(_minijson.loads(text), json.loads(text))


@pytest.mark.parametrize("text", INVALID)
def test_loads_refuses_what_json_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        _minijson.loads(text)


def test_parse_int_is_used_for_integers_only() -> None:
    seen = []

    def parse_int(digits: str) -> int:
        seen.append(digits)
        return int(digits) * 2

    assert _minijson.loads('{"a": 21, "b": 1.5, "c": [-4]}', parse_int=parse_int) == {"a": 42, "b": 1.5, "c": [-8]}
    assert seen == ["21", "-4"]


def test_deep_nesting_is_a_recursion_error_as_with_json() -> None:
    text = "[" * 100_000 + "]" * 100_000
    with pytest.raises(RecursionError):
        json.loads(text)
    with pytest.raises(RecursionError):
        _minijson.loads(text)


scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text())


@given(st.dictionaries(st.text(), scalars, max_size=8))
def test_dumps_is_json_dumps_byte_for_byte(obj: dict[str, Any]) -> None:
    text = _minijson.dumps(obj)
    assert text == json.dumps(obj)
    assert _minijson.loads(text) == obj


def test_dumps_hands_anything_else_to_json() -> None:
    obj = {"a": [1, 2], "b": 1.5}
    assert _minijson.dumps(obj) == json.dumps(obj)


def test_refusals_in_a_process_without_the_json_package() -> None:
    """The C scanner raises its errors through json.decoder, and only if that module is already imported (else a
    SystemError): a server or client that never imported json must still get a ValueError (found by the fuzz
    test of the file service, raw request b'"')."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from fastframe.wire import _minijson\n"
        "assert 'json' not in sys.modules and 'json.decoder' not in sys.modules\n"
        f"for text in {INVALID!r}:\n"
        "    try:\n"
        "        _minijson.loads(text)\n"
        "    except ValueError:\n"
        "        pass\n"
        "    else:\n"
        "        raise AssertionError(text)\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
