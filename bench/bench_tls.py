"""The TLS rows of the server bench (``bench_servers.py --tls``): framed echo and a download, over TLS.

Echo: ``fastframe serve --engine select --echo 0 --tls-cert --tls-key`` against the uvloop ``Protocol`` peer of
``peers.py`` with ``ssl=`` (fastframe's own server context: the same certificate, policy and ciphers), 64 B,
``--connections`` connections, depth 1 and 16, driven by ``tls_loadgen.py`` (the C load generator speaks no
TLS) pinned like the C one; the server's CPU per request is read from /proc the same way for both.

Download: ``fastframe serve --files --tls-*`` + ``fastframe get --tls`` against nginx (``ssl_certificate``,
TLS 1.3 with the cipher suite both negotiate by default, TLS_AES_256_GCM_SHA384) + ``curl``, one file of
``--file-size``, the median of ``--repeat`` rounds.  fastframe sends the file through TLS in 256 KiB blocks
read in user space (no kernel TLS on this kernel: the JSON says which path ran); nginx sends through OpenSSL
too (``sendfile`` does not apply to TLS without kernel TLS).

One self-signed ECDSA P-256 certificate (``openssl req -x509``) for every server.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import bench_servers as bs

TLS_LOADGEN = os.path.join(bs.BENCH_DIR, "tls_loadgen.py")
CIPHER = "TLS_AES_256_GCM_SHA384"

NGINX_TLS_CONF = bs.NGINX_CONF.replace(
    "listen 127.0.0.1:{port};",
    "listen 127.0.0.1:{port} ssl;\n        ssl_certificate {cert};\n        ssl_certificate_key {key};\n"
    "        ssl_protocols TLSv1.2 TLSv1.3;\n        ssl_conf_command Ciphersuites " + CIPHER + ";",
)


def make_certificate(directory: str) -> tuple[str, str]:
    cert, key = os.path.join(directory, "server.pem"), os.path.join(directory, "server.key")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days",
         "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", key,
         "-out", cert],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def ktls_available() -> str:
    try:
        with open("/proc/sys/net/ipv4/tcp_available_ulp") as f:
            ulps = f.read().split()
    except OSError:
        ulps = []
    return "kernel tls module loaded" if "tls" in ulps else f"no kernel tls module (available ULPs: {ulps or 'none'})"


def echo_row(args: argparse.Namespace, name: str, depth: int, cert: str, key: str, cpus: Any) -> dict[str, Any]:
    py = sys.executable
    if name == "select-tls":
        argv = [py, "-m", "fastframe", "serve", "--engine", "select", "--echo", "0", "--tls-cert", cert, "--tls-key",
                key]  # fmt: skip
        env: dict[str, str] = {}
    else:
        argv, env = [py, bs.PEERS, "uvloop-protocol", "0"], {"BENCH_TLS_CERT": cert, "BENCH_TLS_KEY": key}
    server = bs.Proc(argv, env=env, cpus=cpus["server"])
    try:
        port = int(server.wait_line(bs.LISTEN_LINE, timeout=30.0).group(3))
        lg = subprocess.run(
            [py, TLS_LOADGEN, "--port", str(port), "--cafile", cert, "--connections", str(args.connections),
             "--depth", str(depth), "--size", "64", "--warmup", str(args.warmup), "--duration", str(args.duration),
             "--pid", str(server.pid)],
            capture_output=True, text=True, timeout=args.warmup + args.duration + 120, preexec_fn=bs._pin(cpus["lg"]),
        )  # fmt: skip
        try:
            result: dict[str, Any] = json.loads(lg.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            result = {"ok": False, "error": f"load generator failed: {lg.stderr.strip()[-300:]}"}
    except (bs.BenchError, subprocess.TimeoutExpired) as exc:
        result = {"ok": False, "error": str(exc)}
    finally:
        server.stop()
    result.update(server=name, depth=depth)
    return result


def download_rows(args: argparse.Namespace, base: str, cert: str, key: str, cpus: Any) -> list[dict[str, Any]]:
    root = os.path.join(base, "root")
    os.makedirs(root)
    size = args.file_size
    src = os.path.join(root, "blob.bin")
    want = bs.make_file(src, size)
    out = os.path.join(base, "download.bin")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    servers: dict[str, tuple[bs.Proc, list[str]]] = {}
    ff = bs.Proc([sys.executable, "-m", "fastframe", "serve", "--files", "0", "--root", root, "--tls-cert", cert,
                  "--tls-key", key], cpus=cpus["server"])  # fmt: skip
    port = int(ff.wait_line(bs.LISTEN_LINE, timeout=30.0).group(3))
    servers["fastframe"] = (ff, [*bs.fastframe_client(), "get", f"localhost:{port}", "blob.bin", "-o", out, "--tls",
                                 "--cafile", cert])  # fmt: skip
    tmp = os.path.join(base, "nginx")
    os.makedirs(tmp)
    nport = bs.free_port()
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_TLS_CONF.format(tmp=tmp, port=nport, root=root, cert=cert, key=key))
    ng = bs.Proc([nginx, "-p", tmp, "-c", conf, "-e", os.path.join(tmp, "error.log")], cpus=cpus["server"],
                 stdout=subprocess.DEVNULL)  # fmt: skip
    bs.wait_connectable(ng, nport, 15.0)
    servers["nginx"] = (ng, ["curl", "-sS", "--fail", "--cacert", cert, "--tls13-ciphers", CIPHER, "-o", out,
                             f"https://localhost:{nport}/blob.bin"])  # fmt: skip
    rows = {name: {"server": name, "size": size, "runs": []} for name in servers}
    try:
        for rep in range(-1, args.repeat):
            for name, (proc, argv) in servers.items():
                run = bs.download(argv, proc, out, size, want, cpus["lg"])
                bs.log(f"  download {bs.fmt_bytes(size)} {name} [{'warm-up' if rep < 0 else rep + 1}]: "
                       + (f"{run['seconds']:.2f} s" if run["ok"] else f"FAILED: {run['error']}"))  # fmt: skip
                if rep >= 0:
                    rows[name]["runs"].append(run)
    finally:
        for proc, _ in servers.values():
            proc.stop()
    for row in rows.values():
        ok = sorted((r for r in row["runs"] if r["ok"]), key=lambda r: r["seconds"])
        row["chosen"] = ok[(len(ok) - 1) // 2] if ok else None
    return list(rows.values())


def run_tls(args: argparse.Namespace) -> int:
    cpu_list = sorted(os.sched_getaffinity(0))
    two = len(cpu_list) >= 2 and not args.no_pin
    cpus = {"lg": {cpu_list[0]} if two else None, "server": {cpu_list[1]} if two else None}
    base = tempfile.mkdtemp(prefix="fastframe-tls-", dir=args.file_dir)
    started = time.monotonic()
    try:
        cert, key = make_certificate(base)
        echo = []
        for depth in (1, 16):
            runs: dict[str, list[dict[str, Any]]] = {"select-tls": [], "uvloop-tls": []}
            for _ in range(args.repeat):  # interleaved, the median req/s kept
                for name in runs:
                    r = echo_row(args, name, depth, cert, key, cpus)
                    bs.log(f"  echo depth {depth} {name}: " + (f"{r['req_per_s']:.0f} req/s, "
                           f"{r['cpu_us_per_req']:.2f} us/req" if r.get("ok") else f"FAILED: {r.get('error')}"))  # fmt: skip
                    runs[name].append(r)
            for rs in runs.values():
                echo.append(bs.pick_median(rs) or rs[0])
        downloads = download_rows(args, base, cert, key, cpus) if not args.no_download else []
    finally:
        shutil.rmtree(base, ignore_errors=True)
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    print(
        f"fastframe TLS bench - {date} - {bs._cpu_model()}, {os.cpu_count()} CPUs; "
        f"{f'load generator on CPU {cpu_list[0]}, server on CPU {cpu_list[1]}' if two else 'not pinned'}"
    )
    print(f"\nTLS framed echo, {args.connections} connections x 64 B ({args.duration:g} s window, median of "
          f"{args.repeat})")  # fmt: skip
    head = f"{'server':<34} {'depth':>5} {'req/s':>9} {'CPU us/req':>10} {'x select':>8} {'lg CPU':>6}  negotiated"
    print(head + "\n" + "-" * len(head))
    for r in echo:
        if not r.get("ok"):
            print(f"{r['server']:<34} {r['depth']:>5} FAILED: {r.get('error')}")
            continue
        ours = next(e for e in echo if e["server"] == "select-tls" and e["depth"] == r["depth"])
        r["ratio_req_s"] = ours["req_per_s"] / r["req_per_s"] if ours.get("ok") else None
        label = "fastframe select --tls-cert" if r["server"] == "select-tls" else "uvloop Protocol, ssl="
        print(f"{label:<34} {r['depth']:>5} {r['req_per_s']:>9.0f} {r['cpu_us_per_req']:>10.2f} "
              f"{bs.fmt_ratio(r['ratio_req_s']):>8} {r['loadgen_cpu_util']:>6.2f}  {r.get('tls', '')}")  # fmt: skip
    print(
        "x select: fastframe's req/s / this row's (above 1: fastframe faster); lg CPU: the Python load "
        "generator's CPU share (near 1.00: it, not the server, was the limit)"
    )
    if downloads:
        print(
            f"\nTLS download of {bs.fmt_bytes(args.file_size)} (median of {args.repeat}); fastframe path: {path_ran()}"
        )
        for row in downloads:
            c = row["chosen"]
            label = "fastframe serve --tls + get --tls" if row["server"] == "fastframe" else "nginx ssl + curl"
            if c is None:
                print(f"{label:<34} FAILED: {row['runs'][0]['error'] if row['runs'] else 'no run'}")
                continue
            gib = args.file_size / bs.GiB
            print(f"{label:<34} {c['seconds']:.2f} s  {gib / c['seconds']:.2f} GiB/s  server CPU "
                  f"{c['server_cpu_s']:.2f} s  client CPU {c['client_cpu_s']:.2f} s")  # fmt: skip
    elapsed = time.monotonic() - started
    print(f"total time {elapsed:.0f} s")
    if args.json:
        meta = {"date": date, "command": bs._command_line(), "connections": args.connections, "duration": args.duration,
                "repeat": args.repeat, "cipher": CIPHER, "download_path": path_ran(), "kernel_tls": ktls_available(),
                "cpu_model": bs._cpu_model(), "python": sys.version.split()[0], "elapsed_s": round(elapsed, 1)}  # fmt: skip
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "echo": echo, "downloads": downloads}, f, indent=1)
        print(f"results saved to {args.json}")
    ok = all(r.get("ok") for r in echo) and all(row["chosen"] for row in downloads)
    return 0 if ok else 1


def path_ran() -> str:
    from fastframe.servers.tls import DOWNLOAD_PATH

    return f"{DOWNLOAD_PATH}; {ktls_available()}"
