"""The command service's request parser, in-process: the linear splitter against ``shlex.split``, and fuzzing.

No server here: these are the pure functions every request goes through before anything runs.
"""

from __future__ import annotations

import gc
import shlex
import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fastframe.wire.command import MAX_ARGS, MAX_COMMAND_LINE, parse_command, split_command_line

# Every character shlex treats specially (in POSIX mode without comments), '#' (a comment only when asked for),
# whitespace shlex does not count as such (\x0b, \x0c, U+00A0), and ordinary letters.
SPECIAL = " \t\r\n'\"\\#$;|&`*\x0b\x0c\u00a0ab\u00e9"
lines = st.text(alphabet=st.sampled_from(SPECIAL), max_size=40) | st.text(
    alphabet=st.characters(blacklist_characters="\x00"), max_size=40
)


def shlex_result(text: str) -> list[str] | str:
    try:
        return shlex.split(text)
    except ValueError as exc:
        return f"ValueError: {exc}"


def our_result(text: str) -> list[str] | str:
    try:
        return split_command_line(text)
    except ValueError as exc:
        return f"ValueError: {exc}"


@settings(max_examples=3000, deadline=None)
@given(lines)
@example("''")
@example("a''b")
@example('"a\\"b" \'c\\\' d\\ e \\\\\\"')
@example('"abc\\')  # a backslash at the very end, inside double quotes: "No escaped character"
@example('"abc')
@example("'abc\\")
@example("x \\\n y # not a comment")
def test_same_words_and_errors_as_shlex(text: str) -> None:
    assert our_result(text) == shlex_result(text)


@pytest.mark.parametrize(
    "text, words",
    [
        ("echo hello   world", ["echo", "hello", "world"]),
        ("ls; rm -rf /", ["ls;", "rm", "-rf", "/"]),
        ("echo '$(id)' \"`id`\" \\$HOME", ["echo", "$(id)", "`id`", "$HOME"]),
        ('echo "a\\\\b" "a\\b" "a\\"b"', ["echo", "a\\b", "a\\b", 'a"b']),
        ("echo '' \"\" x''", ["echo", "", "", "x"]),
        ("echo # not a comment", ["echo", "#", "not", "a", "comment"]),
    ],
)
def test_known_splits(text: str, words: list[str]) -> None:
    assert split_command_line(text) == words == shlex.split(text)


def lookup(argv0: str) -> str | None:
    return "/bin/echo" if argv0 == "echo" else None


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=200) | lines.map(lambda t: t.encode("utf-8", "surrogatepass"))
       | lines.map(lambda t: ("echo " + t).encode("utf-8", "surrogatepass")))  # fmt: skip
def test_any_request_gets_a_command_or_an_error_frame(raw: bytes) -> None:
    result = parse_command(raw, lookup)
    if isinstance(result, bytes):
        assert result.startswith((b"!bad-request ", b"!not-allowed ")), result
        result.decode("utf-8")  # a readable one-line message
        assert b"\n" not in result or result.startswith(b"!not-allowed ")  # argv[0] is quoted with repr()
    else:
        executable, argv = result
        assert executable == "/bin/echo" and argv[0] == "echo"
        assert argv == shlex.split(raw.decode("utf-8"))


def test_allow_list_is_checked_before_the_rest_is_split() -> None:
    assert parse_command(b"rm 'unbalanced", lookup).startswith(b"!not-allowed ")  # type: ignore[union-attr]
    assert parse_command(b"echo 'unbalanced", lookup).startswith(b"!bad-request ")  # type: ignore[union-attr]


def test_limits() -> None:
    at_limit = b"echo " + b"a" * (MAX_COMMAND_LINE - 5)
    assert parse_command(at_limit, lookup) == ("/bin/echo", ["echo", "a" * (MAX_COMMAND_LINE - 5)])
    assert parse_command(at_limit + b"a", lookup) == (
        b"!bad-request the command line is %d bytes; the limit is %d" % (MAX_COMMAND_LINE + 1, MAX_COMMAND_LINE)
    )
    words = b"echo" + b" a" * (MAX_ARGS - 1)
    assert len(parse_command(words, lookup)[1]) == MAX_ARGS
    assert parse_command(words + b" a", lookup) == b"!bad-request more than %d words in the command line" % MAX_ARGS
    for raw in (b"", b" \t\r\n "):
        assert parse_command(raw, lookup) == b"!bad-request empty command line"


@pytest.mark.timing
def test_splitting_is_linear() -> None:
    # shlex.split takes quadratic time on one long word (100 KB: 0.46 s; 1 MiB: over a minute).  Here a line
    # 16 times longer may cost at most 100 times more (16 if linear, 256 if quadratic: a wide margin for a
    # loaded machine), and the worst kinds of line at the limit stay far below what would freeze the loop.
    # Small and large are timed in turns, best of 7 each, so a busy spell of the machine hits both alike, and
    # without the cyclic GC, whose passes over the growing heap made the large lines look superlinear.
    def cost(text: str) -> float:
        gc.disable()
        try:
            start = time.perf_counter()
            split_command_line(text)
            return time.perf_counter() - start
        finally:
            gc.enable()

    for unit in ("A", "''", "a''", '"\\""', "\\a", "a ", '"a\\\\b"'):
        small, large = float("inf"), float("inf")
        for _ in range(7):
            small, large = min(small, cost(unit * 2048)), min(large, cost(unit * 32768))
        assert large < 100 * small + 0.005, (unit, small, large)
    n = MAX_COMMAND_LINE
    for line in ("x" * n, "''" * (n // 2), "a''" * (n // 3), '"\\""' * (n // 4), "\\a" * (n // 2)):
        assert min(cost(line) for _ in range(5)) < 0.05, line[:8]
