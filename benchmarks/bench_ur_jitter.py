"""Servo-command jitter at 500 Hz through ur_rtde to the UR controller emulator.

  python benchmarks/bench_ur_jitter.py [--seconds 20]

The emulator runs in its own process, as a controller is its own machine. This process streams
servoJ at the controller's period through `URRobot.servo` (ur_rtde underneath), scheduled on
the monotonic clock as the control process schedules its cycles (sleep, then spin the last
0.2 ms). Measured, as |interval − period|:

  loop alone      the same scheduled loop with no ur_rtde call (the host's own jitter): baseline
  send            intervals between our servo calls, with ur_rtde in the loop
  arrival         intervals between servoJ packages arriving at the emulator: what a controller
                  would see, including TCP on loopback and the emulator's own scheduling

p50 / p99 / max in µs, and each p99 as a ratio to the baseline's. Prints a table, writes JSON
to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np
from common import RESULTS, machine, save
from rich.console import Console
from rich.table import Table

from edgevla.export.bundle_writer import library_versions

PERIOD_S = 1 / 500
SPIN_S = 0.0002


def emulator_process(conn) -> None:
    from edgevla.robots.ur.emulator import URControllerEmulator

    with URControllerEmulator() as emulator:
        conn.send("ready")
        conn.recv()  # "done"
        conn.send(list(emulator.servo_arrivals))


def scheduled_loop(seconds: float, body) -> np.ndarray:
    """Call `body()` every PERIOD_S for `seconds`; return the call times."""
    count = int(seconds / PERIOD_S)
    times = np.empty(count)
    next_t = time.monotonic()
    for i in range(count):
        next_t += PERIOD_S
        now = time.monotonic()
        if next_t - now > SPIN_S:
            time.sleep(next_t - now - SPIN_S)
        while time.monotonic() < next_t:
            pass
        times[i] = time.monotonic()
        body()
    return times


def deviation_us(times: np.ndarray) -> dict[str, float]:
    dev = np.abs(np.diff(times) - PERIOD_S) * 1e6
    return {
        "p50": float(np.percentile(dev, 50)),
        "p99": float(np.percentile(dev, 99)),
        "max": float(dev.max()),
        "intervals": len(dev),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    console = Console(highlight=False)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=emulator_process, args=(child,), daemon=True)
    process.start()
    assert parent.recv() == "ready"
    from edgevla.robots.ur.driver import URConfig, URRobot
    from edgevla.runtime.devices import RobotState

    robot = URRobot(URConfig("127.0.0.1"))
    robot.connect()
    state = RobotState()
    robot.read_state(state)
    q = state.q.copy()
    console.print(f"baseline: the scheduled loop alone, {args.seconds:g} s")
    baseline = scheduled_loop(args.seconds, lambda: None)
    robot.set_watchdog(50.0)  # armed as the control process arms it, right before streaming
    console.print(f"servoJ through ur_rtde at 500 Hz, {args.seconds:g} s")
    sent = scheduled_loop(args.seconds, lambda: robot.servo(q, 1.0))
    robot.close()
    parent.send("done")
    arrivals = np.asarray(parent.recv())
    process.join(timeout=5)
    console.print(f"{len(arrivals)} servoJ packages arrived at the emulator, {len(sent)} sent")
    # Arrivals during the measured stream only (setWatchdog's and close's packages are not servoJ).
    arrivals = arrivals[(arrivals >= sent[0]) & (arrivals <= sent[-1] + 0.05)]
    results = {
        "loop alone (baseline)": deviation_us(baseline),
        "send (servo calls)": deviation_us(sent),
        "arrival at the emulator": deviation_us(arrivals),
    }
    base_p99 = results["loop alone (baseline)"]["p99"]
    table = Table(title=f"servoJ jitter at 500 Hz, |interval − 2 ms|, {args.seconds:g} s each")
    for column in ("stream", "p50 µs", "p99 µs", "max µs", "p99 / baseline", "intervals"):
        table.add_column(column)
    for name, r in results.items():
        r["p99_ratio"] = r["p99"] / base_p99 if base_p99 > 0 else float("inf")
        table.add_row(
            name,
            f"{r['p50']:.0f}",
            f"{r['p99']:.0f}",
            f"{r['max']:.0f}",
            f"{r['p99_ratio']:.2f}",
            str(r["intervals"]),
        )
    console.print(table)
    record = {
        "benchmark": "ur_jitter",
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "libraries": {**library_versions(), "ur_rtde": importlib.metadata.version("ur_rtde")},
        "period_s": PERIOD_S,
        "seconds": args.seconds,
        "jitter_us": results,
        "servo_packages_sent": len(sent),
        "servo_packages_arrived": len(arrivals),
    }
    path = save(record, RESULTS, "ur-jitter")
    console.print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
