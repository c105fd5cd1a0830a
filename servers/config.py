"""Turning a server configuration into bound listeners and a running engine (what ``fastframe serve`` does)."""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import List, Optional, Sequence, TextIO, Tuple, Union

from .command import build_command_service
from .echo import EchoService, RawEchoService
from .engine import Listener, SelectEngine
from .files import build_file_service
from .listen import bind_tcp, bind_tcp_udp_pair, bind_udp, match_systemd, systemd_sockets
from .prefork import PreforkEngine, _remove_pidfile, _write_pidfile
from .service import Service
from .settings import DEFAULT_PORTS, SERVICES, ConfigError, ServeConfig
from .timeservice import TcpTimeService, TimeService

__all__ = ["DEFAULT_PORTS", "ConfigError", "ServeConfig", "build_listeners", "serve"]

log = logging.getLogger("fastframe.server")


def _services(config: ServeConfig) -> List[Tuple[str, int, List[Tuple[str, Service]]]]:
    """(name, port, [(transport, service)]) for every service to start."""
    explicit = bool(config.ports)
    wanted = dict(config.ports) if explicit else dict(DEFAULT_PORTS)
    out = []
    for name in SERVICES:
        if name not in wanted:
            continue
        port = wanted[name]
        if name == "echo":
            svc: Service = RawEchoService(config.upper) if config.raw else EchoService(config.upper, config.max_request)
            out.append((name, port, [("tcp", svc)]))
        elif name == "time":
            fmt = config.time_format
            out.append((name, port, [("udp", TimeService(fmt)), ("tcp", TcpTimeService(fmt))]))
        else:
            try:
                built = build_command_service(config) if name == "command" else build_file_service(config)
            except ValueError as exc:
                if explicit:
                    raise ConfigError(f"{name}: {exc}") from None
                print(f"fastframe: {name} service disabled: {exc}", file=sys.stderr, flush=True)
                continue
            out.append((name, port, [("tcp", built)]))
    return out


def build_listeners(config: ServeConfig) -> List[Listener]:
    """Bind (or take over from systemd) one socket per service and transport."""
    plan = _services(config)
    passed = systemd_sockets()
    listeners: List[Listener] = []
    try:
        if passed is not None:
            wanted = [(name, transport) for name, _, pairs in plan for transport, _ in pairs]
            assigned = match_systemd(wanted, passed)
            for name, _, pairs in plan:
                for transport, svc in pairs:
                    sock = assigned.get((name, transport))
                    if sock is None:
                        raise ConfigError(f"socket activation passed no {transport} socket for {name}")
                    listeners.append(Listener(sock, svc))
            return listeners
        for name, port, pairs in plan:
            if not 0 <= port <= 65535:
                raise ConfigError(f"{name}: port {port} is out of range")
            try:
                if len(pairs) == 2:
                    udp, tcp = bind_tcp_udp_pair(config.host, port)
                    socks = {"udp": udp, "tcp": tcp}
                else:
                    transport = pairs[0][0]
                    socks = {transport: bind_tcp(config.host, port) if transport == "tcp" else bind_udp(config.host, port)}
            except OSError as exc:
                raise ConfigError(f"cannot listen for {name} on {config.host}:{port}: {exc.strerror or exc}") from None
            for transport, svc in pairs:
                listeners.append(Listener(socks[transport], svc))
        return listeners
    except BaseException:
        for listener in listeners:
            listener.sock.close()
        raise


def serve(config: ServeConfig, out: Optional[TextIO] = None, listeners: Optional[Sequence[Listener]] = None) -> int:
    """Bind, print one line per listening socket (``echo tcp 127.0.0.1:40123``) and serve until stopped."""
    if listeners is None:
        listeners = build_listeners(config)
    if not listeners:
        raise ConfigError("no service to start")
    if config.engine not in ("select", "prefork"):
        raise ConfigError(f"unknown engine {config.engine!r} (choose select or prefork)")
    if config.pidfile:
        # Written before the listening lines are printed: whoever reads those may look for it at once.
        try:
            _write_pidfile(config.pidfile)
        except OSError as exc:
            raise ConfigError(f"cannot write pidfile {config.pidfile}: {exc.strerror or exc}") from None
    try:
        return _run(config, listeners, out)
    finally:
        if config.pidfile:
            _remove_pidfile(config.pidfile)


def _run(config: ServeConfig, listeners: Sequence[Listener], out: Optional[TextIO]) -> int:
    engine: Union[PreforkEngine, SelectEngine]
    if config.engine == "prefork":
        described = f"prefork engine, {config.workers or os.cpu_count()} worker(s) (master pid {os.getpid()})"
        engine = PreforkEngine(listeners, config.workers, config.limits)
    else:
        described = f"select engine (pid {os.getpid()})"
        engine = SelectEngine(listeners, config.limits)
    # Whoever reads the lines below may signal us at once: hold the signals until the engine handles them.
    signal.pthread_sigmask(signal.SIG_BLOCK, engine.SIGNALS)
    try:
        for listener in listeners:
            line = listener.describe()
            if out is not None:
                print(line, file=out, flush=True)
            log.info("%s: %s", line, listener.service.describe())
        log.info("serving with the %s", described)
        return engine.run(unblock_signals=engine.SIGNALS)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, engine.SIGNALS)
