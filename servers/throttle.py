"""Log lines about a condition that may recur thousands of times a second (accept failing, a limit reached):
one line per interval, the next one saying how many were left out."""

from __future__ import annotations

import logging
import time
from typing import Any

__all__ = ["LogThrottle"]

log = logging.getLogger("fastframe.server")

_LOG_EVERY = 10.0  # seconds between two log lines about the same recurring condition


class LogThrottle:
    """One log line per ``interval`` seconds for a condition that may recur thousands of times a second; the next
    line says how many were left out."""

    def __init__(self, interval: float = _LOG_EVERY) -> None:
        self.interval = interval
        self._next = 0.0
        self._suppressed = 0

    def log(self, level: int, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return
        if self._suppressed:
            msg += " (and %d more time(s) in the last %.0f s)"
            args += (self._suppressed, self.interval)
            self._suppressed = 0
        self._next = now + self.interval
        log.log(level, msg, *args)
