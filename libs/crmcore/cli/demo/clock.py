"""The simulated clock: a day window played `speed` times faster than real time.

The services stamp every event with their own (real) clock, so simulated time can only be
compressed, not faked: a wait of 60 simulated seconds is a real wait of 60 / speed seconds.
`SimClock` maps both ways — `now_s()` is the simulated time since the window's start, and
`simulated(real_time)` maps a server timestamp onto the simulated day — and sleeps in
simulated units. Real time only moves forward, so the simulated timestamps are monotonic too.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta


class SimClock:
    """Simulated seconds since the day window's start, running `speed` times real time from
    the moment it is created (or `started()` again)."""

    def __init__(self, speed: float) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self._origin = time.monotonic()
        self.real_origin = datetime.now(UTC)

    def started(self) -> SimClock:
        """Restarts the day now (after the set-up, which takes real time)."""
        self._origin = time.monotonic()
        self.real_origin = datetime.now(UTC)
        return self

    def now_s(self) -> float:
        return (time.monotonic() - self._origin) * self.speed

    def real_seconds(self, simulated_s: float) -> float:
        return simulated_s / self.speed

    def simulated_seconds(self, real_s: float) -> float:
        return real_s * self.speed

    def simulated(self, real_time: datetime) -> float:
        """A server timestamp as simulated seconds since the window's start."""
        return (real_time - self.real_origin).total_seconds() * self.speed

    def real_time(self, simulated_s: float) -> datetime:
        """The real moment at which the simulated clock shows `simulated_s`."""
        return self.real_origin + timedelta(seconds=simulated_s / self.speed)

    async def sleep(self, simulated_s: float) -> None:
        if simulated_s > 0:
            await asyncio.sleep(simulated_s / self.speed)

    async def sleep_until(self, simulated_s: float) -> None:
        await self.sleep(simulated_s - self.now_s())
