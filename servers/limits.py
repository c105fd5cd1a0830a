"""The engine's limits: how many connections, how long a connection may idle or take over a frame, how long a
graceful stop may last, and how much unsent output a connection may hold before it stops being read."""

from __future__ import annotations

__all__ = ["Limits"]


class Limits:
    """Per-process limits of the engine (``max_connections`` holds for the whole server, see
    :mod:`servers.counts`)."""

    def __init__(
        self,
        max_connections: int = 10000,
        idle_timeout: float = 120.0,
        frame_timeout: float = 10.0,
        graceful_timeout: float = 10.0,
        high_water: int = 1024 * 1024,
        low_water: int = 256 * 1024,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        for name, value in (("idle_timeout", idle_timeout), ("frame_timeout", frame_timeout),
                            ("graceful_timeout", graceful_timeout)):  # fmt: skip
            if not value > 0:
                raise ValueError(f"{name} must be positive")
        if not 0 <= low_water <= high_water:
            raise ValueError("need 0 <= low_water <= high_water")
        self.max_connections = max_connections
        self.idle_timeout, self.frame_timeout, self.graceful_timeout = idle_timeout, frame_timeout, graceful_timeout
        self.high_water, self.low_water = high_water, low_water  # bytes of unsent output: stop and resume reading

    @property
    def sweep_interval(self) -> float:
        """How often the deadlines are checked: a quarter of the shortest, between 0.05 s and 1 s."""
        return max(0.05, min(1.0, self.frame_timeout / 4, self.idle_timeout / 4))
