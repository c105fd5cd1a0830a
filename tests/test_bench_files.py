"""The file-transfer bench runs end to end in its quick mode: a 4 KiB latency row and a 64 MiB row."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_files_bench_quick_has_the_latency_and_64_mib_rows(tmp_path: Path) -> None:
    out = tmp_path / "files.json"
    # From a temporary directory: the installed package is what gets measured, never the source tree.
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_servers.py"), "--files", "--quick", "--file-dir", str(tmp_path),
         "--json", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    data = json.loads(out.read_text())
    assert data["meta"]["file_sizes"] == [4096, 64 << 20]
    assert data["meta"]["python_pass_s"] > 0
    rows = {(r["size"], r["server"]): r for r in data["results"]}
    small, large = rows[4096, "fastframe"], rows[64 << 20, "fastframe"]
    assert small["status"] == "ok" and large["status"] == "ok", (small, large, proc.stderr[-2000:])
    # Every download was checked (size and digest) by the bench; the small row is a batch of them.
    assert len(small["runs"]) == data["meta"]["small_batch"] and all(r["ok"] for r in small["runs"])
    assert small["x_python_pass"] == small["chosen"]["seconds"] / data["meta"]["python_pass_s"]
    # The floors are timed in the same rounds, and printed as rows of the small table.
    assert data["meta"]["floors_s"]["python -c pass"] == data["meta"]["python_pass_s"]
    assert "python -c 'import re' (pip's script wrapper)" in data["meta"]["floors_s"]
    assert "\npython -c pass " in proc.stdout
    assert large["s_per_gib"] > 0
    assert "4 KiB file" in proc.stdout and "64 MiB file" in proc.stdout and "x py -c pass" in proc.stdout
    failed = [r for r in data["results"] if r["status"] == "failed"]
    assert not failed, failed
    assert proc.returncode == 0, proc.stderr[-2000:]
