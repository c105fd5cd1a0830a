"""A framed-echo test server that expects PROXY v2 headers: the stand-in backend for the HAProxy harness tests.

Standard library only, and its own ``struct`` reading of the header, so that the harness is proven independently
of the code under test.  Run as ``python echo_backend.py HOST [--mute]``: it binds HOST port 0, prints
``listening HOST PORT``, then one line per connection: ``conn LOCAL`` (a health check) or ``conn PROXY
SRC_IP:SRC_PORT`` (a proxied client).  Each "!I" frame is sent back; ``--mute`` reads but never answers (a
wedged server that still accepts).  SIGTERM or SIGKILL end it.
"""

from __future__ import annotations

import socket
import struct
import sys
import threading

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
out_lock = threading.Lock()


def say(line: str) -> None:
    with out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def handle(sock: socket.socket, mute: bool) -> None:
    with sock:
        try:
            head = recv_exactly(sock, 16)
            if head[:12] != SIG or head[12] >> 4 != 2:
                say("conn BAD " + head.hex())
                return
            block = recv_exactly(sock, struct.unpack("!H", head[14:16])[0])
            if head[12] & 0x0F == 0:
                say("conn LOCAL")
            elif head[13] == 0x11:
                src, port = socket.inet_ntoa(block[0:4]), struct.unpack("!H", block[8:10])[0]
                say(f"conn PROXY {src}:{port}")
            elif head[13] == 0x21:
                src, port = socket.inet_ntop(socket.AF_INET6, block[0:16]), struct.unpack("!H", block[32:34])[0]
                say(f"conn PROXY [{src}]:{port}")
            else:
                say(f"conn PROXY family 0x{head[13]:02x}")
            while True:
                n = struct.unpack("!I", recv_exactly(sock, 4))[0]
                payload = recv_exactly(sock, n)
                if not mute:
                    sock.sendall(struct.pack("!I", n) + payload)
        except (EOFError, OSError):
            return


def main() -> None:
    host = sys.argv[1]
    mute = "--mute" in sys.argv[2:]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, 0))
    listener.listen(128)
    say(f"listening {host} {listener.getsockname()[1]}")
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn, mute), daemon=True).start()


if __name__ == "__main__":
    main()
