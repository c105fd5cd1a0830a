"""The time service (RFC 868 over UDP and TCP) in both formats, against the Python client, the CLI and Debian's
real ``rdate``."""

from __future__ import annotations

import datetime
import re
import socket
import struct
import subprocess
import time

import harness
import pytest

from fastframe.client import get_time

RFC868_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01, written out independently
SLACK = 3  # seconds between the server's clock reading and ours


def raw_udp(addr, payload=b"", timeout=5.0) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(payload, addr)
        data, _ = s.recvfrom(65535)
        return data


def raw_tcp(addr) -> bytes:
    with harness.connect(addr) as s:
        return harness.read_to_eof(s)


def to_unix(reply: bytes, fmt: str) -> int:
    assert len(reply) == 4, reply
    (value,) = struct.unpack(">I", reply)
    return value - RFC868_OFFSET if fmt == "rfc868" else value


@pytest.mark.parametrize("fmt", ["unix", "rfc868"])
def test_time_udp_and_tcp_both_formats(engine, serve, fmt):
    server = serve("--time", "0", "--time-format", fmt, expect=2, engine=engine)
    udp, tcp = server.addr("time", "udp"), server.addr("time", "tcp")
    assert udp[1] == tcp[1], "RFC 868 uses one port number for UDP and TCP"
    now = time.time()
    # the raw wire, decoded here with struct
    assert abs(to_unix(raw_udp(udp), fmt) - now) <= SLACK
    assert abs(to_unix(raw_udp(udp, b"any content is ignored"), fmt) - now) <= SLACK
    assert abs(to_unix(raw_tcp(tcp), fmt) - now) <= SLACK  # 4 bytes, then the server closes
    # the Python client
    assert abs(get_time(*udp, fmt=fmt, timeout=5) - now) <= SLACK
    assert abs(get_time(*tcp, fmt=fmt, tcp=True, timeout=5) - now) <= SLACK
    # the other format is decoded 70 years off: the two formats really differ on the wire
    other = "unix" if fmt == "rfc868" else "rfc868"
    assert abs(get_time(*udp, fmt=other, timeout=5) - now) > 365 * 86400


@pytest.mark.parametrize("fmt", ["unix", "rfc868"])
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_fastframe_time_command(serve, console_script, fmt, transport):
    server = serve("--time", "0", "--time-format", fmt, expect=2)
    host, port = server.addr("time", transport)
    args = [console_script, "time", f"{host}:{port}", "--time-format", fmt, "--timeout", "5"]
    if transport == "tcp":
        args.append("--tcp")
    run = subprocess.run(args, check=False, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    m = re.fullmatch(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)Z \((\d+)\)\n", run.stdout)
    assert m, run.stdout
    printed = datetime.datetime(*map(int, m.groups()[:6]), tzinfo=datetime.timezone.utc)
    assert abs(printed.timestamp() - time.time()) <= SLACK
    assert int(m.group(7)) == int(printed.timestamp())


MONTHS = {
    m: i for i, m in enumerate(["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"], 1)
}


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_debian_rdate(engine, serve, transport):
    rdate = harness.require_tool("rdate")
    server = serve("--time", "0", "--time-format", "rfc868", expect=2, engine=engine)
    port = server.port("time", transport)
    args = [rdate, "-p"] + (["-u"] if transport == "udp" else []) + ["-o", str(port), "127.0.0.1"]
    run = subprocess.run(
        args, check=False, capture_output=True, text=True, timeout=30, env={"TZ": "UTC", "PATH": "/usr/bin:/bin"}
    )
    assert run.returncode == 0, f"{args}: {run.stderr}"
    # e.g. "Sun Nov 22 01:55:51 UTC 2026" (older rdate: "rdate: [127.0.0.1]\tSun Nov 22 01:55:51 2026")
    m = re.search(r"\b([A-Z][a-z]{2}) +(\d{1,2}) (\d\d):(\d\d):(\d\d)(?: \S+)? (\d{4})\b", run.stdout)
    assert m, f"cannot parse rdate's output {run.stdout!r}"
    shown = datetime.date(int(m.group(6)), MONTHS[m.group(1)], int(m.group(2)))
    today = datetime.datetime.now(datetime.timezone.utc).date()
    assert abs((shown - today).days) <= 1, (run.stdout, today)


def test_rdate_rejects_the_unix_format(serve):
    """rdate speaks real RFC 868: a unix-format server reads as 1900+56 years (shows the formats are not mixed up)."""
    rdate = harness.require_tool("rdate")
    server = serve("--time", "0", "--time-format", "unix", expect=2)
    run = subprocess.run([rdate, "-p", "-u", "-o", str(server.port("time", "udp")), "127.0.0.1"],
                         check=False, capture_output=True, text=True, timeout=30, env={"TZ": "UTC", "PATH": "/usr/bin:/bin"})  # fmt: skip
    years = [int(y) for y in re.findall(r"\b(\d{4})\b", run.stdout)]
    assert datetime.datetime.now(datetime.timezone.utc).year not in years, run.stdout
