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


needs_cc = pytest.mark.skipif(
    shutil.which(os.environ.get("CC", "gcc")) is None, reason="the load generator needs a C compiler"
)


@needs_cc
def test_server_bench_quick(tmp_path: Path) -> None:
    """The quick pass measures the echo fast path, the general path and the asyncio rows, and checks them."""
    out = tmp_path / "servers.json"
    proc = run([BENCH / "bench_servers.py", "--quick", "--scenarios", "a,b", "--json", out], tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    rows = {(r["scenario"], r["server"]): r for r in data["results"]}
    expected = {"select": "fast", "c-epoll": "fast", "select-upper": "general", "uvloop-upper": "general",
                "aio-protocol-uvloop": "general", "aio-streams-uvloop": "general"}  # fmt: skip
    for scenario in "ab":
        for server, path in expected.items():
            row = rows[(scenario, server)]
            assert row["status"] == "ok", row
            assert row["path"] == path
            assert row["chosen"]["req_per_s"] > 1000 and row["chosen"]["cpu_us_per_req"] > 0
            assert row["chosen"]["upper"] is (path == "general")  # the load generator checked upper-cased replies
    assert "echo fast path" in proc.stdout and "general path: bytes.upper() per frame" in proc.stdout
    assert "issue 13 targets" in proc.stdout  # the general rows are there to be compared


@needs_cc
def test_loadgen_upper_fails_a_server_that_skips_the_function(tmp_path: Path) -> None:
    """--upper is checked byte for byte: an echo that returns the request unchanged fails the run."""
    sys.path.insert(0, str(BENCH))
    try:
        import bench_servers
    finally:
        sys.path.remove(str(BENCH))
    loadgen = bench_servers.build("loadgen")
    for upper, ok in ((False, True), (True, False)):
        server = bench_servers.Proc([sys.executable, BENCH / "peers.py", "selectors", "0"])
        try:
            port = int(server.wait_line(bench_servers.LISTEN_LINE, timeout=30).group(3))
            argv = [loadgen, "--port", str(port), "--connections", "2", "--duration", "0.2", "--warmup", "0",
                    "--stall", "5"] + (["--upper"] if upper else [])  # fmt: skip
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        finally:
            server.stop()
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result["ok"] is ok, result
        if not ok:
            assert "wrong byte" in result["error"] and "payload" in result["error"]


def test_report_tables_in_the_readmes_match_their_json() -> None:
    """The benchmark tables of README.md and bench/README.md are rendered from the committed JSON."""
    readme = BENCH.parent / "README.md"
    proc = run([BENCH / "report.py", "--check", readme, BENCH / "README.md"], BENCH)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for md in (readme, BENCH / "README.md"):
        assert "<!-- report " in md.read_text()  # there are generated blocks to check


def test_report_renders_every_result_kind(tmp_path: Path) -> None:
    results = sorted((BENCH / "results").glob("*.json"))
    kinds = {p.name.split("-")[0] for p in results}
    assert {"servers", "files", "codec", "instructions"} <= kinds
    for path in results:
        proc = run([BENCH / "report.py", path, "--markdown"], tmp_path)
        assert proc.returncode == 0 and proc.stdout.count("|") > 10, proc.stderr
    pytest.importorskip("matplotlib")
    for path in (p for p in results if not p.name.startswith("instructions")):  # one table, no chart
        png = tmp_path / (path.stem + ".png")
        proc = run([BENCH / "report.py", path, "--plot", png], tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_instructions_counts_a_server_under_callgrind(tmp_path: Path) -> None:
    """bench/instructions.py runs end to end and counts something plausible (valgrind is a Debian tool)."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        message = "valgrind is not installed (apt-get install valgrind)"
        if os.environ.get("FASTFRAME_REQUIRE_TOOLS") == "1":
            pytest.fail(message + " and FASTFRAME_REQUIRE_TOOLS=1", pytrace=False)
        pytest.skip(message)
    out = tmp_path / "instructions.json"
    proc = run([BENCH / "instructions.py", "--servers", "select-upper,select", "--depths", "4", "--requests", "200",
                "--json", out], tmp_path, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = {r["server"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["select-upper"]["requests"] == rows["select"]["requests"] == 200
    # a Python function per frame costs more than the echo relay, and neither is free
    assert 500 < rows["select"]["per_request"] < rows["select-upper"]["per_request"] < 1_000_000
