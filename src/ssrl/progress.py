"""Progress lines for long loops: rate and ETA, suitable for SLURM log files.

tqdm's carriage-return bars are unreadable in batch logs; this prints one
line every ``every_s`` seconds (and at the end) instead.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    """Seconds -> ``H:MM:SS`` (or ``M:SS`` under an hour)."""
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Count work units and print ``desc: done/total (pct) rate/s ETA`` lines.

    ``update(n, **fields)`` adds ``n`` units; extra fields (loss, lr, ...) are
    appended to the line. ``total`` may be None for open-ended loops.
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        every_s: float = 10.0,
        start: int = 0,
        stream: TextIO | None = None,
        enabled: bool = True,
    ):
        self.total = total
        self.desc = desc
        self.unit = unit
        self.every_s = every_s
        self.done = start
        self._start_count = start
        self._t0 = time.monotonic()
        self._last = self._t0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled

    @property
    def rate(self) -> float:
        """Units per second since this object was created (resumed work excluded)."""
        elapsed = time.monotonic() - self._t0
        return (self.done - self._start_count) / elapsed if elapsed > 0 else 0.0

    def update(self, n: int = 1, **fields: object) -> None:
        self.done += n
        now = time.monotonic()
        finished = self.total is not None and self.done >= self.total
        if now - self._last >= self.every_s or finished:
            self._last = now
            self.write(**fields)

    def line(self, **fields: object) -> str:
        rate = self.rate
        parts = [f"{self.desc}: {self.done}"]
        if self.total:
            parts[0] += f"/{self.total} ({100.0 * self.done / self.total:.1f}%)"
        parts.append(f"{rate:.2f} {self.unit}/s")
        if self.total and rate > 0:
            parts.append(f"ETA {format_duration((self.total - self.done) / rate)}")
        parts.append(f"elapsed {format_duration(time.monotonic() - self._t0)}")
        for key, value in fields.items():
            parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
        return "  ".join(parts)

    def write(self, **fields: object) -> None:
        if self.enabled:
            print(self.line(**fields), file=self.stream, flush=True)
