"""JSON for the file protocol without importing the ``json`` package: its C scanner and string encoder.

Theory of operation
===================

The file protocol's messages are small flat JSON objects (:mod:`fastframe.wire.files`), and a client
command is a whole process whose start-up is most of a small download: ``import json`` costs its package,
its decoder and encoder modules and the regular expressions they compile at import, about a millisecond
before the first byte is sent.  What the json package does with a string is done by its C accelerator
``_json`` anyway, so this module calls that directly:

- :func:`loads` is ``json.loads``: the same C scanner (``_json.make_scanner``), given the settings a default
  ``JSONDecoder`` gives it (strict strings, ``float`` for fractions, ``NaN``/``Infinity`` as floats), so it
  accepts exactly what ``json.loads`` accepts and builds the same objects.  Leading and trailing JSON
  whitespace is skipped as the decoder skips it; a BOM, a missing value or extra data raise ``ValueError``
  (the scanner reports its own errors through ``json.decoder`` and only if that module is already imported,
  so on any error the text goes to ``json.loads``, which raises ``json.JSONDecodeError``, a ``ValueError``:
  the json package is imported on the error path only).  Deep nesting raises ``RecursionError``, as with ``json.loads``.
- :func:`dumps` is ``json.dumps`` with its defaults for the values the protocol sends (an object of
  strings, integers, booleans and None): the same ``", "`` and ``": "`` separators, ASCII output with the
  C string escaper, byte for byte.  Anything else is handed to ``json.dumps``.

Where ``_json`` is missing (an interpreter without the accelerator) both fall back to the json package.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (a start-up cost for the CLI)
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Callable

__all__ = ["dumps", "loads"]

_WHITESPACE = " \t\n\r"

try:
    from _json import encode_basestring_ascii as _quote
    from _json import make_scanner as _make_scanner

    _ACCELERATED = True
except ModuleNotFoundError:  # pragma: no cover - no C accelerator: the json package does it all
    _ACCELERATED = False


class _Settings:
    """What ``_json.make_scanner`` reads from a ``JSONDecoder``: a default decoder's settings."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}.__getitem__

    def __init__(self, parse_int: Callable[[str], Any]) -> None:
        self.parse_int = parse_int


_scanners: dict[Callable[[str], Any], Callable[[str, int], Any]] = {}


def loads(text: str, parse_int: Callable[[str], Any] = int) -> Any:
    """``json.loads(text, parse_int=parse_int)`` for a ``str``."""
    if not _ACCELERATED:  # pragma: no cover
        import json

        return json.loads(text, parse_int=parse_int)
    if text.startswith("\ufeff"):
        raise ValueError("Unexpected UTF-8 BOM (decode using utf-8-sig)")
    scan = _scanners.get(parse_int)
    if scan is None:
        scan = _scanners[parse_int] = _make_scanner(_Settings(parse_int))  # type: ignore[arg-type]
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = scan(text, start)
    except StopIteration as exc:
        raise ValueError(f"Expecting value: char {exc.value}") from None
    except (ValueError, SystemError):
        # The scanner raises its errors (json.JSONDecodeError) through json.decoder, found only if already imported
        # (if not: a SystemError with no message).  On the error path, the json package says what is wrong.
        import json

        return json.loads(text, parse_int=parse_int)
    if text[end:].strip(_WHITESPACE):
        raise ValueError(f"Extra data: char {end}")
    return value


def _scalar(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if type(value) is int:
        return int.__repr__(value)
    return _quote(value)


def dumps(obj: dict[str, Any]) -> str:
    """``json.dumps(obj)`` for a dict of str keys and str, int, bool or None values."""
    if (
        not _ACCELERATED
        or type(obj) is not dict
        or not all(type(k) is str and (v is None or type(v) in (str, int, bool)) for k, v in obj.items())
    ):
        import json

        return json.dumps(obj)
    return "{" + ", ".join(f"{_quote(k)}: {_scalar(v)}" for k, v in obj.items()) + "}"
