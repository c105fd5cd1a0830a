"""The benchmark scripts run end to end (their quick modes) and verify what they measure."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def run(args: list, tmp_path: Path, timeout: float = 300) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    # From a temporary directory: the installed package is what gets measured, never the source tree.
    return subprocess.run(
        [sys.executable, *map(str, args)], cwd=tmp_path, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_codec_bench_quick(tmp_path: Path) -> None:
    out = tmp_path / "codec.json"
    proc = run([BENCH / "bench_codec.py", "--quick", "--sizes", "16,65536", "--json", out], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "all results verified" in proc.stdout
    data = json.loads(out.read_text())
    rows = json.dumps(data)
    assert "fastframe._codec" in rows and "fastframe._codec_py" in rows


@pytest.mark.skipif(shutil.which(os.environ.get("CC", "gcc")) is None, reason="the load generator needs a C compiler")
def test_server_bench_quick(tmp_path: Path) -> None:
    out = tmp_path / "servers.json"
    proc = run([BENCH / "bench_servers.py", "--quick", "--scenarios", "a,b", "--json", out], tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    rows = {(r["scenario"], r["server"]): r for r in data["results"]}
    for key in [("a", "select"), ("b", "select"), ("a", "c-epoll")]:
        row = rows[key]
        assert row["status"] == "ok", row
        assert row["chosen"]["req_per_s"] > 1000 and row["chosen"]["cpu_us_per_req"] > 0
