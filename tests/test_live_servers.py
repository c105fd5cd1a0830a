"""fastframe frames real protocols, proven on live servers nobody here wrote: PostgreSQL and MariaDB.

A raw socket talks to a throwaway server (tests/live.py): every message we send is encoded with fastframe,
every message the server sends is framed by a fastframe Decoder receiving through get_buffer()/
buffer_updated() with random window sizes.  The bytes received are then decoded again, by both
implementations, in random chunks, through feed() and through get_buffer(); the frames must be the same.
The values read are cross-checked against a real client library (psycopg, pymysql).
"""

from __future__ import annotations

import hashlib
import random
import socket
import struct
from types import ModuleType

import pytest
from live import PASSWORD, USER

from fastframe import Framing, _codec, _codec_py

pytestmark = pytest.mark.live

MiB = 1024 * 1024
TIMEOUT = 30.0


class Conversation:
    """A raw TCP connection whose replies are framed by ``codec.Decoder(framing)`` through get_buffer()."""

    def __init__(self, codec: ModuleType, framing: Framing, port: int, seed: int) -> None:
        self.codec = codec
        self.framing = framing
        self.decoder = codec.Decoder(framing)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.rng = random.Random(seed)
        self.received = bytearray()  # every byte the server sent, for the re-decoding
        self.frames: list[bytes] = []

    def send(self, payload: bytes, layout: object = None) -> None:
        self.sock.sendall(self.codec.encode(payload, layout or self.framing))

    def next(self) -> bytes:
        while not self.frames:
            view = self.decoder.get_buffer(self.rng.choice([-1, 1, 7, 100, 4096, 1 << 20]))
            n = self.sock.recv_into(view, self.rng.randint(1, len(view)))
            self.received += view[:n]
            view.release()
            assert n, "the server closed the connection"
            self.frames += self.decoder.buffer_updated(n)
        return self.frames.pop(0)

    def close(self) -> None:
        self.sock.close()


def redecode_everywhere(framing: Framing, stream: bytes, expected: list[bytes], seed: int) -> None:
    """Both implementations, random chunks, feed() and get_buffer(): the same frames as the live decoder."""
    rng = random.Random(seed)
    for module in (_codec, _codec_py):
        for use_buffer in (False, True):
            dec = module.Decoder(framing)
            frames: list[bytes] = []
            pos = 0
            while pos < len(stream):
                chunk = stream[pos : pos + rng.choice([1, 3, 64, 1500, 65536, 1 << 20])]
                pos += len(chunk)
                if not use_buffer:
                    frames += dec.feed(chunk)
                    continue
                k = 0
                while k < len(chunk):
                    view = dec.get_buffer(rng.choice([-1, 100, 1 << 20]))
                    m = min(len(view), len(chunk) - k)
                    view[:m] = chunk[k : k + m]
                    view.release()
                    frames += dec.buffer_updated(m)
                    k += m
            dec.close()
            assert len(frames) == len(expected), (module.__name__, use_buffer)
            assert frames == expected, (module.__name__, use_buffer)


# ======================================================================================================
# PostgreSQL: a type byte, then a 4-byte length that counts itself (offset=1, adjust=-4); strip=0 keeps both
# ======================================================================================================

POSTGRES = Framing("!I", offset=1, adjust=-4, strip=0, max_frame=16 * MiB)
BIG = 10_000_000
QUERY = f"SELECT repeat('x', {BIG}) AS big, 42 AS answer, 'fastframe' AS name"


def pg_fields(body: bytes) -> list[bytes]:
    """A DataRow's column values (int16 count, then int32 length + bytes each)."""
    (count,) = struct.unpack_from("!h", body)
    pos = 2
    values = []
    for _ in range(count):
        (n,) = struct.unpack_from("!i", body, pos)
        pos += 4
        values.append(body[pos : pos + n])
        pos += n
    assert pos == len(body)
    return values


def pg_message(frame: bytes) -> tuple[bytes, bytes]:
    """(type, body) of a backend message; its length field must count itself and the body exactly."""
    kind, (length,) = frame[:1], struct.unpack_from("!I", frame, 1)
    assert length == len(frame) - 1, f"{kind!r}: length {length} for {len(frame) - 1} bytes"
    return kind, frame[5:]


def pg_login(conv: Conversation) -> dict:
    """Startup, the cleartext password exchange, then what the server says up to ReadyForQuery."""
    startup = struct.pack("!I", 196608) + b"user\0" + USER.encode() + b"\0database\0postgres\0\0"
    conv.send(startup, Framing("!I", adjust=-4))  # the startup message has no type byte
    kind, body = pg_message(conv.next())
    assert (kind, struct.unpack("!I", body)) == (b"R", (3,)), "expected AuthenticationCleartextPassword"
    conv.send(b"p" + PASSWORD.encode() + b"\0")
    kind, body = pg_message(conv.next())
    assert (kind, body) == (b"R", struct.pack("!I", 0)), f"authentication failed: {body!r}"
    params = {}
    while True:
        kind, body = pg_message(conv.next())
        if kind == b"S":
            name, value, _ = body.split(b"\0")
            params[name.decode()] = value.decode()
        elif kind == b"K":
            assert len(body) == 8
        elif kind == b"Z":
            assert body == b"I"
            return params
        else:
            pytest.fail(f"unexpected message {kind!r} during login: {body[:200]!r}")


def test_postgres_conversation(codec, postgres):
    conv = Conversation(codec, POSTGRES, postgres.port, seed=1)
    try:
        params = pg_login(conv)
        assert params["client_encoding"] == "UTF8" and params["server_version"].startswith("15")
        conv.send(b"Q" + QUERY.encode() + b"\0")
        kind, body = pg_message(conv.next())
        assert kind == b"T"
        (ncols,) = struct.unpack_from("!h", body)
        names, pos = [], 2
        for _ in range(ncols):  # name, then table oid, column, type oid, size, modifier, format: 18 bytes
            end = body.index(b"\0", pos)
            names.append(body[pos:end])
            pos = end + 1 + 18
        assert pos == len(body) and names == [b"big", b"answer", b"name"]
        frame = conv.next()
        kind, body = pg_message(frame)
        assert kind == b"D" and len(frame) > BIG
        big, answer, name = pg_fields(body)
        assert (len(big), big.count(b"x"), answer, name) == (BIG, BIG, b"42", b"fastframe")
        assert pg_message(conv.next()) == (b"C", b"SELECT 1\0")
        assert pg_message(conv.next()) == (b"Z", b"I")
        conv.send(b"X")
        assert conv.sock.recv(1) == b""  # Terminate: the server closes
        assert conv.decoder.pending == 0
        conv.decoder.close()
    finally:
        conv.close()
    stream = bytes(conv.received)
    # The live decoder's frames, rebuilt from the raw bytes by an independent parser (type, length, body).
    expected, pos = [], 0
    while pos < len(stream):
        (length,) = struct.unpack_from("!I", stream, pos + 1)
        expected.append(stream[pos : pos + 1 + length])
        pos += 1 + length
    redecode_everywhere(POSTGRES, stream, expected, seed=2)
    # The same answers from a real client library.
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(host="127.0.0.1", port=postgres.port, user=USER, password=PASSWORD, dbname="postgres") as conn:
        assert conn.info.parameter_status("server_version") == params["server_version"]
        row = conn.execute(QUERY).fetchone()
    assert (hashlib.sha256(row[0].encode()).digest(), row[1], row[2]) == (
        hashlib.sha256(big).digest(),
        int(answer),
        name.decode(),
    )


# ======================================================================================================
# MariaDB: a 3-byte little-endian length, then a sequence byte the length does not count (adjust=1)
# ======================================================================================================

MYSQL = Framing("<3", adjust=1, max_frame=16 * MiB)
MY_BIG = 5_000_000
MY_QUERY = f"SELECT REPEAT('y', {MY_BIG}) AS big, 42 AS answer, 'fastframe' AS name"

CLIENT_LONG_PASSWORD = 0x1
CLIENT_PROTOCOL_41 = 0x200
CLIENT_TRANSACTIONS = 0x2000
CLIENT_SECURE_CONNECTION = 0x8000
CLIENT_PLUGIN_AUTH = 0x80000


def my_packet(frame: bytes, seq: int) -> bytes:
    """The payload of a packet framed as sequence byte + payload; the sequence must be ``seq``."""
    assert frame[0] == seq % 256, f"sequence {frame[0]}, expected {seq}"
    return frame[1:]


def native_password(password: bytes, salt: bytes) -> bytes:
    stage1 = hashlib.sha1(password).digest()
    stage2 = hashlib.sha1(stage1).digest()
    mix = hashlib.sha1(salt + stage2).digest()
    return bytes(a ^ b for a, b in zip(stage1, mix))


def lenenc(data: bytes, pos: int) -> tuple[int, int]:
    first = data[pos]
    if first < 0xFB:
        return first, pos + 1
    size = {0xFC: 2, 0xFD: 3, 0xFE: 8}[first]
    return int.from_bytes(data[pos + 1 : pos + 1 + size], "little"), pos + 1 + size


def my_row(payload: bytes) -> list[bytes]:
    values, pos = [], 0
    while pos < len(payload):
        n, pos = lenenc(payload, pos)
        values.append(payload[pos : pos + n])
        pos += n
    return values


def test_mariadb_conversation(codec, mariadb):
    conv = Conversation(codec, MYSQL, mariadb.port, seed=3)
    try:
        greeting = my_packet(conv.next(), 0)
        assert greeting[0] == 10, "protocol version 10"
        version, rest = greeting[1:].split(b"\0", 1)
        assert b"MariaDB" in version
        salt = rest[4:12]
        caps = int.from_bytes(rest[13:15], "little") | int.from_bytes(rest[18:20], "little") << 16
        assert caps & CLIENT_PROTOCOL_41 and caps & CLIENT_PLUGIN_AUTH
        salt += rest[31:43]
        assert rest[44:].split(b"\0")[0] == b"mysql_native_password"
        flags = CLIENT_LONG_PASSWORD | CLIENT_PROTOCOL_41 | CLIENT_TRANSACTIONS | CLIENT_SECURE_CONNECTION
        flags |= CLIENT_PLUGIN_AUTH
        scramble = native_password(PASSWORD.encode(), salt)
        login = struct.pack("<IIB23x", flags, 16 * MiB, 33) + USER.encode() + b"\0"
        login += bytes([len(scramble)]) + scramble + b"mysql_native_password\0"
        conv.send(b"\x01" + login)
        ok = my_packet(conv.next(), 2)
        assert ok[0] == 0x00, f"login refused: {ok!r}"
        conv.send(b"\x00" + b"\x03" + MY_QUERY.encode())  # COM_QUERY, sequence 0
        count = my_packet(conv.next(), 1)
        assert count == b"\x03"
        columns = [my_packet(conv.next(), 2 + i) for i in range(3)]
        assert [my_row(c)[4] for c in columns] == [b"big", b"answer", b"name"]
        assert my_packet(conv.next(), 5)[0] == 0xFE  # EOF after the column definitions
        frame = conv.next()
        assert len(frame) > MY_BIG
        big, answer, name = my_row(my_packet(frame, 6))
        assert (len(big), big.count(b"y"), answer, name) == (MY_BIG, MY_BIG, b"42", b"fastframe")
        assert my_packet(conv.next(), 7)[0] == 0xFE  # EOF after the rows
        conv.send(b"\x00\x01")  # COM_QUIT
        assert conv.sock.recv(1) == b""
        assert conv.decoder.pending == 0
    finally:
        conv.close()
    stream = bytes(conv.received)
    expected, pos = [], 0
    while pos < len(stream):
        length = int.from_bytes(stream[pos : pos + 3], "little")
        expected.append(stream[pos + 3 : pos + 4 + length])
        pos += 4 + length
    redecode_everywhere(MYSQL, stream, expected, seed=4)
    pymysql = pytest.importorskip("pymysql")
    conn = pymysql.connect(host="127.0.0.1", port=mariadb.port, user=USER, password=PASSWORD, database="fftest")
    try:
        with conn.cursor() as cur:
            cur.execute(MY_QUERY)
            row = cur.fetchone()
        server_version = conn.get_server_info()
    finally:
        conn.close()
    assert server_version.encode() == version
    assert (hashlib.sha256(row[0].encode()).digest(), row[1], row[2]) == (
        hashlib.sha256(big).digest(),
        int(answer),
        name.decode(),
    )
