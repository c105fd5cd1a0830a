"""Every setting of ``fastframe serve``, declared once: its flag, file key, type, default, check and help.

A :class:`Setting` is one declaration (gunicorn's ``config.Setting`` is the model): ``name`` is the
attribute of :class:`ServeConfig` and the key in a ``--config`` TOML file (the long flag with underscores:
``--max-connections`` is ``max_connections``); ``kind`` converts and checks a value, from a command-line
string or from a TOML value; ``default`` is what applies when neither sets it.  Everything else is derived
from :data:`SETTINGS`:

- the ``serve`` parser (:func:`add_arguments`): one option per setting, grouped by ``section``, whose help
  ends with the default, once;
- the file (:func:`load_file`): top-level keys only, a list for a repeatable flag (``allow = ["ls", "df"]``);
  an unknown key, a wrong type or a bad value is a :class:`ConfigError` of one line;
- the configuration (:class:`ServeConfig`, built by :func:`config_from`): the defaults, overridden by the
  file, overridden by the flags given on the command line; and from it the engine's ``Limits``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
from collections.abc import Mapping
from typing import Any, Callable

from fastframe.wire.auth import load_secret
from fastframe.wire.timeformat import FORMATS

from .engine import Limits
from .kinds import Choice, ConfigError, Endpoint, Flag, Integer, Kind, Octal, Seconds, Size, Text, Words
from .unixsock import DEFAULT_UNIX_MODE

__all__ = ["DEFAULT_PORTS", "SERVICES", "SETTINGS", "ConfigError", "ServeConfig", "Setting", "add_arguments",
           "config_from", "load_file"]  # fmt: skip

#: The services, in the order they start, and the port each takes when no service is named.
SERVICES = ("echo", "time", "command", "files")
DEFAULT_PORTS = {"echo": 7007, "time": 3737, "command": 5140, "files": 2121}


# -- the declarations -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting: see the module docstring.  ``shown_default`` overrides how --help shows the default
    (``""``: not at all); ``limit`` marks the settings that are the engine's ``Limits`` keywords; a setting
    with ``in_file=False`` exists on the command line only."""

    name: str
    section: str
    kind: Kind
    default: Any
    help: str
    meta: str | None = None
    shown_default: str | None = None
    limit: bool = False
    in_file: bool = True

    @property
    def flags(self) -> tuple[str, ...]:
        return ("--" + self.name.replace("_", "-"),)

    @property
    def repeatable(self) -> bool:
        return isinstance(self.kind, Words)

    def help_text(self) -> str:
        """The help, ending with the default once (none for flags, empty lists and unset values)."""
        shown = self.shown_default
        if shown is None:
            absent = self.default is None or self.default is False or self.default == []
            shown = "" if absent else self.kind.show(self.default)
        return f"{self.help} (default: {shown})" if shown else self.help


SERVER, PORTS, ECHO_TIME, COMMAND_FILES, TLS, LIMITS, DEPLOY = (
    "server",
    "services (ports, or unix:/path for the TCP-only ones; none given = all on their defaults)",
    "echo and time",
    "command and files",
    "TLS (every TCP service; the UDP time service stays plain)",
    "limits",
    "deployment (behind a balancer, logs, metrics)",
)
_PORT = Integer(0, 65535)
_AT_LEAST_ONE = Integer(1)
_ENDPOINT = Endpoint()

SETTINGS: tuple[Setting, ...] = (
    Setting("config", SERVER, Text(), None, "read settings from this TOML file (keys like max_connections = 100); "
            "flags given here override it", meta="FILE", in_file=False),
    Setting("engine", SERVER, Choice(("select", "prefork")), "select",
            "one epoll loop in one process, or a master supervising worker processes"),
    Setting("workers", SERVER, _AT_LEAST_ONE, None, "prefork worker processes", meta="N",
            shown_default="the number of CPUs"),
    Setting("host", SERVER, Text(), "127.0.0.1", "address to listen on (use with care: see --secret-file)"),
    Setting("pidfile", SERVER, Text(), None, "write the (master) PID to FILE", meta="FILE"),
    Setting("log_level", SERVER, Choice(("debug", "info", "warning", "error")), "info", "logging threshold"),
    Setting("echo", PORTS, _ENDPOINT, None, f"framed echo service (TCP; {DEFAULT_PORTS['echo']} when no service is named)",
            meta="PORT|unix:PATH"),
    Setting("time", PORTS, _PORT, None, "RFC 868 time service (UDP and TCP on the same port; "
            f"{DEFAULT_PORTS['time']} when no service is named)", meta="PORT"),
    Setting("command", PORTS, _ENDPOINT, None, f"remote command service (needs --allow; {DEFAULT_PORTS['command']} when "
            "no service is named)", meta="PORT|unix:PATH"),
    Setting("files", PORTS, _ENDPOINT, None, f"file download service (needs --root; {DEFAULT_PORTS['files']} when no "
            "service is named)", meta="PORT|unix:PATH"),
    Setting("upper", ECHO_TIME, Flag(), False, "echo upper-cases what it sends back"),
    Setting("raw", ECHO_TIME, Flag(), False, "echo speaks raw RFC 862 (no framing) for nc/socat"),
    Setting("time_format", ECHO_TIME, Choice(FORMATS), "unix",
            "seconds since 1970 (unix) or since 1900 (rfc868, what rdate expects)"),
    Setting("allow", COMMAND_FILES, Words(), [], "allow this program as argv[0] (repeat for more); no --allow, no "
            "command service", meta="CMD"),
    Setting("root", COMMAND_FILES, Text(), None, "directory served by the file service (no --root, no file service); "
            "also the commands' working directory, which is / without it", meta="DIR"),
    Setting("allow_hidden", COMMAND_FILES, Flag(), False,
            "let the file service serve hidden files and directories (names that start with '.')"),
    Setting("secret_file", COMMAND_FILES, Text(), None,
            "require the shared secret in FILE (mutual HMAC-SHA256) for command and files", meta="FILE"),
    Setting("command_timeout", COMMAND_FILES, Seconds(), 10.0, "kill a command after S seconds (per command)",
            meta="S"),
    Setting("output_cap", COMMAND_FILES, Size(), 1 << 20,
            "kill a command after this much output, stdout and stderr together (per command)", meta="BYTES"),
    Setting("max_commands", COMMAND_FILES, _AT_LEAST_ONE, 8,
            "commands running at once in the whole server, all workers together", meta="N"),
    Setting("tls_cert", TLS, Text(), None, "serve TLS with the certificate chain in FILE (PEM, leaf first): "
            "encrypts and authenticates the server to its clients", meta="FILE"),
    Setting("tls_key", TLS, Text(), None, "the private key of --tls-cert (PEM, unencrypted)", meta="FILE",
            shown_default="inside --tls-cert"),
    Setting("tls_client_ca", TLS, Text(), None, "require a client certificate signed by a CA in FILE (mutual "
            "TLS): authenticates the clients", meta="FILE"),
    Setting("max_request", LIMITS, Size(), 1 << 20, "largest request frame (per frame)", meta="BYTES"),
    Setting("max_connections", LIMITS, _AT_LEAST_ONE, 10000,
            "open connections in the whole server, all workers together; more are refused", meta="N", limit=True),
    Setting("idle_timeout", LIMITS, Seconds(), 120.0, "close a connection that reads and sends nothing, or whose "
            "client reads none of its output, for this long (per connection)", meta="S", limit=True),
    Setting("frame_timeout", LIMITS, Seconds(), 10.0,
            "close a connection that takes longer than this to send one frame (per connection)", meta="S",
            limit=True),
    Setting("graceful_timeout", LIMITS, Seconds(), 10.0, "on SIGTERM (prefork: and for workers replaced on SIGHUP), "
            "give in-flight work this long before closing (per process)", meta="S", limit=True),
    Setting("unix_mode", DEPLOY, Octal(), DEFAULT_UNIX_MODE, "permissions of the unix: socket files", meta="MODE"),
    Setting("proxy_protocol", DEPLOY, Flag(), False, "every TCP connection starts with a PROXY protocol header "
            "(v1 or v2) from a --trusted-proxy; others are closed"),
    Setting("trusted_proxy", DEPLOY, Words(), [], "a balancer allowed to send PROXY headers: an address or CIDR "
            "(repeat for more; required with --proxy-protocol)", meta="CIDR"),
    Setting("access_log", DEPLOY, Text(), None, "one key=value line per finished connection, to FILE or - "
            "(standard output); SIGUSR1 reopens it", meta="FILE|-"),
    Setting("log_file", DEPLOY, Text(), None, "the error log goes to FILE instead of standard error; SIGUSR1 "
            "reopens it", meta="FILE"),
    Setting("metrics", DEPLOY, Text(), None, "serve Prometheus metrics at http://HOST:PORT/metrics (needs "
            "prometheus_client)", meta="HOST:PORT"),
)  # fmt: skip
BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
FILE_KEYS = tuple(s.name for s in SETTINGS if s.in_file)


def _toml_type(value: Any) -> str:
    if isinstance(value, list):
        odd = [item for item in value if not isinstance(item, str)]
        return f"an array holding {_toml_type(odd[0])}" if odd else "an array"
    for kind, name in ((bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"),
                       (dict, "a table")):  # fmt: skip
        if isinstance(value, kind):
            return name
    return "a date or time"


# -- the configuration ------------------------------------------------------------------------------------


class ServeConfig:
    """Everything ``fastframe serve`` can be told: one attribute per setting (its default unless given), and
    what the services need derived from them: ``ports`` maps each service given a port to it (empty: every
    service on its default port, the command and file services only where they are configured), ``limits``
    is the engine's ``Limits``, ``secret`` holds the bytes of ``secret_file`` (read by :func:`config_from`) and
    ``tls_context`` the server's ``ssl.SSLContext`` when ``tls_cert`` is set (built, and so checked, when first
    asked for: the services and listeners ask before anything is bound).
    """

    def __init__(self, secret: bytes | None = None, **values: Any) -> None:
        settings: dict[str, Any] = {s.name: (list(s.default) if s.repeatable else s.default) for s in SETTINGS}
        for key, value in values.items():
            if key not in settings:
                raise TypeError(f"unknown setting {key!r}")
            settings[key] = value
        self._settings = settings
        self.secret = secret
        self._tls: Any = False  # not built yet

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_settings"][name]
        except KeyError:
            raise AttributeError(f"no setting {name!r}") from None

    @property
    def ports(self) -> dict[str, Any]:
        return {name: self._settings[name] for name in SERVICES if self._settings[name] is not None}

    @property
    def tls_context(self) -> Any:
        """The TLS server context (None without ``tls_cert``); ConfigError (one line) for a bad file."""
        if self._tls is False:
            self._tls = _tls_context(self._settings)
        return self._tls

    @property
    def limits(self) -> Limits:
        return Limits(**{s.name: self._settings[s.name] for s in SETTINGS if s.limit})


def _tls_context(settings: Mapping[str, Any]) -> Any:
    """The TLS server context of these settings (None without ``tls_cert``); ConfigError names a bad file."""
    cert, key, client_ca = settings["tls_cert"], settings["tls_key"], settings["tls_client_ca"]
    if not cert:
        if key or client_ca:
            raise ConfigError(f"--tls-{'key' if key else 'client-ca'} needs --tls-cert")
        return None
    from fastframe._tls import TLSConfigError, server_context  # (ssl only when TLS is asked for)

    try:
        return server_context(cert, key, client_ca)
    except TLSConfigError as exc:
        raise ConfigError(str(exc)) from None


def config_from(given: Mapping[str, Any]) -> ServeConfig:
    """The configuration from the settings ``given`` on the command line (others are ignored), over those of
    the ``config`` file if one is given, over the defaults; ConfigError says what is wrong, in one line."""
    values: dict[str, Any] = {}
    path = given.get("config")
    if path:
        values.update(load_file(path))
    values.update((key, value) for key, value in given.items() if key in BY_NAME)
    secret = None
    if values.get("secret_file"):
        try:
            secret = load_secret(values["secret_file"])
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return ServeConfig(secret=secret, **values)


# -- the command line -------------------------------------------------------------------------------------


def _converter(setting: Setting) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return setting.kind.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = setting.name  # what argparse names in its own messages
    return convert


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per setting, in one argument group per section.  No option has a default in the parser:
    the namespace holds only what the command line gave, so that it can override the file."""
    groups: dict[str, Any] = {}
    for setting in SETTINGS:
        group = groups.get(setting.section)
        if group is None:
            group = groups[setting.section] = parser.add_argument_group(setting.section)
        options: dict[str, Any] = {"dest": setting.name, "default": argparse.SUPPRESS,
                                   "help": setting.help_text().replace("%", "%%")}  # fmt: skip
        kind = setting.kind
        if isinstance(kind, Flag):
            options["action"] = "store_true"
        elif isinstance(kind, Choice):
            options["choices"] = kind.options
        else:
            options.update(type=_converter(setting), metavar=setting.meta)
            if setting.repeatable:
                options["action"] = "append"
        group.add_argument(*setting.flags, **options)


# -- the file ---------------------------------------------------------------------------------------------


def load_file(path: str) -> dict[str, Any]:
    """The settings in the TOML file ``path``, checked; ConfigError (one line) if it cannot be read, is not
    TOML, or holds an unknown key, a value of the wrong type or a bad value."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - the same parser, before it joined the standard library
        import tomli as tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for key, value in data.items():
        setting = BY_NAME.get(key)
        if setting is not None and not setting.in_file:
            raise ConfigError(f"{path}: {key}: a setting of the command line only")
        if setting is None:
            near = difflib.get_close_matches(key.replace("-", "_"), FILE_KEYS, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            if isinstance(value, dict) and not hint:
                hint = " (settings are top-level keys, not tables)"
            raise ConfigError(f"{path}: unknown setting {key!r}{hint}")
        if not setting.kind.matches(value):
            raise ConfigError(f"{path}: {key}: expected {setting.kind.expected}, got {_toml_type(value)}")
        try:
            values[key] = setting.kind.accept(value)
        except ValueError as exc:
            raise ConfigError(f"{path}: {key}: {exc}") from None
    return values
