"""The command protocol: run an allow-listed program on the server, its output streamed back as it comes.

Wire format
===========

Request: one frame holding a UTF-8 command line of at most ``MAX_COMMAND_LINE`` (16 KiB) bytes.  It is split
by :func:`split_command_line` with the rules of ``shlex.split`` (POSIX mode, no comments: quotes and
backslashes group words; ``;``, ``|``, ``#``, ``$(...)``, backquotes and globs are ordinary characters), and
the words are passed to ``execve`` directly -- no shell ever sees them.  argv[0] must be on the allow-list
given at start-up: a bare name (``ls``) must be one of the ``--allow`` names, a name containing ``/`` must be
exactly the absolute path an allowed name resolved to at start-up.  argv[0] is checked before the rest of
the line is split, and a line may hold at most ``MAX_ARGS`` (2048) words.

Reply: a stream of frames, each tagged by its first byte::

    b"O" + bytes                 a chunk of the command's stdout, as it arrives
    b"E" + bytes                 a chunk of its stderr, as it arrives
    b"X" + b"0"                  last frame: the exit status in ASCII decimal; negative -N means killed by signal N
    b"!" + code + b" " + text    last frame instead of "X": the command was refused or stopped

Error codes (:mod:`fastframe.wire.errors`): ``not-allowed`` (argv[0] not on the allow-list), ``not-found``
(it could not be executed), ``timeout`` (killed after the server's command timeout), ``output-cap`` (killed
after the server's output cap, stdout and stderr together; the bytes up to the cap were sent),
``bad-request`` (not UTF-8, a NUL byte, unbalanced quotes, an empty line, more than ``MAX_ARGS`` words,
arguments the kernel refuses as too long, a frame over the size limit -- the last one closes the
connection), ``busy`` (as many commands as the server allows are already running, or it is stopping: worth
retrying later) and ``auth`` (:mod:`fastframe.wire.auth`).

A connection runs one command at a time; request frames that arrive meanwhile queue up and run in order,
each answered by its own stream ending in ``X`` or ``!``.  The client's end of stream (a ``shutdown``, a
close, Ctrl-C on ``fastframe exec``) cancels: the running command's tree is killed at once, the queue is
dropped and the connection closes -- the protocol has no use for a half-closed client.

The client quotes an argv list with ``shlex.join`` (:func:`request_frame`), so the server gets exactly those
words; :func:`split_command_line` is the server's splitter, and :func:`parse_command` turns a request frame
into an argv or the error frame that answers it.
"""

from __future__ import annotations

import re

from .errors import error_frame, short

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (a start-up cost for the CLI)
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterator, Sequence
    from typing import Callable

__all__ = [
    "EXIT",
    "MAX_ARGS",
    "MAX_COMMAND_LINE",
    "STDERR",
    "STDOUT",
    "exit_frame",
    "iter_words",
    "parse_command",
    "parse_exit",
    "request_frame",
    "split_command_line",
]

#: The longest command line accepted (bytes of UTF-8).  Splitting costs the loop up to about 0.2 us a byte
#: (a line of empty quotes, '', one step per two bytes: 3 ms for 16 KiB on a loaded 2-core machine), so this
#: bounds what one request costs to a few milliseconds.  The kernel would take longer lines, but a command
#: line is typed, not generated.
MAX_COMMAND_LINE = 16 * 1024
#: The most words a command line may hold.
MAX_ARGS = 2048

#: The tags of the reply frames (their first byte; an error frame's is ``!``).
STDOUT = b"O"
STDERR = b"E"
EXIT = b"X"


def request_frame(command: str | Sequence[str]) -> bytes:
    """The request for a command line, or for an argv list (quoted so that the server splits it back into
    exactly these words)."""
    if not isinstance(command, str):
        import shlex  # (only here: its import costs a client command's start-up)

        command = shlex.join(list(command))
    return command.encode("utf-8")


def exit_frame(status: int) -> bytes:
    """The last frame of a command that ran: its status (-N if signal N killed it)."""
    return EXIT + str(status).encode()


def parse_exit(frame: bytes) -> int:
    """The status in an exit frame; ValueError if it is not one."""
    if frame[:1] != EXIT or not 2 <= len(frame) <= 12:
        raise ValueError(f"not an exit frame: {frame[:16]!r}")
    return int(frame[1:])


# -- splitting a command line -------------------------------------------------------------------------------
#
# shlex.split appends to its token one character at a time and so takes quadratic time on one long word
# (a 1 MiB word took over a minute).  This splitter applies the same rules a piece at a time: it searches for
# the next character that means something (whitespace, a quote, a backslash) and copies everything before it
# in one slice; a single-quoted string is one str.find.  Every search starts where the last one stopped, so
# the whole line is scanned once: linear time.  (No regular expression with a repeated group is used: the re
# module's backtracking stack makes those superlinear on long inputs.)  The Python-level work is one step per
# quoted string, escape or word, at most one per two bytes, which MAX_COMMAND_LINE bounds.

_WHITESPACE = " \t\r\n"  # shlex's, in POSIX mode: \x0b, \x0c and Unicode spaces are word characters
_SPECIAL = re.compile(r"[ \t\r\n'\"\\]").search
_DOUBLE_SPECIAL = re.compile(r'["\\]').search
_WHITESPACE_RUN = re.compile(r"[ \t\r\n]+").match


def _after_whitespace(text: str, pos: int) -> int:
    run = _WHITESPACE_RUN(text, pos)
    return pos if run is None else run.end()


def _double_quoted(text: str, pos: int, word: list[str]) -> int:
    """Append the string whose opening quote is at ``pos - 1``; return the position after its closing quote.

    Inside double quotes a backslash escapes only a backslash and ``"``; before anything else it stays."""
    end = len(text)
    while True:
        found = _DOUBLE_SPECIAL(text, pos)
        if found is None:
            raise ValueError("No closing quotation")
        at = found.start()
        word.append(text[pos:at])
        if text[at] == '"':
            return at + 1
        if at + 1 == end:
            raise ValueError("No escaped character")
        escaped = text[at + 1]
        word.append(escaped if escaped in '\\"' else "\\" + escaped)
        pos = at + 2


def iter_words(text: str) -> Iterator[str]:
    """The words of ``text`` one by one, as :func:`split_command_line` splits them (lazily: stopping early
    leaves the rest of the line unread)."""
    end = len(text)
    pos = _after_whitespace(text, 0)
    word: list[str] = []
    in_word = False
    while pos < end:
        found = _SPECIAL(text, pos)
        at = end if found is None else found.start()
        if at > pos:
            word.append(text[pos:at])
            in_word = True
        if at == end:
            break
        char = text[at]
        if char in _WHITESPACE:
            if in_word:
                yield "".join(word)
                word = []
                in_word = False
            pos = _after_whitespace(text, at)
        elif char == "'":
            close = text.find("'", at + 1)
            if close < 0:
                raise ValueError("No closing quotation")
            word.append(text[at + 1 : close])
            in_word = True
            pos = close + 1
        elif char == '"':
            pos = _double_quoted(text, at + 1, word)
            in_word = True
        else:  # a backslash: the next character, whatever it is, stands for itself
            if at + 1 == end:
                raise ValueError("No escaped character")
            word.append(text[at + 1])
            in_word = True
            pos = at + 2
    if in_word:
        yield "".join(word)


def split_command_line(text: str) -> list[str]:
    """``shlex.split(text)`` in linear time: the same words, the same ``ValueError`` messages."""
    return list(iter_words(text))


def parse_command(raw: bytes, lookup: Callable[[str], str | None]) -> tuple[str, list[str]] | bytes:
    """``(executable, argv)`` for a request frame, or the error frame that answers it.

    ``lookup(argv0)`` returns the executable of an allowed argv[0], else None; it is asked before the rest of
    the line is split.  Any input gives one or the other: nothing else is raised."""
    if len(raw) > MAX_COMMAND_LINE:
        return error_frame("bad-request", f"the command line is {len(raw)} bytes; the limit is {MAX_COMMAND_LINE}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return error_frame("bad-request", "the command line is not valid UTF-8")
    if "\x00" in text:
        return error_frame("bad-request", "NUL byte in the command line")
    words = iter_words(text)
    try:
        argv0 = next(words, None)
        if argv0 is None:
            return error_frame("bad-request", "empty command line")
        executable = lookup(argv0)
        if executable is None:
            return error_frame("not-allowed", f"{short(argv0)} is not on the allow-list")
        argv = [argv0]
        for word in words:
            if len(argv) == MAX_ARGS:
                return error_frame("bad-request", f"more than {MAX_ARGS} words in the command line")
            argv.append(word)
    except ValueError as exc:
        return error_frame("bad-request", f"cannot split the command line: {exc}")
    return executable, argv
