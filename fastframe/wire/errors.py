"""The error frame: how every fastframe service says no.

Wire format
===========

One frame whose payload is ``b"!"``, a code, one space and a message::

    b"!" + code + b" " + message        code: ASCII, from the table below; message: UTF-8, one line

The code is for programs (a client maps it to an exit status, a retry), the message for people.  A service
sends an error frame in place of the reply it would have sent; what follows it depends on the protocol
(the command and file services go on with the next request, a refused handshake closes the connection).
A parser takes everything up to the first space as the code, so an unknown code from a newer server still
parses.  The codes, each used by the services named:

===============  ===================================================================================
``bad-request``  command, files: the request is malformed or over a limit
``not-allowed``  command: argv[0] is not on the allow-list
``not-found``    command: the program cannot be executed; files: no such file
``timeout``      command: killed after the command timeout
``output-cap``   command: killed after the output cap
``busy``         command: too many commands running, or the server is stopping: retry later
``forbidden``    files: an absolute path, ``..``, a hidden component, a symbolic link, no permission
``not-a-file``   files: a directory, FIFO, socket or device
``bad-offset``   files: the resume offset is beyond the end of the file
``changed``      files (trailer): the file changed while it was sent
``auth``         the shared-secret handshake failed (then the connection closes)
``protocol``     never sent: what a client reports when a reply breaks the protocol
===============  ===================================================================================
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (a start-up cost for the CLI)
if TYPE_CHECKING:  # pragma: no cover
    pass

__all__ = ["CODES", "ERROR", "WireError", "error_frame", "is_error", "parse_error", "short"]

#: The first byte of an error frame.
ERROR = b"!"

#: Every code, with what it means (the table above).
CODES: dict[str, str] = {
    "bad-request": "the request is malformed or over a limit",
    "not-allowed": "the program is not on the allow-list",
    "not-found": "no such program or file",
    "timeout": "the command was killed after the timeout",
    "output-cap": "the command was killed after the output cap",
    "busy": "too many commands running, or the server is stopping",
    "forbidden": "the path is not allowed",
    "not-a-file": "not a regular file",
    "bad-offset": "the offset is beyond the end of the file",
    "changed": "the file changed while it was sent",
    "auth": "the shared-secret handshake failed",
    "protocol": "the reply broke the protocol (reported by a client)",
}


def error_frame(code: str, message: str) -> bytes:
    """The payload of an error frame; ``code`` must be one of :data:`CODES`."""
    if code not in CODES:
        raise ValueError(f"unknown error code {code!r}")
    return ERROR + code.encode("ascii") + b" " + message.encode("utf-8", "replace")


def is_error(frame: bytes) -> bool:
    return frame[:1] == ERROR


def parse_error(frame: bytes) -> tuple[str, str]:
    """``(code, message)`` of an error frame (an unknown code too; ``""`` for a missing one)."""
    code, _, message = frame[1:].decode("utf-8", "replace").partition(" ")
    return code, message


class WireError(Exception):
    """A request answered by an error frame: ``code`` and a one-line ``message``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def frame(self) -> bytes:
        return error_frame(self.code, self.message)


def short(text: str, limit: int = 80) -> str:
    """``text`` quoted for an error message, cut after ``limit`` characters (clients choose what it holds)."""
    return repr(text if len(text) <= limit else text[:limit] + "...")
