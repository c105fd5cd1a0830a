"""The ``fastframe`` command line: ``serve`` runs the servers; ``echo``, ``time``, ``exec`` and ``get`` talk to them."""

from __future__ import annotations

import _socket  # (socket.timeout, without socket.py: a start-up cost a plain client command does without)
import sys
import time

from . import IMPLEMENTATION, __version__
from .exceptions import FrameError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (a start-up cost for the CLI)
if TYPE_CHECKING:  # pragma: no cover
    import argparse
    from collections.abc import Sequence
    from typing import Any, Callable

    Spec = tuple[tuple[str, ...], dict[str, Any]]

# Start-up is most of a small download, so this module imports only what every command needs: each command
# imports its own modules (the servers, the clients, logging, re) when it runs; a plain client command line is
# read without argparse (fastframe._quickargs), and otherwise main() builds only the parser of the command
# asked for (tests/test_startup.py keeps it that way).

__all__ = ["build_parser", "main"]


class CliError(Exception):
    """An error worth one line on stderr and a non-zero exit, not a traceback."""


def _type_error(message: str) -> Exception:
    import argparse

    return argparse.ArgumentTypeError(message)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _type_error(f"not a number: {text!r}") from None
    if not value > 0:
        raise _type_error("must be positive")
    return value


# -- serve ----------------------------------------------------------------------------------------------


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .servers.settings import DEFAULT_PORTS, add_arguments

    p = sub.add_parser(
        "serve",
        help="run the servers (echo and time on loopback by default)",
        description=(
            "Run the fastframe services. With no service flag every service starts on its default port "
            f"(echo {DEFAULT_PORTS['echo']}, time {DEFAULT_PORTS['time']} UDP+TCP, command {DEFAULT_PORTS['command']} "
            f"if --allow is given, files {DEFAULT_PORTS['files']} if --root is given); with some, only those. "
            "Port 0 picks a free port. One line per listening "
            "socket is printed to stdout, e.g. 'echo tcp 127.0.0.1:40123'. SIGTERM stops gracefully, "
            "SIGINT (Ctrl-C) at once; with --engine prefork, SIGHUP replaces the workers and SIGTTIN/SIGTTOU add or "
            "remove one. Other signals (SIGUSR1 included) are logged and ignored. Every limit holds for the whole "
            "server, all prefork workers together, or per connection, command or frame: none is per worker. "
            "Every flag can be set in a TOML file given with --config, under its name with underscores "
            '(max_connections = 100, allow = ["ls", "df"]); flags given on the command line win.'
        ),
    )
    add_arguments(p)
    p.set_defaults(func=_cmd_serve)


def _read_secret(path: str | None) -> bytes | None:
    if not path:
        return None
    from .wire.auth import load_secret

    try:
        return load_secret(path)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _cmd_serve(args: argparse.Namespace) -> int:
    from .servers.config import serve
    from .servers.settings import ConfigError, config_from

    try:
        config = config_from(vars(args))
        _setup_logging(config.log_level)
        return serve(config, out=sys.stdout)
    except ConfigError as exc:
        raise CliError(str(exc)) from None


# -- clients --------------------------------------------------------------------------------------------


def _arg(*names: str, **kwargs: Any) -> Spec:
    """One ``add_argument`` call as data: argparse and the quick parser (fastframe._quickargs) read the same."""
    return names, kwargs


_TLS_ARGS = [
    _arg("--tls", action="store_true", help="connect with TLS, verifying the server's certificate and name"),
    _arg("--cafile", metavar="FILE", help="trust the CA certificates in FILE (PEM) instead of the system's"),
    _arg("--cert", metavar="FILE", help="present the client certificate in FILE (PEM), for mutual TLS"),
    _arg("--key", metavar="FILE", help="the private key of --cert (default: inside --cert)"),
    _arg(
        "--server-name", metavar="NAME", help="the name the server's certificate must carry (default: the HOST given)"
    ),  # fmt: skip
    _arg(
        "--insecure",
        action="store_true",
        help="do not verify the server's certificate or name (anyone on the path can read and change the connection)",
    ),  # fmt: skip
]


class _Client:
    """A client subcommand: its parser's texts, its arguments (the TLS group last) and the function it runs."""

    def __init__(self, help: str, description: str, args: list[Spec], run: Callable[[Any], int],
                 epilog: str | None = None) -> None:  # fmt: skip
        self.help, self.description, self.epilog = help, description, epilog
        self.args = args
        self.run = run

    def specs(self) -> list[Spec]:
        return [*self.args, *_TLS_ARGS]

    def add(self, sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str) -> None:
        p = sub.add_parser(name, help=self.help, description=self.description, epilog=self.epilog)
        for names, kwargs in self.args:
            p.add_argument(*names, **kwargs)
        group = p.add_argument_group("TLS")
        for names, kwargs in _TLS_ARGS:
            group.add_argument(*names, **kwargs)
        p.set_defaults(func=self.run)


def _tls_options(args: argparse.Namespace) -> dict:  # type: ignore[type-arg]
    """``ssl=`` and ``server_hostname=`` for the client call: empty without --tls (and ssl never imported)."""
    if not args.tls:
        given = [f"--{name.replace('_', '-')}" for name in ("cafile", "cert", "key", "server_name", "insecure")
                 if getattr(args, name)]  # fmt: skip
        if given:
            raise CliError(f"{', '.join(given)} {'needs' if len(given) == 1 else 'need'} --tls")
        return {}
    import warnings

    from ._tls import TLSConfigError, client_context

    if args.insecure:
        if args.cafile:
            raise CliError("--insecure verifies nothing: --cafile would not be used")
        print("fastframe: warning: --insecure: the server's certificate and name are not checked; anyone on the "
              "path can read and change this connection", file=sys.stderr)  # fmt: skip
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (the line above says it, once)
            context = client_context(args.cafile, args.cert, args.key, insecure=args.insecure)
    except TLSConfigError as exc:
        raise CliError(str(exc)) from None
    return {"ssl": context, "server_hostname": args.server_name}


def _address(text: str) -> tuple:  # type: ignore[type-arg]
    from .client import parse_address

    try:
        return parse_address(text)
    except ValueError as exc:
        raise _type_error(str(exc)) from None


def _cmd_echo(args: argparse.Namespace) -> int:
    from .client import echo, echo_raw

    host, port = args.address
    tls = _tls_options(args)
    if args.messages:
        messages = [m.encode() for m in args.messages]
    else:
        messages = [line.rstrip(b"\n") for line in sys.stdin.buffer]
    out = sys.stdout.buffer
    if args.raw:
        data = b"".join(m + b"\n" for m in messages)
        out.write(echo_raw(host, port, data, args.timeout, **tls))
    else:
        for reply in echo(host, port, messages, args.timeout, **tls):
            out.write(reply + b"\n")
    out.flush()
    return 0


def _cmd_time(args: argparse.Namespace) -> int:
    from .client import get_time

    host, port = args.address
    seconds = get_time(host, port, args.time_format, tcp=args.tcp, timeout=args.timeout, **_tls_options(args))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
    print(f"{stamp} ({seconds})")
    return 0


_EXEC_ERROR_STATUS = {"not-allowed": 127, "not-found": 127, "timeout": 124}


def _cmd_exec(args: argparse.Namespace) -> int:
    from .client import AuthError, RemoteError, exec_command

    host, port = args.address
    argv = list(args.command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise CliError("no command given (write it after '--')")
    tls = _tls_options(args)
    try:
        status = exec_command(host, port, argv, secret=_read_secret(args.secret_file), timeout=args.timeout, **tls)
    except AuthError:
        raise
    except RemoteError as exc:
        print(f"fastframe: error: {exc}", file=sys.stderr)
        return _EXEC_ERROR_STATUS.get(exc.code, 1)
    return status if status >= 0 else 128 - status


def _cmd_get(args: argparse.Namespace) -> int:
    import os

    from .client import get_file

    host, port = args.address
    name = args.path.rstrip("/").rsplit("/", 1)[-1]
    out = args.output
    if out is None or os.path.isdir(out):
        if not name or name in (".", ".."):
            raise CliError(f"cannot name the output after {args.path!r}; give -o OUT")
        out = os.path.join(out or ".", name)
    tls = _tls_options(args)
    bar = None
    if sys.stderr.isatty() and not args.quiet:
        from ._progress import ProgressBar

        bar = ProgressBar(sys.stderr)
    try:
        get_file(host, port, args.path, out, resume=args.resume, secret=_read_secret(args.secret_file),
                 progress=bar, timeout=args.timeout, **tls)  # fmt: skip
    finally:
        if bar is not None:
            bar.finish()
    return 0


#: The command and file services: a shared secret, and a timeout per reply rather than for the whole session.
_SESSION_ARGS = [
    _arg("--secret-file", metavar="FILE", help="authenticate with the shared secret in FILE"),
    _arg(
        "--timeout",
        type=_positive,
        default=60.0,
        metavar="S",
        help="give up when the server sends nothing for S seconds",
    ),  # fmt: skip
]
_ECHO = _Client(
    help="send messages to an echo service and print the replies",
    description="Send each MESSAGE as one frame (or, without messages, each line of stdin) and print each reply on its own line.",
    args=[
        _arg("address", type=_address, metavar="HOST:PORT"),
        _arg("messages", nargs="*", metavar="MESSAGE"),
        _arg("--raw", action="store_true", help="talk to a raw (RFC 862) echo service: no framing"),
        _arg("--timeout", type=_positive, default=10.0, metavar="S", help="give up after S seconds"),
    ],
    run=_cmd_echo,
)
_TIME = _Client(
    help="ask a time service for the time",
    description="Ask an RFC 868 time service (UDP unless --tcp or --tls) and print the time it sent. With --tls it "
    "is the TCP flavour inside TLS.",  # fmt: skip
    args=[
        _arg("address", type=_address, metavar="HOST:PORT"),
        _arg("--time-format", choices=("unix", "rfc868"), default="unix", help="what the server sends"),
        _arg("--tcp", action="store_true", help="use the TCP flavour (connect, read 4 bytes)"),
        _arg("--timeout", type=_positive, default=5.0, metavar="S", help="give up after S seconds"),
    ],
    run=_cmd_time,
)
_EXEC = _Client(
    help="run an allowed command on a command service",
    description=(
        "Run CMD ARGS... on a command service (put them after '--'). The words are sent quoted, so the server "
        "runs exactly them -- it never uses a shell. The command's stdout and stderr are copied here as they "
        "arrive."
    ),
    epilog=(
        "Exit status: the remote command's status; 128+N if signal N killed it; 127 if the server refused it "
        "(not-allowed) or could not execute it (not-found); 124 if it hit the server's timeout; 1 for any other "
        "error (output-cap, busy, bad-request, auth, connection problems), with one line on stderr."
    ),
    args=[
        _arg("address", type=_address, metavar="HOST:PORT", help="the command service"),
        _arg("command", nargs="+", metavar="CMD", help="the program and its arguments (after '--')"),
        *_SESSION_ARGS,
    ],
    run=_cmd_exec,
)
_GET = _Client(
    help="download a file from a file service",
    description=(
        "Download PATH (relative to the server's root) into OUT. The bytes go to OUT.part first and OUT appears "
        "only when the download is complete; an interrupted download leaves OUT.part, which --resume continues. "
        "A progress bar is drawn on stderr for large files when stderr is a terminal."
    ),
    args=[
        _arg("address", type=_address, metavar="HOST:PORT", help="the file service"),
        _arg("path", metavar="PATH", help="the file, relative to the served root"),
        _arg(
            "-o",
            "--output",
            metavar="OUT",
            help="where to save it (default: PATH's last component in the current directory; a directory: inside it)",
        ),  # fmt: skip
        _arg("--resume", action="store_true", help="continue from OUT.part if it exists"),
        *_SESSION_ARGS,
        _arg("--quiet", action="store_true", help="no progress bar"),
    ],
    run=_cmd_get,
)
#: The client subcommands, in the order --help lists them (after serve).
_CLIENTS = {"echo": _ECHO, "time": _TIME, "exec": _EXEC, "get": _GET}


# -- main -----------------------------------------------------------------------------------------------


def build_parser(only: list[str] | None = None) -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(
        prog="fastframe",
        description="Length-prefixed framing for TCP: servers, clients and tools.",
        epilog="Run 'fastframe COMMAND --help' for the options of each command.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"fastframe {__version__} ({IMPLEMENTATION} codec, Python {sys.version.split()[0]})",
    )
    # prog given: argparse would otherwise format the usage (and import shutil for the terminal width) to make it
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND", prog=parser.prog)
    if only is None or "serve" in only:
        _add_serve(sub)
    for name, client in _CLIENTS.items():
        if only is None or name in only:
            client.add(sub, name)
    return parser


_COMMANDS = ("serve", *_CLIENTS)


def _needed_commands(argv: list[str]) -> list[str] | None:
    """The subcommands whose parsers ``argv`` needs: only the one it names first (its --help included), none
    for a bare ``--version``, and all of them (None) for anything else: --help, errors, no command.  pip loads
    its commands the same way; here it keeps ``fastframe get`` from importing the servers, whose defaults
    ``serve``'s parser shows."""
    if argv and argv[0] in _COMMANDS:
        return [argv[0]]
    if argv == ["--version"]:
        return []
    return None


def _setup_logging(level: str) -> None:
    import logging

    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s [%(process)d] %(message)s",
        stream=sys.stderr,
    )


def _quick_args(argv: Sequence[str]) -> Any | None:
    """The parsed arguments of a plain client command line (fastframe._quickargs), or None: then argparse."""
    client = _CLIENTS.get(argv[0]) if argv else None
    if client is None:
        return None
    from types import SimpleNamespace

    from ._quickargs import quick_parse

    values = quick_parse(client.specs(), argv[1:])
    return None if values is None else SimpleNamespace(subcommand=argv[0], func=client.run, **values)


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    args = _quick_args(words)
    if args is None:
        parser = build_parser(_needed_commands(words))
        args = parser.parse_args(argv)
        if args.subcommand is None:
            parser.print_help()
            return 2
    from .client import RemoteError

    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"fastframe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except _socket.timeout:
        print("fastframe: error: timed out", file=sys.stderr)
        return 1
    except (OSError, FrameError, EOFError, ValueError, RemoteError) as exc:
        print(f"fastframe: error: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    ssl = sys.modules.get("ssl")  # (imported only if --tls was given)
    if ssl is not None and isinstance(exc, ssl.SSLError):
        from ._tls import describe

        return f"TLS: {describe(exc, 'client')}"
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    if isinstance(exc, EOFError):
        return f"connection closed by the server{': ' + str(exc) if str(exc) else ''}"
    return str(exc) or type(exc).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
