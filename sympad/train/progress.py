"""Progress: a tqdm bar on a terminal and periodic plain lines otherwise."""

from __future__ import annotations

import datetime
import math
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import jax
import numpy as np

__all__ = ["Progress"]


def _format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return str(datetime.timedelta(seconds=int(round(seconds))))


def _format_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return f"{float(np.asarray(jax.device_get(value))):.4g}"
    except (TypeError, ValueError):
        return str(value)


class Progress:
    """Training progress: a tqdm bar (steps/s, ETA) on a terminal, periodic plain lines otherwise.

    Plain lines (log files, CI) look like
    ``train: step 500/1000 (50%), 12.3 steps/s, ETA 0:00:40, loss=0.123`` and are printed every
    ``log_every_frac`` of the run or every ``log_every_s`` seconds, whichever comes first, and at
    the last step. Only process 0 prints.

    Args:
      total: the step the run ends at.
      initial: the step it starts from (a resumed run); rates count from here.
      desc: a prefix.
      file: where to write; sys.stderr by default. A bar is drawn only if ``file.isatty()``.
      log_every_s: plain mode: at most this long between lines.
      log_every_frac: plain mode: a line every this fraction of ``total``.
      clock: seconds as a float; ``time.monotonic`` (injectable for tests).
      unit: what is counted: 'step' (the default) or another noun, e.g. 'images'
        (``features: 2000/10000 images (20%), 150 images/s, ETA 0:00:53``).
    """

    def __init__(
        self,
        total: int,
        *,
        initial: int = 0,
        desc: str = "",
        file: TextIO | None = None,
        log_every_s: float = 30.0,
        log_every_frac: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        unit: str = "step",
    ):
        if total < 0 or initial < 0:
            raise ValueError(f"total and initial must be >= 0, got total={total}, initial={initial}")
        if not 0 < log_every_frac <= 1:
            raise ValueError(f"log_every_frac must be in (0, 1], got {log_every_frac}")
        self.total = int(total)
        self.desc = desc
        self.unit = unit
        self._file = sys.stderr if file is None else file
        self._clock = clock
        self._enabled = jax.process_index() == 0
        self._initial = self._step = int(initial)
        self._start = self._last_time = clock()
        self._every_s = float(log_every_s)
        self._every_steps = max(1, math.ceil(self.total * log_every_frac))
        self._next_step = (self._initial // self._every_steps + 1) * self._every_steps
        self._closed = False
        self._bar = None
        isatty = getattr(self._file, "isatty", None)
        if self._enabled and callable(isatty) and isatty():
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total, initial=self._initial, desc=desc or None, unit=unit,
                file=self._file, dynamic_ncols=True, smoothing=0.1,
            )

    def update(self, step: int, **postfix: Any) -> None:
        """Reports that training has reached ``step``; ``postfix`` values are shown after it."""
        step = int(step)
        if not self._enabled or self._closed:
            self._step = step
            return
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix({k: _format_value(v) for k, v in postfix.items()}, refresh=False)
            self._bar.update(step - self._bar.n)
            self._step = step
            return
        self._step = step
        now = self._clock()
        if step >= self._next_step or now - self._last_time >= self._every_s or step >= self.total:
            self._write_line(step, now, postfix)
            self._last_time = now
            self._next_step = (step // self._every_steps + 1) * self._every_steps

    def set_total(self, total: int) -> None:
        """Moves the end of the run (a run shortened while it trains)."""
        self.total = int(total)
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    def _write_line(self, step: int, now: float, postfix: Mapping[str, Any]) -> None:
        elapsed = now - self._start
        done = step - self._initial
        rate = done / elapsed if elapsed > 0 and done > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else math.inf
        pct = 100.0 * step / self.total if self.total else 100.0
        if self.unit == "step":
            parts = [f"step {step}/{self.total} ({pct:.0f}%)", f"{rate:.3g} steps/s"]
        else:
            parts = [f"{step}/{self.total} {self.unit} ({pct:.0f}%)", f"{rate:.3g} {self.unit}/s"]
        parts.append(f"ETA {_format_duration(eta)}")
        parts += [f"{k}={_format_value(v)}" for k, v in postfix.items()]
        prefix = f"{self.desc}: " if self.desc else ""
        print(prefix + ", ".join(parts), file=self._file, flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
