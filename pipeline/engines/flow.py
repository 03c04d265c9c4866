"""Flow control of an HTTP engine: how many requests are in flight at one server, and the progress count.

`Window` is one server's requests in flight: pinned, or adaptive (additive increase, multiplicative decrease:
halved on overload, regrown by one per window of successes). `Meter` turns answers and the server's own
token counter into the progress bar's samples and tokens. Used by pipeline/engines/openai.py.
"""

from __future__ import annotations

import asyncio

from pipeline.engines import GenResult, Progress


class Window:
    """Requests in flight at one server: pinned, or halved on overload and regrown by one per window of
    successes (additive increase, multiplicative decrease)."""

    def __init__(self, start: int, pinned: bool) -> None:
        self.start = self.limit = self.low = start
        self.pinned = pinned
        self.in_flight = self.peak = self.backoffs = 0
        self.epoch = 0  # cuts so far; a failure of a request sent before the last cut asks for no new one
        self._credit = 0.0
        self._cond = asyncio.Condition()

    async def acquire(self) -> int:
        """Wait for room; returns the epoch the request goes out under."""
        async with self._cond:
            await self._cond.wait_for(lambda: self.in_flight < self.limit)
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            return self.epoch

    async def release(self, ok: bool) -> None:
        async with self._cond:
            self.in_flight -= 1
            if ok and not self.pinned and self.limit < self.start:
                self._credit += 1 / self.limit
                if self._credit >= 1:
                    self._credit, self.limit = self._credit - 1, self.limit + 1
            self._cond.notify_all()

    def cut(self, epoch: int) -> None:
        if self.pinned or epoch != self.epoch:
            return
        self.epoch += 1
        self.backoffs += 1
        self.limit = max(1, self.limit // 2)
        self.low = min(self.low, self.limit)
        self._credit = 0.0

    @staticmethod
    def stats(windows: list[Window]) -> dict:
        """What a manifest records: per server, the worst case over the servers."""
        return {
            "mode": "pinned" if windows[0].pinned else "adaptive",
            "start": windows[0].start,
            "peak_in_flight": max(w.peak for w in windows),
            "lowest": min(w.low for w in windows),
            "end": min(w.limit for w in windows),
            "backoffs": sum(w.backoffs for w in windows),
        }


class Meter:
    """One generate call's progress: samples as answers arrive, tokens as the server makes them (when it
    says) or as answers arrive; the total is corrected to the answers' exact count at the end."""

    def __init__(self, progress: Progress | None, cap: int) -> None:
        self.progress = progress
        self.cap = cap  # no server count can mean more than every request's max_tokens
        self.exact = self.live = self.shown = 0

    def answered(self, result: GenResult) -> None:
        self.exact += sum(s.completion_tokens for s in result.samples)
        self._show(len(result.samples))

    def server(self, generated: int) -> None:
        self.live = min(generated, self.cap)
        self._show(0)

    def _show(self, samples: int) -> None:
        target = max(self.exact, self.live)
        if self.progress is not None and (samples or target != self.shown):
            self.progress(samples, target - self.shown)
            self.shown = target

    def close(self) -> None:
        if self.progress is not None and self.shown != self.exact:
            self.progress(0, self.exact - self.shown)  # other clients of a shared server counted too
            self.shown = self.exact
