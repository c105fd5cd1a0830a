"""The loop room: one poller, the table of who handles each file descriptor, the timer heap and the clock.

It knows nothing of sockets, connections or services: a handler is any callable taking the event bits the
poller reported, registered for one descriptor with the interest mask it wants.

Theory of operation
===================

One iteration of :meth:`Loop.run` is one ``poll()`` (epoll, level-triggered; ``poll`` where epoll does not
exist), then, in this order:

1. every reported descriptor's handler, looked up at dispatch time -- a handler earlier in the same batch may
   have removed or replaced it (a connection closed, a handler swapped for another);
2. the callbacks of :meth:`Loop.call_soon` that were queued when this step began (output queued from outside a
   read is flushed here, once per iteration); those queued while it runs wait for the next iteration, which
   then polls without waiting;
3. the timers that are due;
4. the checks (:meth:`Loop.add_check`), libuv's "check" handles: callbacks run after every iteration while
   they are registered (a graceful stop looks at its connections there).  A check that returns true asks
   for the next poll not to wait.

``now`` is the monotonic time taken right after the poll returned: everything one iteration does sees the
same clock.  The poll waits until the first timer is due, at most :data:`MAX_WAIT` seconds.

Timers live in a heap ordered by due time.  ``cancel()`` lets go of the callback at once (it may hold a
connection, its decoder's buffer, a child process); the heap is compacted, in place, once cancelled entries
outnumber the live ones (asyncio's rule), otherwise a cancelled entry is dropped when it reaches the top.  A
timer may be listed in a ``group`` (the set of timers a connection cancels when it closes): it leaves the
group when it fires or is cancelled, so a group never holds dead timers.
"""

from __future__ import annotations

import heapq
import logging
import select
import time
from collections import deque
from typing import Any, Callable

from .service import Timer

__all__ = ["EXCLUSIVE", "HUP_ERR", "MAX_WAIT", "READ", "WRITE", "Handler", "Loop", "TimerHandle"]

log = logging.getLogger("fastframe.server")

READ = select.POLLIN
WRITE = select.POLLOUT
HUP_ERR = select.POLLHUP | select.POLLERR
EXCLUSIVE = getattr(select, "EPOLLEXCLUSIVE", 0)

#: The longest a poll waits when no timer is due sooner.
MAX_WAIT = 1.0
_MIN_COMPACT = 100  # heaps smaller than this are never compacted

Handler = Callable[[int], None]


def _nothing() -> None:
    pass


class TimerHandle(Timer):
    """A timer in a loop's heap.  ``loop`` is set while it is in the heap and not cancelled; ``group`` while a
    set lists it."""

    __slots__ = ("group", "loop")

    def __init__(self, when: float, callback: Callable[[], None], loop: Loop, group: set[TimerHandle] | None) -> None:
        super().__init__(when, callback)
        self.loop: Loop | None = loop
        self.group = group

    def cancel(self) -> None:
        if self.cancelled:
            return
        self.cancelled = True
        self._detach()
        loop = self.loop
        if loop is not None:
            self.loop = None
            loop._timer_cancelled()

    def _detach(self) -> None:
        self.callback = _nothing
        group = self.group
        if group is not None:
            self.group = None
            group.discard(self)


class _Poller:
    """epoll where it exists, else poll; the two share their event bits and their method names."""

    def __init__(self) -> None:
        if hasattr(select, "epoll"):
            self._p: Any = select.epoll()
            self.poll: Callable[[float], list[tuple[int, int]]] = self._p.poll
            self.exclusive = EXCLUSIVE
        else:  # pragma: no cover - non-Linux
            self._p = select.poll()
            ms = self._p.poll
            self.poll = lambda timeout: ms(int(timeout * 1000 + 0.999))
            self.exclusive = 0
        self.register = self._p.register
        self.modify = self._p.modify
        self.unregister = self._p.unregister

    def close(self) -> None:
        close = getattr(self._p, "close", None)
        if close is not None:
            close()


class Loop:
    """Poll, dispatch, run what is due; until :meth:`stop`."""

    def __init__(self) -> None:
        self._poller = _Poller()
        #: EPOLLEXCLUSIVE where the poller has it (0 elsewhere), for listening sockets shared by processes.
        self.exclusive: int = self._poller.exclusive
        self.now = time.monotonic()
        self._handlers: dict[int, Handler] = {}
        self._timers: list[TimerHandle] = []  # a heap, ordered by due time
        self._cancelled_timers = 0  # cancelled entries still in the heap
        self._ready: deque[Callable[[], None]] = deque()
        self._checks: list[Callable[[], bool | None]] = []
        self._running = False

    # -- descriptors ------------------------------------------------------------------------------------

    def add(self, fd: int, mask: int, handler: Handler) -> None:
        """Call ``handler(events)`` when ``fd`` is ready for ``mask`` (errors and hang-ups are always reported)."""
        if fd in self._handlers:
            raise ValueError(f"fd {fd} is already watched")
        self._poller.register(fd, mask)
        self._handlers[fd] = handler

    def modify(self, fd: int, mask: int, handler: Handler) -> None:
        """Change what ``fd`` is polled for, and who is told."""
        self._poller.modify(fd, mask)
        self._handlers[fd] = handler

    def set_handler(self, fd: int, handler: Handler) -> None:
        """Tell another handler about ``fd`` (the mask stays)."""
        self._handlers[fd] = handler

    def remove(self, fd: int) -> None:
        """Forget ``fd`` and stop polling it (nothing happens if it is unknown; a closed descriptor is fine)."""
        if self._handlers.pop(fd, None) is not None:
            try:
                self._poller.unregister(fd)
            except (OSError, ValueError):
                pass

    def suspend(self, fd: int) -> None:
        """Stop polling ``fd`` but keep its handler: readiness already reported in this batch is still
        dispatched (with EPOLLEXCLUSIVE, a wake-up the kernel gave this process and no other)."""
        self._poller.unregister(fd)

    def resume(self, fd: int, mask: int) -> None:
        """Poll a suspended ``fd`` again."""
        self._poller.register(fd, mask)

    def requeue(self, fd: int, mask: int) -> None:
        """Register ``fd`` again: with EPOLLEXCLUSIVE, to the back of the kernel's queue of waiting processes,
        and with the kernel looking at it afresh."""
        self._poller.unregister(fd)
        self._poller.register(fd, mask)

    # -- callbacks and timers ---------------------------------------------------------------------------

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` at the end of this iteration's events (see the module docstring)."""
        self._ready.append(callback)

    def call_later(
        self, delay: float, callback: Callable[[], None], group: set[TimerHandle] | None = None
    ) -> TimerHandle:
        """Call ``callback()`` in ``delay`` seconds; list the timer in ``group`` until it fires or is cancelled."""
        timer = TimerHandle(time.monotonic() + max(0.0, delay), callback, self, group)
        heapq.heappush(self._timers, timer)
        if group is not None:
            group.add(timer)
        return timer

    @property
    def scheduled_timers(self) -> int:
        """Entries in the timer heap (cancelled ones included until they are dropped)."""
        return len(self._timers)

    def add_check(self, check: Callable[[], bool | None]) -> None:
        """Call ``check()`` after every iteration until removed; a true result makes the next poll not wait."""
        if check not in self._checks:
            self._checks.append(check)

    def remove_check(self, check: Callable[[], bool | None]) -> None:
        if check in self._checks:
            self._checks.remove(check)

    def _timer_cancelled(self) -> None:
        self._cancelled_timers += 1
        timers = self._timers
        if len(timers) > _MIN_COMPACT and self._cancelled_timers * 2 > len(timers):
            # In place: _run_timers may be iterating over this very list (a callback cancelling timers).
            timers[:] = [t for t in timers if not t.cancelled]
            heapq.heapify(timers)
            self._cancelled_timers = 0

    def _run_timers(self) -> None:
        timers = self._timers
        now = self.now
        while timers and timers[0].when <= now:
            timer = heapq.heappop(timers)
            if timer.cancelled:
                self._cancelled_timers -= 1
                continue
            timer.loop = None  # out of the heap: a late cancel() has nothing to tell the loop
            callback = timer.callback
            timer._detach()
            try:
                callback()
            except Exception:
                log.exception("timer callback failed")

    def _run_ready(self) -> None:
        ready = self._ready
        for _ in range(len(ready)):
            ready.popleft()()

    def _run_checks(self) -> bool:
        again = False
        for check in list(self._checks):
            if check():
                again = True
        return again

    # -- running ----------------------------------------------------------------------------------------

    def run(self) -> None:
        """Poll and dispatch until :meth:`stop` is called."""
        self._running = True
        self.now = time.monotonic()
        poll = self._poller.poll
        handlers = self._handlers
        timers = self._timers
        ready = self._ready
        monotonic = time.monotonic
        again = False
        while self._running:
            if ready or again:
                timeout = 0.0
            elif timers:
                # Possibly a cancelled entry's time: then the loop wakes once for nothing, and drops it.
                timeout = timers[0].when - monotonic()
                if timeout > MAX_WAIT:
                    timeout = MAX_WAIT
                elif timeout < 0.0:
                    timeout = 0.0
            else:
                timeout = MAX_WAIT
            try:
                events = poll(timeout)
            except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for safety
                continue
            self.now = now = monotonic()
            for fd, ev in events:
                handler = handlers.get(fd)
                if handler is not None:
                    handler(ev)
            if ready:
                self._run_ready()
            if timers and timers[0].when <= now:
                self._run_timers()
            again = self._run_checks() if self._checks else False

    def stop(self) -> None:
        """End :meth:`run` after the current iteration."""
        self._running = False

    def close(self) -> None:
        """Drop every timer and callback, and close the poller (the descriptors are their owners' to close)."""
        timers, self._timers = self._timers, []
        for timer in timers:
            timer.loop = None
            timer.cancel()
        self._cancelled_timers = 0
        self._ready.clear()
        self._checks.clear()
        self._handlers.clear()
        self._poller.close()
