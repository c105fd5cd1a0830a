"""The command line of a client command read without argparse, for the plain cases; argparse for the rest.

Theory of operation
===================

A client command (``fastframe get HOST:PORT PATH -o OUT``) is a whole process, and its start-up is most of a
small request.  argparse is a large part of it: its import (gettext, and locale on the first message),
and, while the parser is built, a help formatter per argument, each asking ``shutil`` (which imports bz2,
lzma and fnmatch) for the terminal's width -- a few milliseconds before the first byte is sent, for a
command line of three words.

:func:`quick_parse` reads the same argument declarations the CLI gives argparse (``(names, kwargs)`` pairs
for ``add_argument``) and returns the values argparse would give -- or None whenever the command line is
anything but plain, and the CLI then runs argparse, which gives the same values or the same error message
it always did.  So this parser never has to be right about anything unusual: it only has to recognise
when it is not sure.  Plain means:

- every option is written out in full (``--timeout 5``, ``--timeout=5``, ``-o OUT``): no abbreviation,
  no ``-oOUT``, no ``-h``/``--help``, nothing it does not declare;
- an option's value does not start with ``-`` (argparse would read it as an option, or a negative number);
- the positional arguments form one run, with no option between them (argparse matches positionals in
  runs, and a ``nargs="*"`` one then takes nothing from the first run), and ``--`` appears at most once;
- every value converts with its ``type`` and is among its ``choices`` (else argparse says why not).

Supported declarations: positionals with ``nargs`` None, ``"*"`` or ``"+"``; options with ``action``
``"store_true"`` or the default store, ``type``, ``default``, ``choices``, ``dest``.  tests/test_startup.py
checks the result against argparse's on many command lines, plain and not.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (a start-up cost for the CLI)
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Sequence
    from typing import Any

    Spec = tuple[tuple[str, ...], dict[str, Any]]

__all__ = ["dest_of", "quick_parse"]

_VARIADIC = ("*", "+")


def dest_of(names: Sequence[str], kwargs: dict[str, Any]) -> str:
    """The attribute argparse stores an argument under: ``dest``, the first long option, or the name."""
    if "dest" in kwargs:
        return str(kwargs["dest"])
    if not names[0].startswith("-"):
        return names[0]
    name = next((n for n in names if n.startswith("--")), names[0])
    return name.lstrip("-").replace("-", "_")


class _Unsure(Exception):
    """The command line is not plain: leave it to argparse."""


def _convert(kwargs: dict[str, Any], text: str) -> Any:
    convert = kwargs.get("type")
    try:
        value = text if convert is None else convert(text)
    except Exception:  # (argparse's own message, when it runs, says what was wrong)
        raise _Unsure from None
    if "choices" in kwargs and value not in kwargs["choices"]:
        raise _Unsure
    return value


def quick_parse(specs: Sequence[Spec], argv: Sequence[str]) -> dict[str, Any] | None:
    """``vars(parser.parse_args(argv))`` for a parser declared by ``specs``, or None if ``argv`` is not plain."""
    try:
        return _parse(specs, list(argv))
    except _Unsure:
        return None


def _parse(specs: Sequence[Spec], argv: list[str]) -> dict[str, Any]:
    options: dict[str, tuple[str, dict[str, Any]]] = {}
    positionals: list[tuple[str, dict[str, Any]]] = []
    values: dict[str, Any] = {}
    for names, kwargs in specs:
        dest = dest_of(names, kwargs)
        if not names[0].startswith("-"):
            if kwargs.keys() - {"type", "nargs", "metavar", "help", "choices"} or kwargs.get("nargs", None) not in (
                None, *_VARIADIC,
            ):  # fmt: skip
                raise _Unsure
            positionals.append((dest, kwargs))
            continue
        action = kwargs.get("action", "store")
        if action not in ("store", "store_true") or "nargs" in kwargs or "const" in kwargs:
            raise _Unsure
        for name in names:
            options[name] = (dest, kwargs)
        default = kwargs.get("default", False if action == "store_true" else None)
        if isinstance(default, str) and kwargs.get("type") is not None:
            default = kwargs["type"](default)  # (argparse converts a string default too)
        values[dest] = default
    if argv.count("--") > 1:
        raise _Unsure
    words: list[str] = []
    run_over = False  # an option came after the positional run began
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if token == "--":
            if run_over:
                raise _Unsure
            words.extend(argv[i:])
            break
        if not token.startswith("-") or token == "-":
            if token == "-" or run_over:
                raise _Unsure
            words.append(token)
            continue
        if words:
            run_over = True
        name, eq, text = token.partition("=")
        if not name.startswith("--"):
            name, eq, text = token, "", ""
        if name not in options:
            raise _Unsure
        dest, kwargs = options[name]
        if kwargs.get("action") == "store_true":
            if eq:
                raise _Unsure
            values[dest] = True
            continue
        if not eq:
            if i == len(argv) or argv[i].startswith("-"):
                raise _Unsure
            text = argv[i]
            i += 1
        values[dest] = _convert(kwargs, text)
    fixed = [p for p in positionals if p[1].get("nargs") not in _VARIADIC]
    variadic = [p for p in positionals if p[1].get("nargs") in _VARIADIC]
    if len(variadic) > 1 or (variadic and positionals[-1] is not variadic[0]):
        raise _Unsure
    if len(words) < len(fixed) or (not variadic and len(words) > len(fixed)):
        raise _Unsure
    for (dest, kwargs), word in zip(fixed, words):
        values[dest] = _convert(kwargs, word)
    if variadic:
        dest, kwargs = variadic[0]
        rest = words[len(fixed) :]
        if kwargs["nargs"] == "+" and not rest:
            raise _Unsure
        values[dest] = [_convert(kwargs, w) for w in rest]
    return values
