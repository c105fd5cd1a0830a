"""The progress bar ``fastframe get`` draws on stderr when it is a terminal: one line, redrawn 10 times a second.

Imported only when the bar is drawn (a terminal, no --quiet), so that a download into a pipe or a script never
pays for it.
"""

from __future__ import annotations

import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (a start-up cost for the CLI)
if TYPE_CHECKING:  # pragma: no cover
    pass

__all__ = ["ProgressBar"]


class ProgressBar:
    """``[#######.......]  52%  530.0 MiB / 1.0 GiB  210.4 MiB/s`` on one terminal line, redrawn 10 times a second."""

    def __init__(self, stream: object, min_size: int = 1 << 20) -> None:
        self.stream = stream
        self.min_size = min_size
        self.start = time.monotonic()
        self.first: int | None = None
        self.last_draw = 0.0
        self.drawn = False

    def __call__(self, done: int, total: int) -> None:
        if self.first is None:
            self.first = done
        if total < self.min_size:
            return
        now = time.monotonic()
        if done < total and now - self.last_draw < 0.1:
            return
        self.last_draw = now
        frac = done / total if total else 1.0
        width = 30
        filled = int(frac * width)
        rate = (done - self.first) / max(now - self.start, 1e-6)
        line = f"\r[{'#' * filled}{'.' * (width - filled)}] {frac * 100:3.0f}%  {_human(done)} / {_human(total)}  {_human(rate)}/s"
        self.stream.write(line + "  ")  # type: ignore[attr-defined]
        self.stream.flush()  # type: ignore[attr-defined]
        self.drawn = True

    def finish(self) -> None:
        if self.drawn:
            self.stream.write("\n")  # type: ignore[attr-defined]
            self.stream.flush()  # type: ignore[attr-defined]


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover
