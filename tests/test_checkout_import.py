"""Importing fastframe from a source checkout's root (the current directory comes first on sys.path).

After `pip install .` the checkout has no compiled codec of its own; it must use the installed build of the
same version (and say "cython"), find the servers at servers/ as fastframe.servers, and fall back loudly when
no matching build is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fastframe

ROOT = Path(__file__).resolve().parent.parent
PROBE = "import fastframe, fastframe.servers.engine as e; print(fastframe.IMPLEMENTATION, fastframe.__file__, e.__file__)"


def probe(cwd: Path) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    env = {k: v for k, v in os.environ.items() if k != "FASTFRAME_PURE_PYTHON"}
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [sys.executable, "-c", PROBE], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.skipif(not (ROOT / "pyproject.toml").is_file(), reason="the tests are not running from a checkout")
def test_checkout_root_uses_the_installed_extension() -> None:
    if fastframe.IMPLEMENTATION != "cython":
        pytest.fail("the installed package itself runs without its extension")
    proc = probe(ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "RuntimeWarning" not in proc.stderr, proc.stderr
    impl, package, engine = proc.stdout.split()
    assert impl == "cython"
    assert Path(package).parent == ROOT / "fastframe"  # the checkout's Python code ...
    assert Path(engine).parent == ROOT / "servers"  # ... and its servers/ as fastframe.servers


def test_checkout_of_another_version_falls_back_loudly(tmp_path: Path) -> None:
    if not (ROOT / "pyproject.toml").is_file():
        pytest.skip("the tests are not running from a checkout")
    for name in ("fastframe", "servers"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / "fastframe" / "_version.py").write_text('__version__ = "0.0.0.dev-other"\n')
    proc = probe(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "python"
    assert "RuntimeWarning" in proc.stderr and "could not be imported" in proc.stderr
