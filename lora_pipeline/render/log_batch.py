"""Log lines batched into few messages.

In a Dagster step every `context.log` call is one event-log write (one or more sqlite commits): an
evaluation that logged each render, phase and adapter step wrote ~20 events per checkpoint, more
than Dagster's own per-step events. `BatchedLog` keeps the lines and sends them as one message
(lines joined by newlines, in order) when a line arrives and the oldest waiting line is `every_s`
old, when `flush()` is called (before something that may take long without saying anything, such as
a cold base load) and at the end. So a fast checkpoint logs once, and a slow one still shows its
progress (the denoise and phase lines of a slow render arrive every `every_s`) with at most that delay.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class BatchedLog:
    def __init__(self, emit: Callable[[str], None], every_s: float = 5.0, prefix: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.emit, self.every_s, self.prefix, self.clock = emit, every_s, prefix, clock
        self.lines: list[str] = []
        self.oldest: float | None = None

    def __call__(self, message: str) -> None:
        now = self.clock()
        if self.oldest is None:
            self.oldest = now
        self.lines.append(f"{self.prefix}{message}")
        if now - self.oldest >= self.every_s:
            self.flush()

    def flush(self) -> None:
        if self.lines:
            text, self.lines, self.oldest = "\n".join(self.lines), [], None
            self.emit(text)
