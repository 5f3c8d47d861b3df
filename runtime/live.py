"""The live terminal view of `edgevla run`: loop rates, latencies, state and trips."""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.table import Table

from edgevla.runtime.control import ControlState
from edgevla.runtime.safety_filter import Trip


class LiveView:
    """Refreshes at a few hertz on a terminal; prints a status line every 5 s otherwise."""

    def __init__(self, supervisor: Any, enabled: bool) -> None:
        self.sup = supervisor
        self.tty = sys.stdout.isatty()
        self.enabled = enabled
        self.console = Console()
        self._live: Live | None = None
        self._last = (time.monotonic(), 0, 0, 0)
        self._last_print = 0.0

    def __enter__(self) -> LiveView:
        if self.enabled and self.tty:
            self._live = Live(self._table(), console=self.console, refresh_per_second=4)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def _rates(self) -> tuple[float, float, float]:
        ctrl, pol = self.sup.ctrl, self.sup.pol
        now = time.monotonic()
        t, c, s1, s2 = self._last
        counts = (int(ctrl.cycle[0]), int(pol.s1_count[0]), int(pol.s2_count[0]))
        span = max(now - t, 1e-6)
        rates = tuple((new - old) / span for new, old in zip(counts, (c, s1, s2), strict=True))
        if span > 1.0:
            self._last = (now, *counts)
        return rates  # type: ignore[return-value]

    def _table(self) -> Table:
        ctrl, pol = self.sup.ctrl, self.sup.pol
        control_hz, s1_hz, s2_hz = self._rates()
        cycles = int(ctrl.cycle[0])
        recent = ctrl.period_error_us[max(0, cycles - 500) % len(ctrl.period_error_us) :][:500]
        p99 = float(np.percentile(recent, 99)) if cycles > 10 and len(recent) else float("nan")
        table = Table(title="edgevla run", show_header=False)
        table.add_column(style="bold")
        table.add_column()
        state = ControlState(int(ctrl.state[0])).name.lower()
        table.add_row(
            "control",
            f"{state}, {control_hz:6.1f} Hz, period error p99 {p99:6.0f} µs, "
            f"missed {int(ctrl.missed[0])}, SCHED_FIFO {'yes' if ctrl.rt[0] else 'no'}",
        )
        s1 = pol.s1[(int(pol.s1_count[0]) - 1) % len(pol.s1)]
        s2 = pol.s2[(int(pol.s2_count[0]) - 1) % len(pol.s2)]
        table.add_row("system 2", f"{s2_hz:5.1f} Hz, last plan {s2[1] * 1e3:6.1f} ms")
        table.add_row(
            "system 1",
            f"{s1_hz:5.1f} Hz, last step {s1[1] * 1e3:6.2f} ms, "
            f"frame→setpoint {s1[2] * 1e3:6.1f} ms",
        )
        trips = [Trip(int(ctrl.trips[k, 0])).label for k in range(int(ctrl.trip_count[0]))]
        table.add_row("trips", ", ".join(trips) or "none")
        task = getattr(self.sup, "task", None)
        if task is not None:
            when = "" if task.t_s is None else f" at {task.t_s:.2f} s"
            table.add_row("task", f"{task.instruction!r}: {task.outcome.value}{when}")
        return table

    def update(self) -> None:
        if self._live is not None:
            self._live.update(self._table())
        elif self.enabled and time.monotonic() - self._last_print > 5.0:
            self._last_print = time.monotonic()
            self.console.print(self._table())
