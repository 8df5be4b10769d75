"""Time as the wire and the stats speak it: ISO-8601 stamps and event rates."""
from __future__ import annotations

import collections
import time
from datetime import datetime, timezone


def iso_time(t: float, timespec: str = "milliseconds") -> str:
    """Epoch seconds -> ISO-8601 UTC with a Z (the wire format's time; `seconds` for files)."""
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec=timespec).replace(
        "+00:00", "Z")


def parse_iso(text: str) -> float:
    """An ISO-8601 stamp as written by iso_time -> epoch seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def iso_now(timespec: str = "milliseconds") -> str:
    return iso_time(time.time(), timespec)


class RateMeter:
    """Events per second over the last `window_s` seconds of a monotonic clock; falls to 0
    when they stop coming. Not thread-safe: its owner guards it."""

    def __init__(self, window_s: float = 5.0, maxlen: int = 1024):
        self.window_s = window_s
        self.times: collections.deque[float] = collections.deque(maxlen=maxlen)

    def tick(self, now: float) -> None:
        self.times.append(now)

    def per_second(self, now: float) -> float:
        recent = [t for t in self.times if t >= now - self.window_s]
        if len(recent) < 2:
            return 0.0
        # The span the events cover, or (when they stopped) the time since the first one less
        # one mean interval: a stream that stops decays instead of holding its last rate.
        span = max(recent[-1] - recent[0],
                   now - recent[0] - (recent[-1] - recent[0]) / (len(recent) - 1))
        return round((len(recent) - 1) / max(span, 1e-6), 2)
