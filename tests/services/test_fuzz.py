"""Fuzzing the command and file services through real servers (both engines).

Whatever a request holds -- random bytes, random JSON, random command lines -- the answer is a well-formed
reply (frames with the protocol's tags, errors with the protocol's codes), the connection stays usable or is
closed cleanly, and nothing escapes into the engine's log as a traceback.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Callable

import harness
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

COMMAND_CODES = {b"not-allowed", b"not-found", b"timeout", b"output-cap", b"bad-request", b"busy"}
FILE_CODES = {b"bad-request", b"forbidden", b"not-found", b"not-a-file", b"bad-offset", b"changed"}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

SHELLISH = st.text(alphabet=st.sampled_from(" \t\n'\"\\#$;|&`*()<>ab\u00e9\x0b"), max_size=60)
command_frames = (
    st.binary(max_size=300)
    | SHELLISH.map(lambda t: t.encode())
    | SHELLISH.map(lambda t: ("echo " + t).encode())
    | st.text(max_size=60).map(lambda t: ("echo " + t).encode("utf-8", "surrogatepass"))
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
paths = st.sampled_from(["one", "sub/two", "..", "/etc/passwd", ".hidden", "sub", "", "missing"]) | st.text(max_size=30)
file_requests = st.fixed_dictionaries(
    {"path": paths | json_values},
    optional={"offset": st.integers(min_value=-5, max_value=10) | json_values, "validator": st.text(max_size=10) | json_values,
              "trailer": st.booleans() | json_values},
)  # fmt: skip
file_frames = (
    st.binary(max_size=300)
    | json_values.map(lambda v: json.dumps(v).encode())
    | file_requests.map(lambda v: json.dumps(v).encode())
    | st.integers(min_value=1, max_value=3000).map(lambda depth: b"[" * depth + b"]" * depth)
)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fuzzroot")
    (path / "one").write_bytes(b"1")
    (path / "sub").mkdir()
    (path / "sub" / "two").write_bytes(b"22" * 1000)
    (path / ".hidden").write_text("h")
    return path


@pytest.fixture(scope="module")
def server(start_server: Callable[..., Any], root: Path) -> Any:
    return start_server("--command", "0", "--files", "0", "--allow", "echo", "--root", str(root),
                        "--command-timeout", "5", expect=2)  # fmt: skip


def read_frame_or_none(sock: Any) -> Any:
    return harness.recv_frame_or_eof(sock)


def check_log(server: Any) -> None:
    log = server.stderr()
    assert "Traceback" not in log and "failed; closing" not in log, log[-3000:]


@FUZZ
@given(raw=command_frames)
def test_command_requests(server: Any, raw: bytes) -> None:
    with harness.connect(server.addr("command")) as sock:
        sock.sendall(struct.pack("!I", len(raw)) + raw)
        frames: list[bytes] = []
        while True:
            frame = read_frame_or_none(sock)
            assert frame is not None, (raw, frames)  # never closed without a last frame
            frames.append(frame)
            if frame[:1] in (b"X", b"!"):
                break
            assert frame[:1] in (b"O", b"E"), frame
    last = frames[-1]
    if last[:1] == b"!":
        code = last[1:].split(b" ", 1)[0]
        assert code in COMMAND_CODES, last
    else:
        assert last == b"X0", last
    check_log(server)


@FUZZ
@given(raw=file_frames)
def test_file_requests(server: Any, raw: bytes) -> None:
    with harness.connect(server.addr("files")) as sock:
        sock.sendall(struct.pack("!I", len(raw)) + raw)
        meta = read_frame_or_none(sock)
        assert meta is not None, raw
        if meta[:1] == b"!":
            assert meta[1:].split(b" ", 1)[0] in FILE_CODES, meta
        else:
            assert meta[:1] == b"S", meta
            info = json.loads(meta[1:])
            harness.recv_exactly(sock, info["length"])
            if info.get("trailer"):
                assert harness.recv_frame(sock) == b"T"
        # The connection still serves a well-formed request.
        sock.sendall(struct.pack("!I", 15) + b'{"path": "one"}')
        meta = harness.recv_frame(sock)
        assert meta[:1] == b"S" and harness.recv_exactly(sock, 1) == b"1"
    check_log(server)
