"""Framing: one immutable description of a length-field layout, accepted wherever the codec is configured.

Both codec implementations import this module (as they import the exceptions), so a ``Framing`` made once
works with ``Decoder``, ``encode``, ``encode_many``, ``header``, ``write_frames`` and ``FramedSocket`` alike::

    POSTGRES = Framing("!I", offset=1, adjust=-4, strip=0, max_frame=16 << 20)
    dec = Decoder(POSTGRES)
    wire = encode(b"Q" + b"SELECT 1\\0", POSTGRES)

The layout a Framing describes, and what each option means, is specified in the docstring of the pure-Python
codec, ``fastframe._codec_py``.  The option checks live here, once: the Framing constructor and both codec
implementations call them (the extension only off its default fast paths), so the messages are the same.
"""

from __future__ import annotations

import operator
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (a start-up cost for the CLI)
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, final
else:

    def final(cls: type) -> type:
        """typing.final at run time: marks the class, checks nothing."""
        cls.__final__ = True
        return cls


__all__ = ["Framing"]

# prefix -> (width of the length field in bytes, little-endian); width 0 is varint (LEB128, 1-10 bytes)
FORMATS: dict[str, tuple[int, bool]] = {
    "!B": (1, False), ">B": (1, False), "<B": (1, True),
    "!H": (2, False), ">H": (2, False), "<H": (2, True),
    "!3": (3, False), ">3": (3, False), "<3": (3, True),
    "!I": (4, False), ">I": (4, False), "<I": (4, True),
    "!Q": (8, False), ">Q": (8, False), "<Q": (8, True),
    "varint": (0, False),
}  # fmt: skip
PREFIXES = tuple(FORMATS)

DEFAULT_MAX_FRAME = 8 * 1024 * 1024
#: ``offset`` is at most this: leading bytes are a type tag or a small fixed header, never a payload.
MAX_OFFSET = 65535
#: ``adjust`` is a 32-bit signed number, as in Netty.
MIN_ADJUST = -(2**31)
MAX_ADJUST = 2**31 - 1


def lookup(prefix: object) -> tuple[int, bool]:
    try:
        return FORMATS[prefix]  # type: ignore[index]
    except (KeyError, TypeError):
        raise ValueError(f"unknown prefix {prefix!r}; expected one of {', '.join(PREFIXES)}") from None


def _integer(name: str, value: object) -> int:
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}") from None


def check_offset(offset: object) -> int:
    offset = _integer("offset", offset)
    if not 0 <= offset <= MAX_OFFSET:
        raise ValueError(f"offset must be between 0 and {MAX_OFFSET}, not {offset}")
    return offset


def check_adjust(adjust: object) -> int:
    adjust = _integer("adjust", adjust)
    if not MIN_ADJUST <= adjust <= MAX_ADJUST:
        raise ValueError(f"adjust must be between {MIN_ADJUST} and {MAX_ADJUST}, not {adjust}")
    return adjust


def check_strip(strip: object, prefix: str, width: int, offset: int) -> int | None:
    if strip is None:
        return None
    strip = _integer("strip", strip)
    if not width:
        if strip != 0:
            raise ValueError(
                f"with prefix {prefix!r} the header has no fixed size: strip must be None or 0, not {strip}"
            )
    elif not 0 <= strip <= offset + width:
        raise ValueError(f"strip must be between 0 and offset + {width} = {offset + width}, not {strip}")
    return strip


def check_max_frame(max_frame: object) -> int:
    max_frame = _integer("max_frame", max_frame)
    if max_frame < 0:
        raise ValueError("max_frame must not be negative")
    if max_frame > sys.maxsize:  # the extension keeps it in a Py_ssize_t
        raise OverflowError("max_frame is too large")
    return max_frame


def conflict(where: str) -> TypeError:
    return TypeError(f"{where}: give the options in the Framing or as keywords, not both")


@final
class Framing:
    """An immutable length-field layout: ``prefix``, ``offset``, ``adjust``, ``strip`` and ``max_frame``.

    Pass it where a prefix goes (``Decoder(f)``, ``encode(p, f)``, ``FramedSocket(sock, f)``) to configure every
    part of a connection the same way; the keyword options must then be left at their defaults.  Each option is
    checked here, once.  ``replace(**changes)`` returns a copy with some options changed.  ``encode``/``header``
    use ``prefix``, ``offset`` and ``adjust`` only (``strip`` and ``max_frame`` are about decoding).
    """

    __slots__ = ("_prefix", "_offset", "_adjust", "_strip", "_max_frame", "_spec")
    _prefix: str
    _offset: int
    _adjust: int
    _strip: int | None
    _max_frame: int
    # What the codecs read, in one attribute: (prefix, width, little-endian, offset, adjust,
    # strip or -1 for "through the length field", max_frame).
    _spec: tuple[str, int, bool, int, int, int, int]

    def __init__(
        self,
        prefix: str = "!I",
        *,
        offset: int = 0,
        adjust: int = 0,
        strip: int | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> None:
        width, little = lookup(prefix)
        offset = check_offset(offset)
        adjust = check_adjust(adjust)
        strip = check_strip(strip, prefix, width, offset)
        max_frame = check_max_frame(max_frame)
        setattr_ = object.__setattr__
        setattr_(self, "_prefix", prefix)
        setattr_(self, "_offset", offset)
        setattr_(self, "_adjust", adjust)
        setattr_(self, "_strip", strip)
        setattr_(self, "_max_frame", max_frame)
        setattr_(self, "_spec", (prefix, width, little, offset, adjust, -1 if strip is None else strip, max_frame))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        raise TypeError("type 'fastframe.Framing' is not an acceptable base type")

    @property
    def prefix(self) -> str:
        """The length field's format (one of ``PREFIXES``)."""
        return self._prefix

    @property
    def offset(self) -> int:
        """Opaque bytes before the length field."""
        return self._offset

    @property
    def adjust(self) -> int:
        """Bytes after the length field = field value + adjust."""
        return self._adjust

    @property
    def strip(self) -> int | None:
        """Bytes cut from the front of each decoded frame; None: through the length field (payload only)."""
        return self._strip

    @property
    def max_frame(self) -> int:
        """The most bytes a decoder accepts after the length field (field value + adjust)."""
        return self._max_frame

    @property
    def header_size(self) -> int | None:
        """``offset`` + the length field's width: the bytes before the body; None for ``"varint"``."""
        width = self._spec[1]
        return self._offset + width if width else None

    def replace(self, **changes: Any) -> Framing:
        """A copy with the given options changed (checked like the constructor's)."""
        fields = {
            "prefix": self._prefix,
            "offset": self._offset,
            "adjust": self._adjust,
            "strip": self._strip,
            "max_frame": self._max_frame,
        }
        unknown = set(changes) - set(fields)
        if unknown:
            raise TypeError(f"replace() got unexpected options: {', '.join(sorted(unknown))}")
        fields.update(changes)
        prefix = fields.pop("prefix")
        return Framing(prefix, **fields)  # type: ignore[arg-type]

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Framing objects are immutable (use replace() to change {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Framing objects are immutable")

    def __eq__(self, other: object) -> bool:
        if type(other) is not Framing:
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple[object, ...]:
        return (self._prefix, self._offset, self._adjust, self._strip, self._max_frame)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, self._key())

    def __repr__(self) -> str:
        parts = [repr(self._prefix)]
        if self._offset:
            parts.append(f"offset={self._offset}")
        if self._adjust:
            parts.append(f"adjust={self._adjust}")
        if self._strip is not None:
            parts.append(f"strip={self._strip}")
        parts.append(f"max_frame={self._max_frame}")
        return f"Framing({', '.join(parts)})"


def _rebuild(prefix: str, offset: int, adjust: int, strip: int | None, max_frame: int) -> Framing:
    return Framing(prefix, offset=offset, adjust=adjust, strip=strip, max_frame=max_frame)
