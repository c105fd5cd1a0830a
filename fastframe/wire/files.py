"""The file protocol: download a file from under a served root, resumable, with a check that it held still.

Wire format
===========

Request: one frame (at most ``MAX_FILE_REQUEST``, 32 KiB) holding a UTF-8 JSON object::

    {"path": "dir/name.txt", "offset": 0, "validator": "9f2c...", "trailer": true}

``path`` (a string, required) is relative to the served root, components separated by ``/``; ``offset``
(a non-negative integer, optional, default 0) is where to start, for resuming; ``validator`` (a string of at
most ``MAX_VALIDATOR`` characters, optional) is the validator of the metadata frame of the download being
resumed; ``trailer`` (a boolean, optional, default false) asks for a trailer frame after the bytes.  Other
keys are ignored.  Because the path is a JSON string, every byte of it is explicit: a NUL (``\\u0000``) is
detected and refused, and nothing is percent-decoded -- ``%2e%2e/x`` names a directory literally called
``%2e%2e``.  Integers have at most 20 digits.

Reply: one metadata frame, then (on success) raw, unframed file bytes, then (if asked) a trailer frame::

    b"S" + JSON {"size": S, "offset": O, "length": L, "validator": V}    then exactly L = S - O raw bytes
    b"T"                                                                 trailer: the L bytes are consistent
    b"!changed " + message                                               trailer: the file changed meanwhile
    b"!" + code + b" " + message                                         instead of "S": nothing follows

A metadata or trailer frame is at most ``MAX_METADATA`` (64 KiB).  ``size`` is the size of the file actually
opened (its ``fstat``), taken once.  ``validator`` is an opaque string that changes whenever the file is
replaced or rewritten (a hash of its device, inode, size, mtime and ctime): compare it, do not parse it.  A
request carrying a ``validator`` that no longer matches is answered from the start of the current file
whatever its ``offset`` -- the metadata frame then says ``"offset": 0`` -- so a resumed download can never
splice two versions together.  When the request asked for a trailer, the metadata frame also carries
``"trailer": true`` (a server without the feature leaves it out and sends none).

The server checks the file again (``fstat``) once its bytes are sent.  If it changed meanwhile -- rewritten
in place, truncated or grown -- the bytes sent may mix two versions and cannot be taken back, so the server
says so: with a trailer, in the trailer frame (``!changed``); without one (clients that predate it), by
holding back the file's last byte and closing the connection, which such a client already treats as a
broken transfer (it keeps its partial file and never completes it).  A file that shrinks cuts the
connection short the same way.  The check compares size and timestamps, so a rewrite that keeps the size
within one tick of the file system's clock can go unnoticed.

Error codes (:mod:`fastframe.wire.errors`): ``bad-request`` (not a JSON object, no string path, a bad
``offset``, ``validator`` or ``trailer`` type, nesting deeper than the JSON parser takes, a NUL byte, a frame
over the size limit), ``forbidden`` (an absolute path, a ``..`` component, a hidden component -- one that
starts with ``.`` -- unless the server allows hidden files, a symbolic link anywhere on the way, permission
denied), ``not-found``, ``not-a-file`` (the root, a directory, FIFO, socket or device), ``bad-offset``
(offset beyond the end of the file), ``changed`` (trailer only) and ``auth`` (:mod:`fastframe.wire.auth`).
Requests on one connection are answered one after another, in order.
"""

from __future__ import annotations

import os

from . import _minijson as json  # json.loads and json.dumps, without the json package's import time
from .errors import WireError, error_frame, short

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (a start-up cost for the CLI)
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, NamedTuple

__all__ = [
    "MAX_FILE_REQUEST",
    "MAX_METADATA",
    "MAX_VALIDATOR",
    "METADATA",
    "TRAILER_OK",
    "FileMeta",
    "FileRequest",
    "metadata_frame",
    "parse_metadata",
    "parse_request",
    "request_frame",
    "trailer_frame",
    "validator",
]

#: The largest request frame: a JSON object holding one path (a PATH_MAX path fits even fully \u-escaped).
MAX_FILE_REQUEST = 32 * 1024
#: The largest metadata or trailer frame a client accepts.
MAX_METADATA = 64 * 1024
MAX_VALIDATOR = 128
#: The tag of the metadata frame, and the whole of the trailer frame that vouches for the bytes.
METADATA = b"S"
TRAILER_OK = b"T"

_MAX_DIGITS = 20  # an offset never needs more; int() of a long digit string is quadratic before Python 3.11


if TYPE_CHECKING:  # pragma: no cover

    class FileRequest(NamedTuple):
        parts: list[str]  # the path's components, never empty, never "." or ".."
        offset: int
        validator: str | None  # of the download being resumed
        trailer: bool  # the client wants a trailer frame after the bytes

    class FileMeta(NamedTuple):
        size: int
        offset: int  # where the bytes that follow start: the request's offset, or 0 if the file changed since
        length: int  # how many raw bytes follow: size - offset
        validator: str | None  # None from a server that sends none
        trailer: bool  # a trailer frame follows the bytes

else:  # the same tuples, made without typing (whose import is a start-up cost for the CLI)
    from collections import namedtuple

    FileRequest = namedtuple("FileRequest", ["parts", "offset", "validator", "trailer"])
    FileMeta = namedtuple("FileMeta", ["size", "offset", "length", "validator", "trailer"])


def _parse_int(digits: str) -> int:
    if len(digits) > _MAX_DIGITS:
        raise ValueError("number too long")
    return int(digits)


def _count(value: Any) -> int | None:
    """``value`` if it is a non-negative integer (JSON ``true`` is not one), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


# -- the request --------------------------------------------------------------------------------------------


def request_frame(path: str, offset: int = 0, validator: str | None = None, trailer: bool = False) -> bytes:
    request: dict[str, Any] = {"path": path, "offset": offset, "trailer": trailer}
    if validator is not None:
        request["validator"] = validator
    return json.dumps(request).encode("utf-8")


def parse_request(raw: bytes, allow_hidden: bool = False) -> FileRequest:
    """The request in a frame; WireError if it is malformed or not allowed (nothing else is raised)."""
    if len(raw) > MAX_FILE_REQUEST:
        raise WireError("bad-request", f"the request is {len(raw)} bytes; the limit is {MAX_FILE_REQUEST}")
    try:
        request = json.loads(raw.decode("utf-8"), parse_int=_parse_int)
    except (UnicodeDecodeError, ValueError):
        raise WireError("bad-request", 'expected a UTF-8 JSON object like {"path": "a/b.txt", "offset": 0}') from None
    except RecursionError:  # the json module's own depth limit
        raise WireError("bad-request", "the request is nested too deeply") from None
    if not isinstance(request, dict):
        raise WireError("bad-request", 'expected a JSON object like {"path": "a/b.txt", "offset": 0}')
    path = request.get("path")
    offset = request.get("offset", 0)
    check = request.get("validator")
    trailer = request.get("trailer", False)
    if not isinstance(path, str):
        raise WireError("bad-request", '"path" must be a string')
    if _count(offset) is None:
        raise WireError("bad-request", '"offset" must be a non-negative integer')
    if check is not None and (not isinstance(check, str) or len(check) > MAX_VALIDATOR):
        raise WireError("bad-request", f'"validator" must be a string of at most {MAX_VALIDATOR} characters')
    if not isinstance(trailer, bool):
        raise WireError("bad-request", '"trailer" must be true or false')
    if "\x00" in path:
        raise WireError("bad-request", "NUL byte in the path")
    if path.startswith("/"):
        raise WireError("forbidden", f"{short(path)} is absolute; paths are relative to the served root")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise WireError("forbidden", f"{short(path)} has a '..' component")
    if not allow_hidden and any(p.startswith(".") for p in parts):
        raise WireError("forbidden", f"{short(path)} has a hidden component (starting with '.')")
    if not parts:
        raise WireError("not-a-file", f"{short(path)} is the root directory")
    return FileRequest(parts, offset, check, trailer)


# -- the reply ----------------------------------------------------------------------------------------------


def validator(info: os.stat_result) -> str:
    """An opaque token that changes when the file is replaced or rewritten (like an HTTP ETag)."""
    import hashlib  # the server's: a client only compares validators (and its start-up stays small)

    key = f"{info.st_dev}:{info.st_ino}:{info.st_size}:{info.st_mtime_ns}:{info.st_ctime_ns}"
    # Hashed: inode numbers are not the client's business.
    return hashlib.blake2b(key.encode(), digest_size=12).hexdigest()


def metadata_frame(size: int, offset: int, validator: str, trailer: bool) -> bytes:
    meta: dict[str, Any] = {"size": size, "offset": offset, "length": size - offset, "validator": validator}
    if trailer:
        meta["trailer"] = True
    return METADATA + json.dumps(meta).encode()


def parse_metadata(frame: bytes) -> FileMeta:
    """The metadata frame's fields; WireError (code ``protocol``) if it is not a consistent one."""
    try:
        if frame[:1] != METADATA:
            raise ValueError("not a metadata frame")
        info = json.loads(frame[1:].decode("utf-8"), parse_int=_parse_int)
        if not isinstance(info, dict):
            raise ValueError("not a JSON object")
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise WireError("protocol", f"bad metadata frame {frame[:40]!r}") from None
    size, offset, length = _count(info.get("size")), _count(info.get("offset")), _count(info.get("length"))
    found, trailer = info.get("validator"), info.get("trailer", False)
    if size is None or offset is None or length is None or offset + length != size:
        raise WireError("protocol", f"inconsistent metadata {info!r}")
    if not isinstance(trailer, bool):
        raise WireError("protocol", f"bad trailer flag in the metadata {info!r}")
    return FileMeta(size, offset, length, found if isinstance(found, str) else None, trailer)


def trailer_frame(changed: bool, path: str) -> bytes:
    """``T``, or the ``!changed`` error frame that tells the client the bytes it got may mix two versions."""
    return error_frame("changed", f"{path} changed during the download") if changed else TRAILER_OK
