"""The codec: encoding, incremental decoding, split points, parity, zero copy.

Every test that takes ``codec`` runs against the C extension (``cython``) and the pure-Python twin
(``python``).  Expected bytes are always built independently, with :mod:`struct` or the LEB128 encoder below,
never with the code under test.
"""

from __future__ import annotations

import array
import ctypes
import importlib.machinery
import os
import random
import socket
import struct
import subprocess
import sys
import textwrap
import threading

import harness
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import MAX_OF, SPEC_PREFIXES, STRUCT_OF, leb128
from reference import header as ref_header

import fastframe
from fastframe import FrameError, FrameTooLarge, IncompleteFrame, _codec_choice, _codec_py

# A build made with FASTFRAME_NO_EXTENSIONS=1 has no extension by choice (any other build must have one).
_codec = None if _codec_choice.built_without_extensions() else importlib.import_module("fastframe._codec")

#: Prefixes that can express a payload of LARGE_FRAME (64 KiB) bytes or more.
WIDE_PREFIXES = ("!I", ">I", "<I", "!Q", ">Q", "<Q", "varint")
LARGE = 64 * 1024

HYPOTHESIS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def hdr(n: int, prefix: str) -> bytes:
    return ref_header(n, prefix)


def frames_of(payloads, prefix: str = "!I") -> bytes:
    return b"".join(hdr(len(p), prefix) + bytes(p) for p in payloads)


def payload(n: int, seed: int = 0) -> bytes:
    return random.Random(seed * 7919 + n).randbytes(n)


# ======================================================================================================
# The right implementation is loaded
# ======================================================================================================


def _pure_requested() -> bool:
    return os.environ.get("FASTFRAME_PURE_PYTHON", "").strip().lower() not in ("", "0", "false", "no", "off")


def _run_python(code: str, tmp_path, **env_overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "FASTFRAME_PURE_PYTHON"}
    env.update(env_overrides)
    # cwd is an empty directory, so the source tree can never shadow the installed package.
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_extension_really_loaded():
    """A broken build must not pass as pure Python: on CPython the extension is what the package uses, unless
    the package was built without it on purpose (FASTFRAME_NO_EXTENSIONS=1, recorded in the build)."""
    if _pure_requested() or _codec_choice.built_without_extensions():
        assert fastframe.IMPLEMENTATION == "python"
        assert _codec_choice.codec is _codec_py
        return
    if sys.implementation.name == "cpython":
        assert fastframe.IMPLEMENTATION == "cython", "the C extension is not in use: is the package built?"
        assert _codec_choice.codec is _codec
        assert _codec.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), _codec.__file__
        assert fastframe.encode is _codec.encode
        assert fastframe.Decoder is _codec.Decoder
        assert fastframe.FramedSocket.codec is _codec
    else:  # pragma: no cover - other interpreters may run either, but must tell the truth
        assert _codec_choice.codec is (_codec if fastframe.IMPLEMENTATION == "cython" else _codec_py)


def test_extension_belongs_to_the_imported_package():
    """The extension and the Python modules come from one installed copy (not a source tree plus a .so)."""
    assert _codec.__name__ == "fastframe._codec"
    assert os.path.dirname(os.path.abspath(_codec.__file__)) == os.path.dirname(os.path.abspath(fastframe.__file__))
    assert os.path.dirname(os.path.abspath(_codec_py.__file__)) == os.path.dirname(os.path.abspath(fastframe.__file__))


def test_pure_python_env_forces_twin(tmp_path):
    proc = _run_python(
        """
        import warnings
        warnings.simplefilter("error")
        import fastframe, fastframe._codec_py
        assert fastframe.IMPLEMENTATION == "python", fastframe.IMPLEMENTATION
        assert fastframe._codec_choice.codec is fastframe._codec_py
        assert fastframe.Decoder is fastframe._codec_py.Decoder
        assert fastframe.FramedSocket.codec is fastframe._codec_py
        print("OK")
        """,
        tmp_path,
        FASTFRAME_PURE_PYTHON="1",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "OK"


def test_default_import_uses_extension_in_subprocess(tmp_path):
    proc = _run_python(
        """
        import warnings
        warnings.simplefilter("error")
        import fastframe
        print(fastframe.IMPLEMENTATION)
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    if _codec_choice.built_without_extensions():
        expected = "python"  # pure by choice: still no warning
    else:
        expected = "cython" if sys.implementation.name == "cpython" else fastframe.IMPLEMENTATION
    assert proc.stdout.strip() == expected


_BLOCK_NONE = "import sys; sys.modules['fastframe._codec'] = None\n"
_BLOCK_BROKEN = textwrap.dedent(
    """
    import sys
    class _Broken:
        def find_spec(self, name, path=None, target=None):
            if name == "fastframe._codec":
                raise ImportError("simulated broken build: undefined symbol ff_wibble")
            return None
    sys.meta_path.insert(0, _Broken())
    """
)


@pytest.mark.parametrize(
    "setup, reason",
    [(_BLOCK_NONE, "fastframe._codec"), (_BLOCK_BROKEN, "simulated broken build: undefined symbol ff_wibble")],
    ids=["missing", "broken"],
)
def test_unimportable_extension_warns_and_tells_the_truth(tmp_path, setup, reason):
    proc = _run_python(
        setup
        + textwrap.dedent(
            """
            import warnings
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                import fastframe
            runtime = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
            print(repr(fastframe.IMPLEMENTATION))
            print(repr(runtime))
            print(repr(fastframe.FramedSocket.codec.__name__))
            """
        ),
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    impl, warnings_seen, framed_codec = (eval(line) for line in proc.stdout.strip().splitlines())
    assert impl == "python"
    assert framed_codec == "fastframe._codec_py"
    assert len(warnings_seen) == 1, warnings_seen
    assert reason in warnings_seen[0]


def test_unimportable_extension_is_an_error_under_warnings_as_errors(tmp_path):
    proc = _run_python(_BLOCK_BROKEN + "import warnings; warnings.simplefilter('error')\nimport fastframe\n", tmp_path)
    assert proc.returncode != 0
    assert "RuntimeWarning" in proc.stderr and "ff_wibble" in proc.stderr


# ======================================================================================================
# API surface
# ======================================================================================================


def test_same_public_names_in_both_implementations():
    assert sorted(_codec.__all__) == sorted(_codec_py.__all__)
    for name in _codec_py.__all__:
        assert hasattr(_codec, name), name
    for name in ("encode", "encode_many", "header", "Decoder", "FrameError", "FrameTooLarge", "IncompleteFrame"):
        assert name in fastframe.__all__


def test_constants(codec):
    assert set(codec.PREFIXES) == set(SPEC_PREFIXES)
    assert codec.DEFAULT_MAX_FRAME == 8 * 1024 * 1024
    assert codec.LARGE_FRAME == LARGE


def test_exception_hierarchy():
    assert issubclass(FrameError, ValueError)
    assert issubclass(FrameTooLarge, FrameError)
    assert issubclass(IncompleteFrame, FrameError)


def test_decoder_properties(codec):
    dec = codec.Decoder()
    assert dec.prefix == "!I"
    assert dec.max_frame == 8 * 1024 * 1024
    assert dec.pending == 0
    assert dec.closed is False
    dec2 = codec.Decoder("varint", 1234)
    assert (dec2.prefix, dec2.max_frame) == ("varint", 1234)
    assert "varint" in repr(dec2)
    dec2.close()
    assert dec2.closed is True


def _public(cls) -> set:
    return {n for n in dir(cls) if not n.startswith("_")}


def test_same_signatures_in_both_implementations():
    """Every public function and every public method and property of Decoder: the same names, parameters,
    defaults and kinds in both implementations."""
    import inspect

    def params(fn):
        return [(p.name, p.default, p.kind) for p in inspect.signature(fn).parameters.values()]

    for name in ("encode", "encode_many", "header", "write_frames"):
        assert params(getattr(_codec, name)) == params(getattr(_codec_py, name)), name
    names = _public(_codec_py.Decoder)
    assert _public(_codec.Decoder) == names
    methods = sorted(n for n in names if callable(getattr(_codec_py.Decoder, n)))
    assert set(methods) >= {"feed", "get_buffer", "buffer_updated", "read_from", "feed_wire", "read_wire_from",
                            "relay", "close"}  # fmt: skip
    for name in methods:
        assert params(getattr(_codec.Decoder, name)) == params(getattr(_codec_py.Decoder, name)), name
    for name in sorted(names - set(methods)):  # properties: settable in both or in neither
        outcomes = []
        for m in (_codec, _codec_py):
            dec = m.Decoder()
            try:
                setattr(dec, name, getattr(dec, name))
                outcomes.append("set")
            except AttributeError:
                outcomes.append("read-only")
        assert outcomes[0] == outcomes[1], name
    # The extension's constructor is a slot (no inspectable signature): compare what it accepts instead.
    expected = [
        ("prefix", "!I", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("max_frame", None, inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("offset", 0, inspect.Parameter.KEYWORD_ONLY),
        ("adjust", 0, inspect.Parameter.KEYWORD_ONLY),
        ("strip", None, inspect.Parameter.KEYWORD_ONLY),
    ]
    assert params(_codec_py.Decoder.__init__)[1:] == expected
    for m in (_codec, _codec_py):
        dec = m.Decoder(prefix="!H", max_frame=None, offset=1, adjust=2, strip=0)
        assert (dec.prefix, dec.max_frame, dec.offset, dec.adjust, dec.strip) == ("!H", 8 << 20, 1, 2, 0)
        with pytest.raises(TypeError):
            m.Decoder("!H", 100, 1)  # the options are keyword-only
        with pytest.raises(TypeError):
            m.Decoder(bogus=1)


def test_stub_matches_the_extension(tmp_path):
    """mypy's stubtest: fastframe/_codec.pyi states the extension's real names and signatures; and it
    marks Decoder @final (stubtest does not check that for extension types, so it is read here)."""
    import ast

    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "fastframe._codec"], cwd=tmp_path, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    stub = os.path.join(os.path.dirname(fastframe.__file__), "_codec.pyi")
    with open(stub) as f:
        tree = ast.parse(f.read())
    (decoder,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Decoder"]
    assert [getattr(d, "id", None) for d in decoder.decorator_list] == ["final"]


def test_decoder_is_final_in_both_implementations():
    messages = []
    for m in (_codec, _codec_py):
        with pytest.raises(TypeError) as info:
            type("Sub", (m.Decoder,), {})
        messages.append(str(info.value).replace(m.__name__, "MODULE"))
    assert messages[0] == messages[1] == "type 'MODULE.Decoder' is not an acceptable base type"


def test_keyword_arguments(codec):
    assert codec.encode(payload=b"a", prefix="!B") == b"\x01a"
    assert codec.encode_many(payloads=[b"a", b""], prefix="!B") == b"\x01a\x00"
    assert codec.header(length=3, prefix="<H") == b"\x03\x00"
    dec = codec.Decoder(prefix="!B", max_frame=3)
    view = dec.get_buffer(sizehint=5)
    view[:2] = b"\x01z"
    view.release()
    assert dec.buffer_updated(nbytes=2) == [b"z"]
    assert dec.feed(data=b"\x00") == [b""]


def test_copying_a_decoder_is_refused(codec):
    """A decoder is a position in one byte stream: both implementations refuse to copy or pickle it
    (a copy would share the read buffer with its original, or silently fork the stream)."""
    import copy
    import pickle

    dec = codec.Decoder("!H")
    assert dec.feed(b"\x00\x05ab") == []
    for attempt in (copy.copy, copy.deepcopy, pickle.dumps):
        with pytest.raises(TypeError):
            attempt(dec)
    assert dec.feed(b"cde") == [b"abcde"]  # the original is unharmed


def test_decoder_argument_errors(codec):
    with pytest.raises(ValueError):
        codec.Decoder("!I", -1)
    with pytest.raises(TypeError):
        codec.Decoder("!I", 1.5)
    with pytest.raises(OverflowError):
        codec.Decoder("!I", sys.maxsize + 1)
    assert codec.Decoder("!I", 0).feed(hdr(0, "!I")) == [b""]


# ======================================================================================================
# Encoding
# ======================================================================================================

SIZES = (0, 1, 2, 127, 128, 255, 256, 300, 16383, 16384, 65535, 65536, 70000)


@pytest.mark.parametrize("prefix", SPEC_PREFIXES)
def test_encode_matches_hand_built_frames(codec, prefix):
    for n in SIZES:
        if n > MAX_OF[prefix]:
            continue
        data = payload(n)
        expected = hdr(n, prefix) + data
        got = codec.encode(data, prefix)
        assert type(got) is bytes
        assert got == expected, (prefix, n)
        assert codec.header(n, prefix) == hdr(n, prefix)


def test_default_prefix_is_network_order_uint32(codec):
    for n in (0, 1, 1000, 70000):
        data = payload(n)
        assert codec.encode(data) == struct.pack("!I", n) + data
        assert codec.header(n) == struct.pack("!I", n)
        assert codec.encode_many([data, data]) == (struct.pack("!I", n) + data) * 2
        assert codec.Decoder().prefix == "!I"


@pytest.mark.parametrize("prefix", SPEC_PREFIXES)
def test_header_boundary_values(codec, prefix):
    values = [0, 1, 127, 128, 255, 256, 16383, 16384, 65535, 65536, 2**21, 2**32 - 1, 2**32, 2**35, 2**63, 2**64 - 1]
    for n in values:
        if n <= MAX_OF[prefix]:
            assert codec.header(n, prefix) == hdr(n, prefix), (prefix, n)
        else:
            with pytest.raises(FrameTooLarge) as info:
                codec.header(n, prefix)
            assert (info.value.size, info.value.limit) == (n, MAX_OF[prefix])


def test_synonyms_are_identical(codec):
    for n in (0, 5, 255):
        data = payload(n)
        assert codec.encode(data, ">B") == codec.encode(data, "!B") == codec.encode(data, "<B") == bytes([n]) + data
    for w in "HIQ":
        data = payload(300)
        assert codec.encode(data, ">" + w) == codec.encode(data, "!" + w) == struct.pack(">" + w, 300) + data
        assert codec.encode(data, "<" + w) == struct.pack("<" + w, 300) + data


def test_varint_known_vectors(codec):
    # From the protobuf encoding guide: 1 -> 01, 150 -> 96 01, 300 -> ac 02.
    assert codec.header(1, "varint") == b"\x01"
    assert codec.header(150, "varint") == b"\x96\x01"
    assert codec.header(300, "varint") == b"\xac\x02"
    assert codec.header(0, "varint") == b"\x00"
    assert codec.header(2**64 - 1, "varint") == b"\xff" * 9 + b"\x01"


@pytest.mark.parametrize("prefix", SPEC_PREFIXES)
def test_encode_many_is_concatenation(codec, prefix):
    items = [payload(n, i) for i, n in enumerate((0, 1, 17, 255, 0, 3))]
    expected = b"".join(hdr(len(p), prefix) + p for p in items)
    assert codec.encode_many(items, prefix) == expected
    assert codec.encode_many(iter(items), prefix) == expected
    assert codec.encode_many(tuple(items), prefix) == expected
    assert codec.encode_many((p for p in items), prefix) == expected
    assert codec.encode_many([], prefix) == b""
    assert codec.encode_many([b""], prefix) == hdr(0, prefix)


def _buffer_kinds(data: bytes):
    yield "bytes", data
    yield "bytearray", bytearray(data)
    yield "memoryview", memoryview(data)
    yield "memoryview-slice", memoryview(b"xx" + data + b"yy")[2 : 2 + len(data)]
    yield "array-B", array.array("B", data)
    if len(data) % 4 == 0:
        yield "array-i", array.array("i", data)  # counted in bytes, not items
    if len(data) % 4 == 0 and data:
        yield "memoryview-2d", memoryview(data).cast("B", (4, len(data) // 4))


@pytest.mark.parametrize("n", [0, 8, 4096, 70000])
def test_bytes_like_inputs(codec, n):
    data = payload(n)
    expected = struct.pack("!I", n) + data
    for kind, obj in _buffer_kinds(data):
        assert codec.encode(obj) == expected, kind
        assert codec.encode_many([obj, obj]) == expected * 2, kind
    # The decoder takes the same kinds of input.
    for kind, obj in _buffer_kinds(expected):
        assert codec.Decoder().feed(obj) == [data], kind


def test_non_contiguous_memoryview_raises_buffererror(codec):
    strided = memoryview(bytes(range(20)))[::2]
    assert not strided.c_contiguous
    with pytest.raises(BufferError):
        codec.encode(strided)
    with pytest.raises(BufferError):
        codec.encode_many([b"ok", strided])
    with pytest.raises(BufferError):
        codec.Decoder().feed(memoryview(struct.pack("!I", 3) + b"abcabc")[::2])


@pytest.mark.parametrize("bad", ["text", 42, None, [1, 2]])
def test_non_buffers_raise_typeerror(codec, bad):
    with pytest.raises(TypeError):
        codec.encode(bad)
    with pytest.raises(TypeError):
        codec.encode_many([b"ok", bad])
    with pytest.raises(TypeError):
        codec.Decoder().feed(bad)


@pytest.mark.parametrize("prefix", ["", "I", "!i", "!L", "=I", "@I", "VARINT", "!I ", b"!I", None, 4])
def test_unknown_prefix_raises_valueerror(codec, prefix):
    with pytest.raises(ValueError):
        codec.encode(b"x", prefix)
    with pytest.raises(ValueError):
        codec.encode_many([b"x"], prefix)
    with pytest.raises(ValueError):
        codec.header(1, prefix)
    with pytest.raises(ValueError):
        codec.Decoder(prefix)


# ======================================================================================================
# Decoding: simple cases, pending
# ======================================================================================================


@pytest.mark.parametrize("prefix", SPEC_PREFIXES)
def test_decode_whole_stream(codec, prefix):
    items = [b"", b"a", payload(200), b"", payload(255, 1)]
    dec = codec.Decoder(prefix)
    out = dec.feed(frames_of(items, prefix))
    assert out == items
    assert all(type(f) is bytes for f in out)
    assert dec.pending == 0
    dec.close()


def test_zero_length_frames(codec):
    for prefix in SPEC_PREFIXES:
        dec = codec.Decoder(prefix)
        assert dec.feed(hdr(0, prefix) * 5) == [b""] * 5
        assert dec.pending == 0
        assert codec.encode(b"", prefix) == hdr(0, prefix)
        assert codec.encode(bytearray(), prefix) == hdr(0, prefix)
        assert codec.header(0, prefix) == hdr(0, prefix)


def test_empty_feed_returns_nothing(codec):
    dec = codec.Decoder()
    assert dec.feed(b"") == []
    assert dec.feed(b"\x00\x00") == []
    assert dec.feed(b"") == []
    assert dec.pending == 2


@pytest.mark.parametrize("prefix", ["!I", "<H", "varint", "!Q"])
def test_pending_counts_header_and_payload_bytes(codec, prefix):
    data = payload(500)
    stream = hdr(500, prefix) + data
    h = len(hdr(500, prefix))
    for mode in ("feed", "buffer"):
        dec = codec.Decoder(prefix)
        for i in range(len(stream)):
            chunk = stream[i : i + 1]
            out = dec.feed(chunk) if mode == "feed" else _via_buffer(dec, chunk)
            if i < len(stream) - 1:
                assert out == []
                assert dec.pending == i + 1, (mode, i)
            else:
                assert out == [data]
                assert dec.pending == 0
        assert h == len(stream) - 500


@pytest.mark.parametrize("prefix", ["!I", "varint"])
def test_pending_for_large_frame(codec, prefix):
    n = LARGE + 100
    data = payload(n)
    stream = hdr(n, prefix) + data
    h = len(stream) - n
    dec = codec.Decoder(prefix)
    assert dec.feed(stream[: h + 10]) == []
    assert dec.pending == h + 10
    assert _via_buffer(dec, stream[h + 10 : h + 5000]) == []
    assert dec.pending == h + 5000
    assert dec.feed(stream[h + 5000 : -1]) == []
    assert dec.pending == len(stream) - 1
    assert dec.feed(stream[-1:]) == [data]
    assert dec.pending == 0


# ======================================================================================================
# Split points
# ======================================================================================================


def _via_buffer(dec, chunk: bytes, sizehint: int = -1):
    out = []
    pos = 0
    while pos < len(chunk):
        view = dec.get_buffer(sizehint)
        assert len(view) > 0
        k = min(len(view), len(chunk) - pos)
        view[:k] = chunk[pos : pos + k]
        view.release()
        out += dec.buffer_updated(k)
        pos += k
    return out


def _decode(dec, chunks, mode: str):
    out = []
    for i, chunk in enumerate(chunks):
        if mode == "buffer" or (mode == "mixed" and i % 2):
            out += _via_buffer(dec, chunk)
        else:
            out += dec.feed(chunk)
    return out


MODES = ("feed", "buffer", "mixed")
SMALL_ITEMS = [b"", b"\x01", b"ab", payload(130), b"", payload(255, 2)]


@pytest.mark.parametrize("prefix", SPEC_PREFIXES)
def test_every_split_index_small_stream(codec, prefix):
    stream = frames_of(SMALL_ITEMS, prefix)
    for mode in MODES:
        for i in range(len(stream) + 1):
            dec = codec.Decoder(prefix)
            out = _decode(dec, [stream[:i], stream[i:]], mode)
            assert out == SMALL_ITEMS, (mode, i)
            assert dec.pending == 0
            dec.close()


@pytest.mark.parametrize("prefix", SPEC_PREFIXES)
def test_byte_at_a_time_small_stream(codec, prefix):
    stream = frames_of(SMALL_ITEMS, prefix)
    for mode in MODES:
        dec = codec.Decoder(prefix)
        out = []
        for i in range(len(stream)):
            out += _decode(
                dec, [stream[i : i + 1]], "buffer" if (mode == "buffer" or (mode == "mixed" and i % 2)) else "feed"
            )
        assert out == SMALL_ITEMS, mode
        dec.close()


# Two large frames back to back (the header-alone path), a large frame after small ones, and one of exactly
# LARGE_FRAME bytes.
LARGE_ITEMS = [b"", b"x", payload(100), payload(LARGE + 7, 1), payload(LARGE + 1000, 2), b"z", payload(LARGE, 3)]


def _boundaries(items, prefix):
    pos, out = 0, []
    for p in items:
        out.append(pos)
        pos += len(hdr(len(p), prefix))
        out.append(pos)
        pos += len(p)
    out.append(pos)
    return out


@pytest.mark.parametrize("prefix", WIDE_PREFIXES)
def test_split_points_large_stream(codec, prefix):
    stream = frames_of(LARGE_ITEMS, prefix)
    splits = set(range(0, len(stream) + 1, 3001))
    for b in _boundaries(LARGE_ITEMS, prefix):
        splits.update(range(max(0, b - 11), min(len(stream), b + 11) + 1))
    for mode in MODES:
        for i in sorted(splits):
            dec = codec.Decoder(prefix)
            out = _decode(dec, [stream[:i], stream[i:]], mode)
            assert out == LARGE_ITEMS, (mode, i)
            assert dec.pending == 0


@pytest.mark.parametrize("prefix", WIDE_PREFIXES)
def test_three_chunks_around_large_headers(codec, prefix):
    stream = frames_of(LARGE_ITEMS, prefix)
    bounds = _boundaries(LARGE_ITEMS, prefix)
    rng = random.Random(prefix)
    for _ in range(60):
        i = rng.choice(bounds) + rng.randint(-6, 6)
        j = rng.choice(bounds) + rng.randint(-6, 6)
        i, j = sorted((min(max(i, 0), len(stream)), min(max(j, 0), len(stream))))
        for mode in MODES:
            dec = codec.Decoder(prefix)
            assert _decode(dec, [stream[:i], stream[i:j], stream[j:]], mode) == LARGE_ITEMS, (mode, i, j)


@pytest.mark.parametrize("prefix", ["!I", "varint"])
@pytest.mark.parametrize("mode", MODES)
def test_byte_at_a_time_large_stream(codec, prefix, mode):
    items = [b"", payload(50), payload(LARGE, 1), payload(LARGE + 3, 2), b"q"]
    stream = frames_of(items, prefix)
    dec = codec.Decoder(prefix)
    out = []
    use_buffer = mode == "buffer"
    for i in range(len(stream)):
        chunk = stream[i : i + 1]
        if mode == "mixed":
            use_buffer = bool(i % 2)
        if use_buffer:
            view = dec.get_buffer()
            view[0:1] = chunk
            view.release()
            out += dec.buffer_updated(1)
        else:
            out += dec.feed(chunk)
    assert out == items
    assert dec.pending == 0


@pytest.mark.parametrize("sizehint", [-1, 0, 1, 100, 4096, 70000, 1 << 20])
def test_sizehint_never_changes_results(codec, sizehint):
    items = [payload(n, n) for n in (0, 3, 5000, LARGE + 5, 20000)]
    stream = frames_of(items)
    dec = codec.Decoder()
    assert _via_buffer(dec, stream, sizehint) == items
    assert len(dec.get_buffer(sizehint)) >= 1


# ======================================================================================================
# Property tests
# ======================================================================================================


@st.composite
def frames_and_chunks(draw, allow_large: bool = True):
    prefix = draw(st.sampled_from(SPEC_PREFIXES))
    limit = min(MAX_OF[prefix], 600)
    small = st.binary(max_size=limit)
    if allow_large and MAX_OF[prefix] >= LARGE + 64:
        big = st.integers(LARGE, LARGE + 64).map(lambda n: payload(n, n))
        item = st.one_of(small, small, small, small, small, small, big)
    else:
        item = small
    payloads = draw(st.lists(item, max_size=8))
    stream = frames_of(payloads, prefix)
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    bounds = [0] + cuts + [len(stream)]
    chunks = [stream[a:b] for a, b in zip(bounds, bounds[1:])]
    return prefix, payloads, chunks


@HYPOTHESIS
@given(case=frames_and_chunks(), mode=st.sampled_from(MODES))
def test_roundtrip_random_chunks(codec, case, mode):
    prefix, payloads, chunks = case
    assert codec.encode_many(payloads, prefix) == b"".join(chunks)
    dec = codec.Decoder(prefix)
    assert _decode(dec, chunks, mode) == payloads
    assert dec.pending == 0
    dec.close()


@HYPOTHESIS
@given(case=frames_and_chunks(), sizehint=st.integers(-1, 300_000))
def test_roundtrip_random_chunks_with_sizehint(codec, case, sizehint):
    prefix, payloads, chunks = case
    dec = codec.Decoder(prefix)
    out = []
    for c in chunks:
        out += _via_buffer(dec, c, sizehint)
    assert out == payloads


@HYPOTHESIS
@given(prefix=st.sampled_from(SPEC_PREFIXES), data=st.lists(st.binary(max_size=300), max_size=6))
def test_parity_encodings_byte_identical(prefix, data):
    data = [d[: MAX_OF[prefix]] for d in data]
    for d in data:
        assert _codec.encode(d, prefix) == _codec_py.encode(d, prefix) == hdr(len(d), prefix) + d
        assert _codec.header(len(d), prefix) == _codec_py.header(len(d), prefix)
    assert _codec.encode_many(data, prefix) == _codec_py.encode_many(data, prefix) == frames_of(data, prefix)


@HYPOTHESIS
@given(prefix=st.sampled_from(SPEC_PREFIXES), n=st.integers(0, 2**64 + 5))
def test_parity_headers(prefix, n):
    results = []
    for m in (_codec, _codec_py):
        try:
            results.append(("ok", m.header(n, prefix)))
        except FrameTooLarge as exc:
            results.append(("too large", exc.size, exc.limit))
    assert results[0] == results[1]
    if n <= MAX_OF[prefix]:
        assert results[0] == ("ok", hdr(n, prefix))
    else:
        assert results[0] == ("too large", n, MAX_OF[prefix])


@HYPOTHESIS
@given(case=frames_and_chunks(), mode=st.sampled_from(MODES))
def test_parity_decoded_frames(case, mode):
    prefix, payloads, chunks = case
    c = _decode(_codec.Decoder(prefix), chunks, mode)
    p = _decode(_codec_py.Decoder(prefix), chunks, mode)
    assert c == p == payloads


def _outcome(dec, chunk, use_buffer):
    try:
        frames = _via_buffer(dec, chunk) if use_buffer else dec.feed(chunk)
        return ("ok", frames, dec.pending)
    except FrameError as exc:
        return (type(exc).__name__, str(exc), exc.frames, getattr(exc, "size", None), getattr(exc, "limit", None))


@HYPOTHESIS
@given(
    prefix=st.sampled_from(SPEC_PREFIXES),
    max_frame=st.integers(0, 400),
    garbage=st.lists(st.binary(max_size=40), max_size=10),
    use_buffer=st.booleans(),
)
def test_parity_on_arbitrary_input(prefix, max_frame, garbage, use_buffer):
    """Any byte stream, however chunked: both decoders return the same frames or raise the same error."""
    dc, dp = _codec.Decoder(prefix, max_frame), _codec_py.Decoder(prefix, max_frame)
    for chunk in garbage:
        oc, op = _outcome(dc, chunk, use_buffer), _outcome(dp, chunk, use_buffer)
        assert oc == op
        if oc[0] != "ok":
            break
    closes = []
    for d in (dc, dp):
        try:
            d.close()
            closes.append(None)
        except IncompleteFrame as exc:
            closes.append((exc.received, exc.expected))
    assert closes[0] == closes[1]


# ======================================================================================================
# Zero copy: a large frame is received straight into the object that is returned
# ======================================================================================================

BYTES_DATA_OFFSET = sys.getsizeof(b"") - 1  # PyBytesObject header before ob_sval


def _address(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


#: The extension receives a large frame into its object except its last bytes, at most this many, which
#: come through the read buffer with the next header (so the view a transport still holds when the frame
#: completes never shows the object returned); see _lend() in src/_codec.pyx.
TAIL = 1024

#: Layouts a large frame is received in: (prefix, options, header bytes of a frame of n bytes).
LARGE_LAYOUTS = {
    "!I": ("!I", {}),
    "<I": ("<I", {}),
    "!Q": ("!Q", {}),
    "<Q": ("<Q", {}),
    "varint": ("varint", {}),
    "!3": ("!3", {}),
    "postgres": ("!I", {"offset": 1, "adjust": -4, "strip": 0}),
    "mysql": ("<3", {"adjust": 1}),
    "hdr1-len-hdr2": ("!3", {"offset": 1, "adjust": 1, "strip": 1}),
    "varint-offset-whole": ("varint", {"offset": 2, "strip": 0}),
}


def wire_frame(body: bytes, prefix: str, options: dict, lead: bytes = b"") -> bytes:
    """One frame built with the reference encoder: ``lead`` (offset bytes), the field, the body."""
    offset = options.get("offset", 0)
    lead = (lead or b"\xca\xfe" * offset)[:offset]
    return lead + ref_header(len(body) - options.get("adjust", 0), prefix) + body


def returned(frame: bytes, prefix: str, options: dict) -> bytes:
    """What a decoder with these options returns for the wire ``frame``."""
    strip = options.get("strip")
    if strip is None:
        offset = options.get("offset", 0)
        return frame[offset + len(ref_header(_field_value(frame, prefix, offset), prefix)) :]
    return frame[strip:]


def _field_value(frame: bytes, prefix: str, offset: int) -> int:
    if prefix == "varint":
        value = shift = 0
        for b in frame[offset:]:
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value
    width = 3 if prefix[1] == "3" else struct.calcsize(STRUCT_OF[prefix])
    return int.from_bytes(frame[offset : offset + width], "little" if prefix[0] == "<" else "big")


@pytest.mark.parametrize("layout", list(LARGE_LAYOUTS))
def test_large_frames_are_received_in_place(codec, layout):
    """recv_into the windows get_buffer() lends, as asyncio's transport does, for large frames back to back.

    The extension receives each large frame into the very bytes object it returns: every window lent for it
    lies in that object, contiguously, and only its last TAIL bytes (and its header, when strip keeps it) are
    copied.  The twin collects it in pieces no larger than what has already arrived (or 64 KiB)."""
    prefix, options = LARGE_LAYOUTS[layout]
    bodies = [payload(n, i) for i, n in enumerate([LARGE + 10, 300_000, LARGE + 3000])]
    frames = [wire_frame(body, prefix, options) for body in bodies]
    expected = [returned(f, prefix, options) for f in frames]
    assert all(len(e) >= LARGE for e in expected)
    head0 = len(frames[0]) - len(bodies[0])
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    first_header_read = threading.Event()
    errors = []

    def sender():
        try:
            a.sendall(frames[0][:head0])
            assert first_header_read.wait(10)
            # Back to back, each header with its body and the next frame: the windows decide what is read.
            a.sendall(frames[0][head0:] + b"".join(frames[1:]))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    windows = []  # (address, length lent, bytes received into it)
    got = []
    try:
        dec = codec.Decoder(prefix, **options)
        while len(got) < len(frames):
            view = dec.get_buffer()
            window = (_address(view), len(view))
            if dec.pending and codec is _codec_py:
                assert len(view) <= max(LARGE, dec.pending), "the twin lent more than what has arrived"
            n = b.recv_into(view)
            view.release()
            assert n > 0
            windows.append((*window, n))
            got += dec.buffer_updated(n)
            if not first_header_read.is_set():
                assert dec.pending == head0 and not got
                first_header_read.set()
        assert dec.pending == 0
    finally:
        b.close()  # a sender blocked in sendall() fails at once instead of waiting for its timeout
        t.join(10)
        a.close()
    assert not t.is_alive()
    assert not errors
    assert got == expected
    if codec is _codec:
        for frame, wire in zip(got, frames):
            base = id(frame) + BYTES_DATA_OFFSET
            inside = [(addr, n) for addr, length, n in windows if base <= addr < base + len(frame)]
            assert inside, "no window was lent from the returned object: it is not the memory the kernel wrote"
            pos = inside[0][0]
            for addr, n in inside:
                assert addr == pos, "the frame's memory moved between windows"
                pos += n
            copied = len(frame) - sum(n for _, n in inside)
            header_kept = max(0, len(frame) - len(bodies[frames.index(wire)]))  # header bytes the frame keeps
            assert copied <= TAIL + header_kept, f"{copied} bytes of a {len(frame)}-byte frame were copied"


def test_header_window_after_large_frame_is_exact(codec):
    """After a large frame, get_buffer() lends exactly the header's width (4 bytes for "!I"); while the last
    bytes of a large frame are awaited, it lends exactly those and the next header."""
    data = payload(LARGE + 1)
    dec = codec.Decoder("!I")
    assert dec.feed(struct.pack("!I", len(data)) + data[:10]) == []
    assert dec.feed(data[10:]) == [data]
    view = dec.get_buffer(1 << 20)
    assert len(view) == 4
    view[:2] = b"\x00\x00"
    view.release()
    assert dec.buffer_updated(2) == []
    view = dec.get_buffer()
    assert len(view) == 2
    view[:] = b"\x00\x05"
    view.release()
    assert dec.buffer_updated(2) == []
    # A small frame follows: the decoder goes back to reading in big chunks.
    assert _via_buffer(dec, b"hello") == [b"hello"]
    assert len(dec.get_buffer()) > 4
    # The tail of a large frame: its last bytes and the next header, in one window.
    assert dec.feed(struct.pack("!I", len(data)) + data[:-100]) == []
    view = dec.get_buffer(1 << 20)
    assert len(view) == 100 + 4
    view[:] = data[-100:] + struct.pack("!I", 3)
    view.release()
    assert dec.buffer_updated(104) == [data]
    assert dec.pending == 4
    assert dec.feed(b"abc") == [b"abc"]


# ======================================================================================================
# Memory safety: a view kept past its use never sees (or corrupts) moved data
# ======================================================================================================


def test_stale_view_survives_buffer_growth(codec):
    dec = codec.Decoder("!I")
    stale = dec.get_buffer()
    data = payload(LARGE - 1)  # just below LARGE_FRAME: assembled in the read buffer
    frame = struct.pack("!I", len(data)) + data
    assert len(frame) - 1 > len(stale), "the test must force the read buffer to grow"
    assert dec.feed(frame[:-1]) == []
    stale[:] = b"\xee" * len(stale)
    assert dec.feed(frame[-1:]) == [data]
    stale[:] = b"\xdd" * len(stale)
    assert dec.feed(frame) == [data]


def test_stale_view_survives_compaction(codec):
    dec = codec.Decoder("!I")
    smalls = [payload(1000, i) for i in range(20)]
    big = payload(60000, 99)  # below LARGE_FRAME, so it is assembled in the read buffer
    big_frame = struct.pack("!I", len(big)) + big
    assert _via_buffer(dec, frames_of(smalls) + big_frame[:5004]) == smalls
    assert dec.pending == 5004
    stale = dec.get_buffer()
    more = big_frame[5004:50004]
    assert len(more) > len(stale), "the test must force the decoder to move the partial frame"
    assert dec.feed(more) == []
    stale[:] = b"\xee" * len(stale)
    assert dec.feed(big_frame[50004:]) == [big]
    assert dec.pending == 0


def test_stale_view_survives_get_buffer_growth(codec):
    dec = codec.Decoder("!I")
    data = payload(LARGE - 10)
    frame = struct.pack("!I", len(data)) + data
    assert _via_buffer(dec, frame[:100]) == []
    stale = dec.get_buffer()
    fresh = dec.get_buffer(len(frame))
    k = min(len(fresh), len(frame) - 100)
    fresh[:k] = frame[100 : 100 + k]
    fresh.release()
    assert dec.buffer_updated(k) == ([data] if 100 + k == len(frame) else [])
    stale[:] = b"\xee" * len(stale)
    out = [data] if 100 + k == len(frame) else _via_buffer(dec, frame[100 + k :])
    assert out == [data]


@pytest.mark.parametrize("sizehint", [1.5, 2**64, -(2**64), "16"])
def test_get_buffer_sizehint_argument_parity(sizehint):
    """Both implementations accept or reject the same sizehint arguments, with the same exception type."""
    outcomes = []
    for m in (_codec, _codec_py):
        try:
            view = m.Decoder().get_buffer(sizehint)
            outcomes.append(("ok", len(view)))
            view.release()
        except Exception as exc:  # noqa: BLE001 - the type is what is compared
            outcomes.append(("raised", type(exc)))
    assert outcomes[0] == outcomes[1], f"cython: {outcomes[0]}, python: {outcomes[1]}"


def test_buffer_updated_after_feed_is_refused(codec):
    """feed() between get_buffer() and buffer_updated() revokes the lent window."""
    dec = codec.Decoder()
    view = dec.get_buffer()
    view[:5] = b"\x00\x00\x00\x01x"
    assert dec.feed(b"") == []
    with pytest.raises(ValueError):
        dec.buffer_updated(5)
    view.release()
    assert dec.feed(b"\x00\x00\x00\x01y") == [b"y"]


def test_reference_helpers_match_known_vectors():
    """The shared reference encoders (``harness.encode``, ``harness.header``) are themselves checked against fixed vectors."""
    assert set(harness.PREFIXES) == set(SPEC_PREFIXES)
    assert harness.header(300, "varint") == b"\xac\x02" == leb128(300)
    assert harness.header(2**64 - 1, "varint") == b"\xff" * 9 + b"\x01"
    assert harness.header(1, "!I") == b"\x00\x00\x00\x01"
    assert harness.header(1, "<Q") == b"\x01" + b"\x00" * 7
    assert harness.header(258, ">H") == b"\x01\x02"
    assert harness.encode([b"ab", b""], "!B") == b"\x02ab\x00"
    for p in SPEC_PREFIXES:
        assert harness.max_payload(p) == MAX_OF[p]
        assert harness.header(77, p) == hdr(77, p)
