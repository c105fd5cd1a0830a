"""The loop's timer heap: cancelled timers let go of what they hold at once and do not pile up.

A command service schedules a timeout per command and cancels it when the command ends; with cancelled timers
kept (and holding their callbacks) until due, memory grew with command rate x timeout: 20 -> 571 MB in 150 s.
"""

from __future__ import annotations

import gc
import random
import socket
import weakref

from fastframe.servers.connection import Connection
from fastframe.servers.echo import EchoService
from fastframe.servers.loop import Loop
from fastframe.servers.transport import SocketTransport


class Payload:
    """Stands for what a timer's callback keeps alive (a connection, a decoder buffer, a Popen)."""


def test_cancelled_timers_release_their_callbacks_and_the_heap_stays_small():
    loop = Loop()
    refs = []
    live = []
    for i in range(10000):
        payload = Payload()
        refs.append(weakref.ref(payload))
        timer = loop.call_later(1000.0 + i, lambda p=payload: None)
        if i % 100 == 0:
            live.append(timer)  # every hundredth stays scheduled
        else:
            timer.cancel()
        del payload
    dead = sum(ref() is None for ref in refs)
    assert dead == 10000 - len(live), f"only {dead} of {10000 - len(live)} cancelled callbacks were released"
    # compacted as it goes (asyncio's rule: once more than half the entries are cancelled)
    assert loop.scheduled_timers <= 2 * len(live) + 100, loop.scheduled_timers
    for timer in live:
        timer.cancel()
    assert loop.scheduled_timers <= 100
    gc.collect()
    assert all(ref() is None for ref in refs)


def test_live_timers_still_fire_in_order_after_compactions():
    loop = Loop()
    rng = random.Random(5)
    fired = []
    expected = []
    for i in range(3000):
        delay = rng.uniform(0.0, 0.3)
        timer = loop.call_later(delay, lambda i=i: fired.append(i))
        if rng.random() < 0.8:
            timer.cancel()
        else:
            expected.append((timer.when, i))
    loop.call_later(0.4, loop.stop)
    loop.run()
    assert fired == [i for _, i in sorted(expected)]


def test_a_connection_forgets_its_cancelled_and_fired_timers():
    loop = Loop()
    a, b = socket.socketpair()
    try:
        conn = Connection(loop, SocketTransport(a), ("peer",), EchoService())
        held = Payload()
        ref = weakref.ref(held)
        timers = [conn.call_later(100.0, lambda p=held: None) for _ in range(1000)]
        del held
        for timer in timers:
            timer.cancel()
        assert len(conn.timers) == 0, "cancelled timers still listed on their connection"
        assert ref() is None, "a cancelled timer still holds its callback"
        fired = []
        conn.call_later(0.0, lambda: fired.append(1))
        loop.call_later(0.05, loop.stop)
        loop.run()
        assert fired == [1]
        assert len(conn.timers) == 0, "a fired timer is still listed on its connection"
    finally:
        a.close()
        b.close()
