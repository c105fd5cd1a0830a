"""Turning a server configuration into bound listeners and a running engine (what ``fastframe serve`` does)."""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Callable, Dict, List, Optional, Sequence, TextIO, Tuple, Union

from .echo import EchoService, RawEchoService
from .engine import Limits, Listener, SelectEngine
from .listen import bind_tcp, bind_tcp_udp_pair, bind_udp, match_systemd, systemd_sockets
from .pidfile import Pidfile, PidfileBusy
from .prefork import PreforkEngine
from .service import DEFAULT_MAX_REQUEST, Service
from .timeservice import TcpTimeService, TimeService

__all__ = ["DEFAULT_PORTS", "ConfigError", "ServeConfig", "build_listeners", "serve"]

log = logging.getLogger("fastframe.server")

#: Default ports when a service is started without one.
DEFAULT_PORTS = {"echo": 7007, "time": 3737, "command": 5140, "files": 2121}
SERVICES = ("echo", "time", "command", "files")


class ConfigError(Exception):
    """A configuration that cannot be served; the message is one readable line."""


class ServeConfig:
    """Everything ``fastframe serve`` can be told.  ``ports`` maps service name -> port (0: ephemeral);
    a service missing from it is not started, and an empty mapping means every service on its default port
    (the command and file services only where they are configured: an allow-list, a root)."""

    def __init__(self, **kwargs: object) -> None:
        self.engine = "select"
        self.workers: Optional[int] = None
        self.host = "127.0.0.1"
        self.ports: Dict[str, int] = {}
        self.upper = False
        self.raw = False
        self.time_format = "unix"
        self.max_request = DEFAULT_MAX_REQUEST
        self.limits = Limits()
        self.pidfile: Optional[str] = None
        # command and file services
        self.allow: List[str] = []
        self.root: Optional[str] = None
        self.allow_hidden = False
        self.secret: Optional[bytes] = None
        self.command_timeout = 10.0
        self.output_cap = 1024 * 1024
        self.max_commands = 8
        for key, value in kwargs.items():
            if not hasattr(self, key):
                raise TypeError(f"unknown setting {key!r}")
            setattr(self, key, value)


# Builders for the command and file services register here (servers.command / servers.files), so that
# this module does not need to know their options.
ServiceFactory = Callable[[ServeConfig], Optional[Service]]
_FACTORIES: Dict[str, ServiceFactory] = {}


def register_factory(name: str, factory: ServiceFactory) -> None:
    _FACTORIES[name] = factory


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
            out.append((name, port, [("udp", TimeService(config.time_format)), ("tcp", TcpTimeService(config.time_format))]))
        else:
            factory = _FACTORIES.get(name)
            if factory is None:
                if explicit:
                    raise ConfigError(f"the {name} service is not available in this build")
                continue
            try:
                built = factory(config)
            except ValueError as exc:
                if explicit:
                    raise ConfigError(f"{name}: {exc}") from None
                print(f"fastframe: {name} service disabled: {exc}", file=sys.stderr, flush=True)
                continue
            if built is not None:
                out.append((name, port, [("tcp", built)]))
    return out


def build_listeners(config: ServeConfig) -> List[Listener]:
    """Bind (or take over from systemd) one socket per service and transport."""
    _load_optional_services()
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


def _load_optional_services() -> None:
    for module in ("command", "files"):
        try:
            __import__(f"{__package__}.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{module}":
                raise


def serve(config: ServeConfig, out: Optional[TextIO] = None, listeners: Optional[Sequence[Listener]] = None) -> int:
    """Bind, print one line per listening socket (``echo tcp 127.0.0.1:40123``) and serve until stopped."""
    if listeners is None:
        listeners = build_listeners(config)
    if not listeners:
        raise ConfigError("no service to start")
    if config.engine not in ("select", "prefork"):
        raise ConfigError(f"unknown engine {config.engine!r} (choose select or prefork)")
    pidfile = Pidfile(config.pidfile) if config.pidfile else None
    if pidfile is not None:
        # Written before the listening lines are printed: whoever reads those may look for it at once.  A live
        # process holding it stops this server (PidfileBusy: one line, exit status 1).
        try:
            pidfile.create()
        except PidfileBusy:
            raise
        except OSError as exc:
            raise ConfigError(f"cannot write pidfile {config.pidfile}: {exc.strerror or exc}") from None
    try:
        return _run(config, listeners, out)
    finally:
        if pidfile is not None:
            pidfile.remove()


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
