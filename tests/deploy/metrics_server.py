"""A process serving /metrics the way a fastframe process will: Metrics + MetricsEndpoint on a SelectorReactor
(no thread).  For test_metrics.py: ``python metrics_server.py TIMEOUT MAX_CLIENTS`` prints ``port N`` and then
serves until SIGTERM; its "echo" service has 2 connections, one closed, and a few events, so scrapes have values.
"""

from __future__ import annotations

import signal
import socket
import sys

from fastframe.servers.metrics import Metrics, MetricsEndpoint, SelectorReactor


class Conn:
    def __init__(self) -> None:
        self.frames_in = self.frames_out = self.bytes_in = self.bytes_out = 0


def main() -> None:
    timeout, max_clients = float(sys.argv[1]), int(sys.argv[2])
    metrics = Metrics()
    echo = metrics.service("echo")
    a, b = Conn(), Conn()
    echo.opened(a)
    echo.opened(b)
    a.frames_in = a.frames_out = 3
    a.bytes_in = a.bytes_out = 30
    b.frames_in, b.bytes_in = 1, 5
    echo.closed(a)
    echo.error("too_large")
    reactor = SelectorReactor()
    listener = socket.create_server(("127.0.0.1", 0))
    endpoint = MetricsEndpoint(listener, metrics.render, reactor, timeout=timeout, max_clients=max_clients)
    endpoint.start()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    print("port", listener.getsockname()[1], flush=True)
    while not stop:
        reactor.run_once(0.2)
    endpoint.close()


if __name__ == "__main__":
    main()
