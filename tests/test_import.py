"""The package's front door: which codec an import picks, and what it says when the extension is not usable.

Each case runs on a real copy of the installed package in a fresh interpreter: the extension removed
(missing), replaced by a file that is not a loadable library (broken), or removed from a build that recorded
``FASTFRAME_NO_EXTENSIONS=1`` (pure by choice).  The interpreter runs with ``-S``, so nothing from
site-packages (an editable install's import hook, say) can hand the copy the real extension back.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fastframe

PACKAGE = Path(fastframe.__file__).resolve().parent
ROOT = Path(__file__).resolve().parent.parent

REPORT = """
import sys, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import fastframe
print(repr(fastframe.IMPLEMENTATION))
print(repr(fastframe.FramedSocket.codec.__name__))
print(repr([(w.category.__name__, str(w.message), w.filename) for w in caught]))
"""


def package_copy(tmp_path: Path, so: bytes | None = None, build_info: str | None = None) -> Path:
    """A copy of the installed fastframe under ``tmp_path/site`` with no extension, or with ``so`` in its place."""
    site = tmp_path / "site"
    shutil.copytree(
        PACKAGE,
        site / "fastframe",
        ignore=shutil.ignore_patterns("_codec.*.so", "_codec.*.pyd", "__pycache__", "servers"),
    )
    for stale in (site / "fastframe").glob("_build_info.py"):
        stale.unlink()  # the copy says only what the test says
    if so is not None:
        (site / "fastframe" / f"_codec{importlib.machinery.EXTENSION_SUFFIXES[0]}").write_bytes(so)
    if build_info is not None:
        (site / "fastframe" / "_build_info.py").write_text(build_info)
    return site


def run(site: Path, code: str, *flags: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FASTFRAME_PURE_PYTHON", "PYTHONWARNINGS")}
    env["PYTHONPATH"] = str(site)
    return subprocess.run(
        [sys.executable, "-S", *flags, "-c", textwrap.dedent(code)],
        cwd=site.parent, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def report(site: Path) -> tuple[str, str, list[tuple[str, str, str]]]:
    proc = run(site, REPORT)
    assert proc.returncode == 0, proc.stderr
    impl, framed, caught = (eval(line) for line in proc.stdout.strip().splitlines())
    return impl, framed, caught


def test_missing_extension_warns_with_the_real_cause(tmp_path: Path) -> None:
    site = package_copy(tmp_path)
    impl, framed, caught = report(site)
    assert (impl, framed) == ("python", "fastframe._codec_py")
    assert len(caught) == 1, caught
    category, message, filename = caught[0]
    assert category == "RuntimeWarning"
    assert "is not installed" in message and "No module named 'fastframe._codec'" in message, message
    assert str(site / "fastframe") in message  # where it looked
    assert "circular import" not in message and "partially initialized" not in message, message
    assert "FASTFRAME_NO_EXTENSIONS=1" in message and "FASTFRAME_PURE_PYTHON=1" in message
    assert filename == "<string>"  # points at the importing line, not at fastframe's insides


def test_broken_extension_warns_with_the_loaders_message(tmp_path: Path) -> None:
    site = package_copy(tmp_path, so=b"\x7fELF but not really a shared object")
    impl, framed, caught = report(site)
    assert (impl, framed) == ("python", "fastframe._codec_py")
    assert len(caught) == 1, caught
    category, message, _ = caught[0]
    assert category == "RuntimeWarning"
    assert "installed but failed to load" in message, message
    so = site / "fastframe" / f"_codec{importlib.machinery.EXTENSION_SUFFIXES[0]}"
    assert str(so) in message  # the dynamic loader's own words name the file
    assert "circular import" not in message


def test_broken_extension_is_an_error_under_warnings_as_errors(tmp_path: Path) -> None:
    site = package_copy(tmp_path, so=b"")
    proc = run(site, "import fastframe", "-W", "error")
    assert proc.returncode != 0
    assert "RuntimeWarning: fastframe: the C extension fastframe._codec is installed but failed to load" in proc.stderr


def test_a_build_without_extensions_by_choice_is_quiet(tmp_path: Path) -> None:
    site = package_copy(tmp_path, build_info="EXTENSIONS = False\n")
    impl, framed, caught = report(site)
    assert (impl, framed, caught) == ("python", "fastframe._codec_py", [])
    proc = run(
        site, "import fastframe, fastframe._codec_choice as c; assert c.built_without_extensions()", "-W", "error"
    )
    assert proc.returncode == 0, proc.stderr


def test_an_ordinary_build_that_lost_its_extension_still_warns(tmp_path: Path) -> None:
    site = package_copy(tmp_path, build_info="EXTENSIONS = True\n")
    impl, _, caught = report(site)
    assert impl == "python"
    assert len(caught) == 1 and "is not installed" in caught[0][1], caught


def test_a_pure_build_with_a_broken_extension_still_warns(tmp_path: Path) -> None:
    """Built pure by choice, yet a .so appeared and does not load: that is not the choice, so it is said."""
    site = package_copy(tmp_path, so=b"junk", build_info="EXTENSIONS = False\n")
    impl, _, caught = report(site)
    assert impl == "python"
    assert len(caught) == 1 and "failed to load" in caught[0][1], caught


def test_importing_the_package_scans_nothing_and_grafts_nothing() -> None:
    """The package is a plain package: no distribution metadata scans, no servers loaded behind the user's back."""
    code = "import sys, fastframe; print(sorted(m for m in sys.modules if m.startswith(('importlib.', 'fastframe'))))"
    env = {k: v for k, v in os.environ.items() if k != "FASTFRAME_PURE_PYTHON"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent.parent, env=env, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    loaded = eval(proc.stdout)
    assert "importlib.metadata" not in loaded
    assert "fastframe.servers" not in loaded


def test_servers_are_the_subpackage_fastframe_servers() -> None:
    """Installed (wheel or editable), servers/ is fastframe.servers: a real subpackage that the import system (and
    so static tools) finds on its own, not a module object grafted on at run time."""
    import fastframe.servers.engine

    spec = importlib.util.find_spec("fastframe.servers")
    assert spec is not None and spec.submodule_search_locations, spec
    engine = Path(fastframe.servers.engine.__file__)
    assert any(engine.parent == Path(p) for p in spec.submodule_search_locations), (engine, spec)
    assert fastframe.servers.engine.__spec__.name == "fastframe.servers.engine"


def test_an_editable_install_runs_the_checkouts_code() -> None:
    """Development goes through `pip install -e .` (either editable mode): fastframe and fastframe.servers are
    the checkout's own files and the extension is built in place, so nothing is taken from another install."""
    import fastframe.servers.engine

    here = Path(os.path.realpath(fastframe.__file__))
    if not (ROOT / "pyproject.toml").is_file() or here.parent != ROOT / "fastframe":
        pytest.skip("not an editable install of this checkout (a wheel under test): nothing to check here")
    assert Path(os.path.realpath(fastframe.servers.engine.__file__)) == ROOT / "servers" / "engine.py"
    if not fastframe._codec_choice.built_without_extensions() and not os.environ.get("FASTFRAME_PURE_PYTHON"):
        assert fastframe.IMPLEMENTATION == "cython"
