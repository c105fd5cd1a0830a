"""The settings of ``fastframe serve``, declared once (fastframe.servers.settings): the parser, the TOML file
and the configuration object are all derived from the declarations, and these tests hold them to it.

In-process: ``serve``'s parser is built by ``fastframe.cli`` exactly as the command line builds it, and the
configuration comes from ``config_from``, which ``fastframe serve`` calls; nothing is bound or started.
"""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fastframe.cli import build_parser
from fastframe.servers import settings as st
from fastframe.servers.engine import Limits

FILE_SETTINGS = [s for s in st.SETTINGS if s.in_file]


def serve_parser() -> Any:
    parser = build_parser(["serve"])
    return next(a for a in parser._actions if a.dest == "subcommand").choices["serve"]


def parse(*argv: str) -> st.ServeConfig:
    return st.config_from(vars(build_parser(["serve"]).parse_args(["serve", *argv])))


def toml_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def sample(setting: st.Setting, tmp_path: Path) -> tuple[list[str], Any, Any]:
    """(command-line words, TOML value, the value the configuration must hold) for a non-default value."""
    kind, flag = setting.kind, setting.flags[0]
    if setting.name == "secret_file":
        path = tmp_path / "secret"
        path.write_bytes(b"0123456789abcdef")
        return [flag, str(path)], str(path), str(path)
    if isinstance(kind, st.Flag):
        return [flag], True, True
    if isinstance(kind, st.Words):
        return [flag, "ls", flag, "df"], ["ls", "df"], ["ls", "df"]
    if isinstance(kind, st.Choice):
        value = next(o for o in reversed(kind.options) if o != setting.default)
        return [flag, value], value, value
    if isinstance(kind, st.Integer):
        value = kind.low + 3
        return [flag, str(value)], value, value
    if isinstance(kind, st.Seconds):
        return [flag, "2.5"], 2.5, 2.5
    if isinstance(kind, st.Size):
        return [flag, "64k"], "64k", 65536
    if isinstance(kind, st.Octal):
        return [flag, "0600"], "600", 0o600
    return [flag, "some-text"], "some-text", "some-text"


@pytest.mark.parametrize("setting", FILE_SETTINGS, ids=lambda s: s.name)
def test_every_setting_round_trips_from_flag_and_from_toml(setting: st.Setting, tmp_path: Path) -> None:
    words, toml_value, expected = sample(setting, tmp_path)
    assert expected != setting.default
    assert getattr(parse(), setting.name) == setting.default
    assert getattr(parse(*words), setting.name) == expected
    config_file = tmp_path / "serve.toml"
    config_file.write_text(f"{setting.name} = {toml_literal(toml_value)}\n")
    from_file = parse("--config", str(config_file))
    assert getattr(from_file, setting.name) == expected
    assert from_file.config == str(config_file)


def test_the_declarations_cover_every_flag_serve_accepts() -> None:
    accepted = {opt for action in serve_parser()._actions for opt in action.option_strings} - {"-h", "--help"}
    declared = [flag for s in st.SETTINGS for flag in s.flags]
    assert len(declared) == len(set(declared))  # no flag declared twice
    assert set(declared) == accepted
    assert len({s.name for s in st.SETTINGS}) == len(st.SETTINGS)


def test_flags_override_the_file(tmp_path: Path) -> None:
    config_file = tmp_path / "serve.toml"
    config_file.write_text('max_connections = 100\nallow = ["ls", "df"]\nupper = true\nhost = "127.0.0.2"\n')
    config = parse("--config", str(config_file), "--max-connections", "7", "--allow", "cat")
    assert (config.max_connections, config.allow) == (7, ["cat"])  # the flags win, a list is replaced whole
    assert (config.upper, config.host) == (True, "127.0.0.2")  # the file's others stand
    assert config.idle_timeout == 120.0  # and the defaults under both


def test_limits_are_derived_from_the_settings() -> None:
    keywords = set(inspect.signature(Limits).parameters)
    limit_settings = [s.name for s in st.SETTINGS if s.limit]
    assert set(limit_settings) <= keywords
    limits = parse("--max-connections", "5", "--idle-timeout", "3", "--frame-timeout", "2",
                   "--graceful-timeout", "1.5").limits  # fmt: skip
    assert (limits.max_connections, limits.idle_timeout) == (5, 3)
    assert (limits.frame_timeout, limits.graceful_timeout) == (2, 1.5)
    default = parse().limits
    for name in limit_settings:
        assert getattr(default, name) == st.BY_NAME[name].default


def test_ports_and_secret_are_derived(tmp_path: Path) -> None:
    assert parse().ports == {}  # no service named: every one on its default port
    assert parse("--echo", "0", "--files", "2121").ports == {"echo": 0, "files": 2121}
    secret = tmp_path / "secret"
    secret.write_bytes(b"  0123456789abcdef \n")
    assert parse("--secret-file", str(secret)).secret == b"0123456789abcdef"
    assert parse().secret is None


def test_config_object_refuses_unknown_settings() -> None:
    with pytest.raises(TypeError, match="unknown setting 'max_conections'"):
        st.ServeConfig(max_conections=1)
    with pytest.raises(AttributeError):
        st.ServeConfig().no_such_setting  # noqa: B018


@pytest.mark.parametrize("text, message", [
    ("max_conections = 1", "unknown setting 'max_conections' (did you mean 'max_connections'?)"),
    ("max-connections = 1", "unknown setting 'max-connections' (did you mean 'max_connections'?)"),
    ("frobnicate = 1", "unknown setting 'frobnicate'"),
    ("[limits]\nmax_connections = 1", "unknown setting 'limits' (settings are top-level keys, not tables)"),
    ("config = 'other.toml'", "config: a setting of the command line only"),
    ('workers = "4"', "workers: expected an integer, got a string"),
    ("workers = 0", "workers: must be at least 1, not 0"),
    ("upper = 1", "upper: expected true or false, got an integer"),
    ("max_connections = true", "max_connections: expected an integer, got a boolean"),
    ("idle_timeout = -1", "idle_timeout: must be positive"),
    ('idle_timeout = "1"', "idle_timeout: expected a number of seconds, got a string"),
    ('allow = "ls"', "allow: expected a list of strings, got a string"),
    ('allow = ["ls", 3]', "allow: expected a list of strings, got an array holding an integer"),
    ('output_cap = "lots"', "output_cap: not a size: 'lots'"),
    ("echo = 70000", "echo: must be 0 to 65535, not 70000"),
    ('engine = "threads"', "engine: 'threads' is not one of select, prefork"),
    ("workers = ", "not valid TOML"),
])  # fmt: skip
def test_file_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    config_file = tmp_path / "serve.toml"
    config_file.write_text(text + "\n")
    with pytest.raises(st.ConfigError) as info:
        parse("--config", str(config_file))
    assert str(info.value).startswith(f"{config_file}: ") and message in str(info.value)
    assert "\n" not in str(info.value)


def test_help_shows_each_default_once() -> None:
    run = subprocess.run([sys.executable, "-m", "fastframe", "serve", "--help"], capture_output=True, text=True,
                         timeout=60, env={"COLUMNS": "400", "PATH": "/usr/bin:/bin"}, cwd="/", check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    helps = {}
    for line in run.stdout.splitlines():
        m = re.match(r"^  (--[\w-]+)(?: \S+)?\s{2,}(.*)$", line)
        if m:
            helps[m.group(1)] = m.group(2)
        elif re.match(r"^  (--[\w-]+)", line):  # a long option (its help follows on the next line)
            helps[line.split()[0]] = ""
        elif line.startswith("    ") and helps:
            last = list(helps)[-1]
            helps[last] = (helps[last] + " " + line.strip()).strip()
    assert set(helps) == {f for s in st.SETTINGS for f in s.flags}, sorted(helps)
    assert "(default: None)" not in run.stdout and "(default: False)" not in run.stdout
    for setting in st.SETTINGS:
        text = helps[setting.flags[0]]
        shown = re.findall(r"\(default: ([^)]*)\)", text)
        if setting.shown_default:
            assert shown == [setting.shown_default], text
        elif setting.default in (None, False, []):
            assert shown == [], text
        else:
            assert len(shown) == 1, text
            assert setting.kind.parse(shown[0]) == setting.default, text  # shown as one would type it


def test_the_services_do_not_import_the_configuration() -> None:
    """config imports the service builders directly; no service imports config or the settings back (once,
    each registered itself with config from an import that config triggered: a cycle behind a registry)."""
    probe = ("import sys, fastframe.servers.command, fastframe.servers.files, fastframe.servers.echo, "
             "fastframe.servers.timeservice, fastframe.servers.auth; "
             "print(sorted(m for m in sys.modules if m.startswith('fastframe.servers.')))")  # fmt: skip
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd="/",
                         check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    loaded = set(run.stdout.strip()[1:-1].replace("'", "").split(", "))
    assert "fastframe.servers.command" in loaded and "fastframe.servers.files" in loaded
    assert not loaded & {"fastframe.servers.config", "fastframe.servers.settings"}, loaded
