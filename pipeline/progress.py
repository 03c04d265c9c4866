"""The generate stage's progress bar: samples done, completion tokens, tokens/s and an ETA from the token rate.

Engines report tokens as they are made (pipeline/engines: vLLM per engine step, HF per decoding step, openai
from the server's counter), so the rate and the ETA move long before the first prompt's samples are done.
"""

from __future__ import annotations

import sys
import time


class ProgressBar:
    """A tqdm bar over samples, with completion tokens, tokens/s and an ETA from the token rate; silent
    when disabled. Engines report tokens as they are made (see pipeline/engines), so the rate moves long
    before the first prompt's samples are all done."""

    REDRAW_S = 0.5

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None
        self.samples_total = self.samples = self.tokens = self.clock_tokens = 0
        self.max_tokens = 1
        self.t0 = self.drawn = time.perf_counter()

    def start(self, samples: int, max_tokens: int = 1) -> None:
        if not self.enabled or samples == 0:
            return
        from tqdm import tqdm

        self.samples_total, self.max_tokens = samples, max_tokens
        self.bar = tqdm(
            total=samples,
            desc="generate",
            unit="sample",
            file=sys.stderr,
            dynamic_ncols=True,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} samples [{elapsed}{postfix}]",
        )
        self.t0 = time.perf_counter()

    def update(self, samples: int, tokens: int) -> None:
        self.samples += samples
        self.tokens += tokens
        self.clock_tokens += tokens
        if self.bar is None:
            return
        if samples:
            self.bar.update(samples)
        now = time.perf_counter()
        if now - self.drawn >= self.REDRAW_S or self.samples >= self.samples_total:
            self.drawn = now
            self.bar.set_postfix_str(self.postfix(now), refresh=True)

    def postfix(self, now: float) -> str:
        elapsed = now - self.t0
        rate = self.clock_tokens / elapsed if elapsed > 0 else 0.0
        # One decimal below 10: a teacher's first tokens on a slow CPU (0.5 tok/s) must not read as 0.
        text = f"{self.tokens} tok, {rate:.1f} tok/s" if rate < 10 else f"{self.tokens} tok, {rate:.0f} tok/s"
        left = self.samples_total - self.samples
        if rate > 0 and left > 0:
            # Tokens per sample so far (the in-flight ones make it high early on), at most max_tokens.
            per_sample = min(self.max_tokens, self.tokens / self.samples) if self.samples else self.max_tokens
            eta = max(0.0, self.samples_total * per_sample - self.tokens) / rate
            text += f", ETA {int(eta // 60)}:{int(eta % 60):02d}"
        return text

    def restart_clock(self) -> None:
        self.clock_tokens = 0
        self.t0 = time.perf_counter()

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        elif self.enabled:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(self.postfix(time.perf_counter()), refresh=False)
            self.bar.close()
            self.bar = None
