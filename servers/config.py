"""Turning a server configuration into services, bound listeners and a running engine (``fastframe serve``).

The services are built here from the settings (:mod:`servers.settings`), by direct imports: a service knows
nothing of the configuration.  The command and file services expose the machine, so they start only when
told what to expose (an allow-list, a root), and never beyond loopback without a way to keep strangers out.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from .accesslog import AccessLog, log_to_file
from .auth import AuthenticatedService
from .command import CommandService
from .echo import EchoService, RawEchoService
from .engine import Listener, SelectEngine
from .files import FileService
from .listen import bind_tcp, bind_tcp_udp_pair, bind_udp, match_systemd, systemd_sockets
from .observe import Observer, totals
from .pidfile import Pidfile, PidfileBusy
from .prefork import PreforkEngine
from .proxystage import TrustedProxies, proxy_stage
from .sdnotify import Notifier
from .service import Service
from .settings import DEFAULT_PORTS, SERVICES, ConfigError, ServeConfig
from .timeservice import TcpTimeService, TimeService
from .unixsock import bind_unix

__all__ = ["DEFAULT_PORTS", "ConfigError", "ServeConfig", "build_command_service", "build_file_service",
           "build_listeners", "is_loopback", "serve"]  # fmt: skip

log = logging.getLogger("fastframe.server")


# -- the services that expose the machine ----------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """True if ``host`` only ever means this machine (127.0.0.0/8, ::1, or a name resolving only to those)."""
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


def build_command_service(config: ServeConfig) -> Service:
    """The command service (only with an allow-list; beyond loopback only with a secret); ValueError says why
    it cannot start."""
    if not config.allow:
        raise ValueError("no --allow list given (nothing would be allowed to run)")
    if not is_loopback(config.host) and not (config.tls_context and _authenticated(config)):
        need = "--secret-file or --tls-client-ca" if config.tls_context else "--tls-cert/--tls-key and --secret-file"
        raise ValueError(f"refusing to run commands for anyone who can reach {config.host}: give {need} "
                         "(TLS and an authentication), or listen on 127.0.0.1")  # fmt: skip
    cwd = os.path.abspath(config.root) if config.root else "/"
    if not os.path.isdir(cwd):
        raise ValueError(f"working directory {cwd} is not a directory")
    service = CommandService(
        config.allow,
        cwd=cwd,
        timeout=config.command_timeout,
        output_cap=config.output_cap,
        max_commands=config.max_commands,
        max_request=config.max_request,
    )
    return _guarded(service, config)


def build_file_service(config: ServeConfig) -> Service:
    """The file service (only with a root named explicitly); ValueError says why it cannot start."""
    if not config.root:
        raise ValueError("no --root given (the file service serves only a directory named explicitly)")
    service = FileService(config.root, max_request=config.max_request, allow_hidden=config.allow_hidden)
    if not is_loopback(config.host) and config.tls_context:
        if not _authenticated(config):
            log.warning("files: %s is served beyond loopback (%s) over TLS without authentication: anyone who can "
                        "reach %s can download from it (give --secret-file or --tls-client-ca)",
                        service.root, config.host, config.host)  # fmt: skip
    elif not is_loopback(config.host):
        if config.secret:
            log.warning("files: %s is served beyond loopback (%s) without TLS: its bytes cross the network "
                        "unencrypted (the shared secret authenticates the connection only)",
                        service.root, config.host)  # fmt: skip
        else:
            log.warning("files: %s is served beyond loopback (%s) without TLS or --secret-file: anyone who can "
                        "reach %s can download from it", service.root, config.host, config.host)  # fmt: skip
    return _guarded(service, config)


def _authenticated(config: ServeConfig) -> bool:
    """Whether clients must prove who they are: the shared secret (inside TLS when both are set: it is the
    service's first exchange, after the handshake) or a client certificate."""
    return bool(config.secret) or bool(config.tls_client_ca)


def _guarded(service: Service, config: ServeConfig) -> Service:
    """``service`` behind the shared-secret handshake when the configuration has a secret."""
    return AuthenticatedService(service, config.secret) if config.secret else service


def _services(config: ServeConfig) -> list[tuple[str, Any, list[tuple[str, Service]]]]:
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


def _stages(config: ServeConfig) -> list[Any]:
    """What runs first on every TCP connection: the PROXY header, with --proxy-protocol."""
    if not config.proxy_protocol:
        if config.trusted_proxy:
            log.warning("--trusted-proxy has no effect without --proxy-protocol: no PROXY header is read")
        return []
    if not config.trusted_proxy:
        raise ConfigError("--proxy-protocol needs at least one --trusted-proxy CIDR (the balancers' addresses)")
    try:
        return [proxy_stage(TrustedProxies(config.trusted_proxy))]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _bind_unix(name: str, where: str, pairs: list[tuple[str, Service]], config: ServeConfig) -> Listener:
    if len(pairs) != 1:
        raise ConfigError(f"{name}: a Unix socket cannot carry its UDP half; give it a port")
    try:
        owner = bind_unix(where, config.unix_mode)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot listen for {name} on {where}: {exc.strerror or exc}" if isinstance(exc, OSError)
                          else f"{name}: {exc}") from None  # fmt: skip
    return Listener(owner.sock, pairs[0][1], unix_file=owner)


def build_listeners(config: ServeConfig) -> list[Listener]:
    """Bind (or take over from systemd) one socket per service and transport."""
    plan = _services(config)
    stages = _stages(config)
    passed = systemd_sockets()
    listeners: list[Listener] = []
    try:
        if passed is not None:
            wanted = [(name, transport) for name, _, pairs in plan for transport, _ in pairs]
            assigned = match_systemd(wanted, passed)
            for name, _, pairs in plan:
                for transport, svc in pairs:
                    sock = assigned.get((name, transport))
                    if sock is None:
                        raise ConfigError(f"socket activation passed no {transport} socket for {name}")
                    inet_stream = sock.type == socket.SOCK_STREAM and sock.family != socket.AF_UNIX
                    listeners.append(Listener(sock, svc, stages if inet_stream else ()))
            return _with_tls(config, listeners)
        for name, port, pairs in plan:
            if isinstance(port, str):
                listeners.append(_bind_unix(name, port, pairs, config))
                continue
            if not 0 <= port <= 65535:
                raise ConfigError(f"{name}: port {port} is out of range")
            try:
                if len(pairs) == 2:
                    udp, tcp = bind_tcp_udp_pair(config.host, port)
                    socks = {"udp": udp, "tcp": tcp}
                else:
                    transport = pairs[0][0]
                    socks = {
                        transport: bind_tcp(config.host, port) if transport == "tcp" else bind_udp(config.host, port)
                    }
            except OSError as exc:
                raise ConfigError(f"cannot listen for {name} on {config.host}:{port}: {exc.strerror or exc}") from None
            for transport, svc in pairs:
                listeners.append(Listener(socks[transport], svc, stages if transport == "tcp" else ()))
        return _with_tls(config, listeners)
    except BaseException:
        for listener in listeners:
            listener.sock.close()
            if listener.unix_file is not None:
                listener.unix_file.unlink()
        raise


def _with_tls(config: ServeConfig, listeners: list[Listener]) -> list[Listener]:
    """With ``--tls-cert``: the TLS handshake as the last first stage of every TCP listener (UDP stays plain)."""
    if config.tls_context is not None:
        from .tls import tls_stage  # (ssl only when TLS is asked for)

        stage = tls_stage(config.tls_context)
        for listener in listeners:
            if listener.transport == "tcp":
                listener.stages += (stage,)
    return listeners


def serve(config: ServeConfig, out: TextIO | None = None, listeners: Sequence[Listener] | None = None) -> int:
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
        for listener in listeners:
            if listener.unix_file is not None:
                listener.unix_file.unlink()  # (only the file this process made, still there)
        if pidfile is not None:
            pidfile.remove()


def build_observer(config: ServeConfig, services: Sequence[Service] = ()) -> Observer | None:
    """The access log, the error log file and the metrics of ``services``, opened (ConfigError if they cannot be);
    None without any of them."""
    if config.log_file:
        try:
            log_to_file(config.log_file)
        except OSError as exc:
            raise ConfigError(f"cannot open --log-file {config.log_file}: {exc.strerror or exc}") from None
    access = None
    if config.access_log:
        try:
            access = AccessLog(config.access_log)
        except OSError as exc:
            raise ConfigError(f"cannot open --access-log {config.access_log}: {exc.strerror or exc}") from None
    if access is None and not config.log_file and not config.metrics:
        return None
    if not config.metrics:
        return Observer(access)
    try:
        return _with_metrics(config, access, services)
    except BaseException:
        if access is not None:
            access.close()
        raise


def _with_metrics(config: ServeConfig, access: AccessLog | None, services: Sequence[Service]) -> Observer:
    """The observer with ``--metrics``: the endpoint's socket bound, prometheus_client loaded in the mode the
    engine needs (prefork: multiprocess, its directory chosen and wiped before the import)."""
    from fastframe._address import InetAddress, parse_address

    from .metrics import Metrics, MetricsUnavailable, prepare_multiprocess

    try:
        where = parse_address(config.metrics, allow_port_zero=True, allow_unix=False)
    except ValueError as exc:
        raise ConfigError(f"--metrics: {exc}") from None
    assert isinstance(where, InetAddress)
    made_dir = None
    if config.engine == "prefork":
        given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        path = prepare_multiprocess()
        made_dir = None if given else path
    observer = Observer(access)
    try:
        metrics = Metrics(totals=totals, collect=observer.collect)
    except MetricsUnavailable as exc:
        raise ConfigError(str(exc)) from None
    observer.services = list(services)
    for service in services:
        metrics.service(service.name)  # each shows from the first scrape, at zero (prefork: the master's file)
    try:
        sock = bind_tcp(where.host, where.port, backlog=64)
    except OSError as exc:
        raise ConfigError(f"cannot serve --metrics on {where}: {exc.strerror or exc}") from None
    observer.metrics, observer.metrics_socket, observer.metrics_dir = metrics, sock, made_dir
    return observer


def _run(config: ServeConfig, listeners: Sequence[Listener], out: TextIO | None) -> int:
    observer = build_observer(config, list(dict.fromkeys(listener.service for listener in listeners)))
    try:
        return _run_engine(config, listeners, out, observer)
    finally:
        if observer is not None:
            observer.close()


def _run_engine(config: ServeConfig, listeners: Sequence[Listener], out: TextIO | None,
                observer: Observer | None) -> int:  # fmt: skip
    # systemd's variables leave the environment now: no worker or command can notify on our behalf.
    notifier: Notifier | None = Notifier.from_environ()
    if notifier is not None and not notifier.enabled:
        notifier = None
    engine: PreforkEngine | SelectEngine
    if config.engine == "prefork":
        described = f"prefork engine, {config.workers or os.cpu_count()} worker(s) (master pid {os.getpid()})"
        engine = PreforkEngine(listeners, config.workers, config.limits, observer=observer, notifier=notifier)
    else:
        described = f"select engine (pid {os.getpid()})"
        engine = SelectEngine(listeners, config.limits, observer=observer, notifier=notifier)
    # Whoever reads the lines below may signal us at once: hold the signals until the engine handles them.
    signal.pthread_sigmask(signal.SIG_BLOCK, engine.SIGNALS)
    try:
        for listener in listeners:
            line = listener.describe()
            if out is not None:
                print(line, file=out, flush=True)
            log.info("%s: %s", line, listener.service.describe())
        if config.tls_context is not None:
            from .tls import DOWNLOAD_PATH

            mutual = f", client certificates from {config.tls_client_ca}" if config.tls_client_ca else ""
            log.info("TLS on every TCP service: certificate %s%s; files cross TLS in %s", config.tls_cert, mutual,
                     DOWNLOAD_PATH)  # fmt: skip
        if observer is not None and observer.metrics_socket is not None:
            host, port = observer.metrics_socket.getsockname()[:2]
            line = f"metrics tcp {f'[{host}]' if ':' in host else host}:{port}"
            if out is not None:
                print(line, file=out, flush=True)
            log.info("%s: Prometheus metrics at /metrics", line)
        log.info("serving with the %s", described)
        return engine.run(unblock_signals=engine.SIGNALS)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, engine.SIGNALS)
