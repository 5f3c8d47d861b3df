"""The PNG of a run: joint trajectories with setpoints, period histogram, latency timeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgevla.runtime.shm import RECORD_COLUMNS

_COL = {name: i for i, name in enumerate(RECORD_COLUMNS)}


def plot_run(
    report: dict[str, Any],
    rec: np.ndarray,
    s1: np.ndarray,
    s2: np.ndarray,
    t_start: float,
    period_error_us: np.ndarray,
    path: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(11, 11), constrained_layout=True)
    t = rec[:, 0] - t_start
    ax = axes[0]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j in range(6):
        c = colours[j % len(colours)]
        ax.plot(t, rec[:, _COL[f"target{j}"]], ":", color=c, lw=1.0, alpha=0.8)
        ax.plot(t, rec[:, _COL[f"q_cmd{j}"]], "-", color=c, lw=1.2, label=f"joint {j + 1}")
        ax.plot(t, rec[:, _COL[f"q_meas{j}"]], "--", color=c, lw=0.8, alpha=0.7)
    for trip in report["trips"]:
        ax.axvline(trip["t_s"], color="red", lw=1)
        ax.text(trip["t_s"], ax.get_ylim()[1], f" {trip['cause']}", color="red", va="top")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("joint position (rad)")
    ax.set_title("policy target (dotted), safety-filtered command (solid), measured (dashed)")
    ax.legend(ncol=6, fontsize=8, loc="lower left")

    ax = axes[1]
    errors = np.asarray(period_error_us)
    ax.hist(errors, bins=100, log=True, color="#4477aa")
    p = report["control"]["period_error_us"]
    ax.set_title(
        f"control period error at {report['control']['rate_hz']:.0f} Hz: p50 {p['p50']:.0f} µs, "
        f"p99 {p['p99']:.0f} µs, max {p['max']:.0f} µs, missed {report['control']['missed_cycles']}"
    )
    ax.set_xlabel("wake-up lateness (µs)")
    ax.set_ylabel("cycles")

    ax = axes[2]
    if len(s2):
        ax.plot(s2[:, 0] - t_start, s2[:, 1] * 1e3, "o", ms=3, label="System 2 plan latency")
    if len(s1):
        ax.plot(s1[:, 0] - t_start, s1[:, 1] * 1e3, ".", ms=2, label="System 1 step latency")
        ax.plot(s1[:, 0] - t_start, s1[:, 2] * 1e3, ".", ms=2, alpha=0.5, label="frame → setpoint")
    ax.set_yscale("log")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("ms")
    ax.legend(fontsize=8)
    ax.set_title("System 1 / System 2 latency")
    fig.savefig(path, dpi=110)
    plt.close(fig)
