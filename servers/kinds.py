"""The kinds of a ``fastframe serve`` setting (:mod:`servers.settings`): how one value is parsed from the
command line, accepted from a TOML file, checked and shown in ``--help``.  :class:`ConfigError` is the one
error every bad value raises, with a message of one line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Callable

from fastframe._address import parse_address

from .unixsock import parse_mode

__all__ = ["Choice", "ConfigError", "Endpoint", "Flag", "Integer", "Kind", "Octal", "Seconds", "Size", "Text", "Words"]


class ConfigError(Exception):
    """A configuration that cannot be served; the message is one readable line."""


# -- kinds: what a value may be ---------------------------------------------------------------------------


class Kind:
    """How a setting's value is written, checked and shown.  ``parse`` takes the command line's text,
    ``accept`` a value read from TOML that ``matches``; both raise ValueError saying what is wrong."""

    #: What a TOML value must be, for the error message (``expected an integer``).
    expected = "a string"
    toml_types: tuple[type, ...] = (str,)

    def matches(self, value: Any) -> bool:
        """Whether a TOML value has the right type (a boolean is not an integer here, as it is in Python)."""
        return isinstance(value, self.toml_types) and (bool in self.toml_types or not isinstance(value, bool))

    def parse(self, text: str) -> Any:
        return self.check(text)

    def accept(self, value: Any) -> Any:
        return self.parse(value) if isinstance(value, str) else self.check(value)

    def check(self, value: Any) -> Any:
        return value

    def show(self, value: Any) -> str:
        return str(value)


class Text(Kind):
    pass


class Choice(Kind):
    def __init__(self, options: Sequence[str]) -> None:
        self.options = tuple(options)
        self.expected = "one of " + ", ".join(self.options)

    def check(self, value: Any) -> Any:
        if value not in self.options:
            raise ValueError(f"{value!r} is not {self.expected}")
        return value


class _Number(Kind):
    convert: Callable[[str], Any] = float
    noun = "a number"

    def parse(self, text: str) -> Any:
        try:
            value = self.convert(text)
        except ValueError:
            raise ValueError(f"not {self.noun}: {text!r}") from None
        return self.check(value)


class Integer(_Number):
    expected = "an integer"
    toml_types: tuple[type, ...] = (int,)
    convert = int
    noun = "a whole number"

    def __init__(self, low: int, high: int | None = None) -> None:
        self.low, self.high = low, high

    def check(self, value: int) -> int:
        if self.high is None and value < self.low:
            raise ValueError(f"must be at least {self.low}, not {value}")
        if self.high is not None and not self.low <= value <= self.high:
            raise ValueError(f"must be {self.low} to {self.high}, not {value}")
        return value


class Seconds(_Number):
    expected = "a number of seconds"
    toml_types = (int, float)

    def accept(self, value: Any) -> Any:
        return self.check(float(value))

    def check(self, value: float) -> float:
        if not value > 0:  # (a NaN is not either)
            raise ValueError(f"must be positive, not {value:g}")
        return value

    def show(self, value: Any) -> str:
        return f"{value:g}"


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?)(?:i?b)?\s*")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


class Size(Kind):
    """Bytes: ``1048576``, ``64k``, ``8M``, ``1GiB`` (binary multiples); in TOML an integer or such a string."""

    expected = 'a size (an integer, or a string like "64k")'
    toml_types = (int, str)

    def parse(self, text: str) -> Any:
        match = _SIZE.fullmatch(text.lower())
        if match is None:
            raise ValueError(f"not a size: {text!r} (examples: 65536, 64k, 8M)")
        return self.check(int(float(match.group(1)) * _UNITS[match.group(2)]))

    def check(self, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be at least 1 byte, not {value}")
        return value

    def show(self, value: Any) -> str:
        for unit in ("g", "m", "k"):
            if value % _UNITS[unit] == 0:
                return f"{value // _UNITS[unit]}{unit.upper()}"
        return str(value)


class Endpoint(Integer):
    """A port, or ``unix:/path`` for a Unix stream socket (the services that are TCP only)."""

    expected = 'a port number or "unix:/path"'
    toml_types: tuple[type, ...] = (int, str)

    def __init__(self) -> None:
        super().__init__(0, 65535)

    def parse(self, text: str) -> Any:
        if text.strip().startswith("unix:"):
            return str(parse_address(text))  # ValueError: one line quoting it
        return super().parse(text)


class Octal(Kind):
    expected = 'an octal mode as a string ("0660")'

    def parse(self, text: str) -> Any:
        return parse_mode(text)

    def show(self, value: Any) -> str:
        return f"{value:04o}"


class Flag(Kind):
    expected = "true or false"
    toml_types = (bool,)


class Words(Kind):
    """A repeatable flag (``--allow ls --allow df``); in TOML a list of strings."""

    expected = "a list of strings"
    toml_types = (list,)

    def matches(self, value: Any) -> bool:
        return isinstance(value, list) and all(isinstance(item, str) for item in value)

    def accept(self, value: Any) -> Any:
        return list(value)
