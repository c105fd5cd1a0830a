"""Memory stays flat under a steady command load (each command schedules a timeout that is cancelled when it ends:
cancelled timers used to keep their connection, its buffers and the Popen until due, 20 -> 571 MB in 150 s)."""

from __future__ import annotations

import threading
import time

import harness
import pytest


class CommandLoop(threading.Thread):
    """Runs ``echo 1`` on one connection again and again, checking every reply."""

    def __init__(self, addr) -> None:
        super().__init__(daemon=True)
        self.addr = addr
        self.done = 0
        self.errors: list[str] = []
        self.stop_flag = threading.Event()

    def run(self) -> None:
        try:
            with harness.connect(self.addr) as s:
                while not self.stop_flag.is_set():
                    harness.send_frame(s, b"echo 1")
                    frames = [harness.recv_frame(s)]
                    while frames[-1][:1] not in (b"X", b"!"):
                        frames.append(harness.recv_frame(s))
                    if frames != [b"O1\n", b"X0"]:
                        self.errors.append(repr(frames))
                        return
                    self.done += 1
        except (OSError, EOFError) as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")


def run_command_load(server, engine: str, seconds: float, warm: int, sample_every: float = 1.0):
    """Three clients loop on ``echo 1``; return [(commands done, RSS KiB of the server's processes)] samples,
    taken after ``warm`` commands, every ``sample_every`` s until ``seconds`` have passed.  The server's processes
    are the master and its workers (prefork) or the one process (select), never the commands themselves."""
    clients = [CommandLoop(server.addr("command")) for _ in range(3)]
    for c in clients:
        c.start()
    samples = []
    try:
        assert harness.wait_until(lambda: sum(c.done for c in clients) >= warm, 60), "the warm-up never finished"
        pids = [server.pid, *(server.workers() if engine == "prefork" else [])]
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            samples.append((sum(c.done for c in clients), harness.rss_kib(pids)))
            time.sleep(sample_every)
        samples.append((sum(c.done for c in clients), harness.rss_kib(pids)))
    finally:
        for c in clients:
            c.stop_flag.set()
        for c in clients:
            c.join(15)
    errors = [e for c in clients for e in c.errors]
    assert not errors, errors[:5]
    return samples


def test_rss_flat_while_commands_run(engine, serve):
    server = serve("--command", "0", "--allow", "echo", "--command-timeout", "30", engine=engine)
    samples = run_command_load(server, engine, seconds=8.0, warm=500)
    (n0, rss0), (n1, rss1) = samples[0], samples[-1]
    print(f"{engine}: {n1 - n0} commands, RSS {rss0} -> {rss1} KiB")
    assert n1 - n0 >= 1000, f"only {n1 - n0} commands ran in 8 s"
    # The leak was about 2 KiB per command: 2,000 commands grew RSS by 4 MiB or more.
    assert rss1 - rss0 < 1536, f"RSS grew by {rss1 - rss0} KiB over {n1 - n0} commands: {samples}"


@pytest.mark.soak
def test_rss_flat_while_commands_run_soak(engine, serve):
    """The long version: a fifth of FASTFRAME_SOAK_SECONDS per engine; RSS over the second half within 10%."""
    seconds = harness.soak_seconds() / 5
    server = serve("--command", "0", "--allow", "echo", "--command-timeout", "30", engine=engine)
    samples = run_command_load(server, engine, seconds=seconds, warm=2000, sample_every=2.0)
    late = [rss for _, rss in samples[len(samples) // 2 :]]
    print(f"{engine}: {samples[-1][0] - samples[0][0]} commands in {seconds:.0f} s, RSS KiB samples {samples}")
    assert max(late) <= 1.10 * min(late), f"RSS not flat over the second half: {late}"
    assert samples[-1][1] - samples[0][1] < 4096, samples
