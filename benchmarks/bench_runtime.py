"""The runtime on the simulated UR5e: control-loop timing, watchdog reaction, System 1 latency.

  python benchmarks/bench_runtime.py [--bundle DIR] [--seconds 60]

One run per row, all in this invocation:
  realtime         the default: control process under SCHED_FIFO, both systems running
  realtime_pinned  the same with the control process alone on the last CPU
  no_realtime      the same with robot.realtime_priority = 0 (the baseline)
  watchdog/*    short runs with a fault whose detection has a deadline (setpoint age, camera
                age, MCU heartbeat): time from the deadline to the first stop command
Without --bundle, exports the `small` reference model (N=5) in a child process first, so that
the policy process loads the two cores the way a real policy would.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
from pathlib import Path

from common import RESULTS, cpu_model, export_in_child, machine, save
from rich.console import Console
from rich.table import Table

from edgevla.runtime.config import config_from_dict
from edgevla.runtime.faults import Fault
from edgevla.runtime.supervisor import RunOptions, Supervisor

WATCHDOG_FAULTS = (Fault.POLICY_HANG, Fault.CAMERA_STALL, Fault.MCU_SILENT)
GOAL_P99_US = 250.0
GOAL_REACTION_PERIODS = 2


def run(bundle: Path, seconds: float, **sections: dict) -> dict:
    config = config_from_dict({"policy": {"bundle": str(bundle)}, **sections}, "bench")
    return Supervisor(config, RunOptions(duration_s=seconds, live=False)).run()


def run_with_fault(bundle: Path, fault: Fault) -> dict:
    config = config_from_dict({"policy": {"bundle": str(bundle)}}, "bench")
    options = RunOptions(duration_s=6.0, injections=[(fault, 4.0)], live=False)
    return Supervisor(config, options).run()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    console = Console(width=120)
    with tempfile.TemporaryDirectory(prefix="edgevla-bench-") as tmp:
        bundle = args.bundle
        if bundle is None:
            bundle = Path(tmp) / "small"
            with console.status("exporting 'small' (N=5)"):
                export_in_child("small", bundle)
        runs = {}
        variants = (
            ("realtime", {}),
            ("realtime_pinned", {"control_cpus": [os.cpu_count() - 1]}),
            ("no_realtime", {"realtime_priority": 0}),
        )
        for name, robot in variants:
            with console.status(f"{name}: {args.seconds:.0f} s with both systems running"):
                runs[name] = run(bundle, args.seconds, robot=robot)
        reactions = {}
        for fault in WATCHDOG_FAULTS:
            with console.status(f"watchdog: {fault.label}"):
                report = run_with_fault(bundle, fault)
            trip = next(t for t in report["trips"] if t["cause"] != "operator-stop")
            reactions[fault.label] = {
                "cause": trip["cause"],
                "reaction_ms": trip.get("reaction_ms"),
                "stopped_after_s": trip["stopped_after_s"],
                "limit_violations": report["safety"]["limit_violations"],
            }
    period_ms = 1e3 / runs["realtime"]["control"]["rate_hz"]
    rows = {}
    for name, r in runs.items():
        c, s1, s2 = r["control"], r["system1"], r["system2"]
        rows[name] = {
            "seconds": r["duration_s"],
            "realtime": c["realtime"],
            "control_rate_hz": c["rate_hz"],
            "period_error_us": c["period_error_us"],
            "work_us": c["work_us"],
            "missed_cycles": c["missed_cycles"],
            "system1_rate_hz": s1["rate_hz"],
            "system1_latency_ms": s1["latency_ms"],
            "frame_to_setpoint_ms": s1["frame_to_setpoint_ms"],
            "system2_rate_hz": s2["rate_hz"],
            "system2_latency_ms": s2["latency_ms"],
            "limit_violations": r["safety"]["limit_violations"],
            "trips": [t["cause"] for t in r["trips"]],
        }
    rt, base = rows["realtime"], rows["no_realtime"]
    record = {
        "benchmark": "runtime",
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "bundle": str(args.bundle or "small (exported for this run)"),
        "runs": rows,
        "watchdog_reaction": reactions,
        "ratios": {
            "p99_period_error_no_realtime_vs_realtime": base["period_error_us"]["p99"]
            / max(rt["period_error_us"]["p99"], 1e-9),
            "max_period_error_no_realtime_vs_realtime": base["period_error_us"]["max"]
            / max(rt["period_error_us"]["max"], 1e-9),
        },
        "goals": {
            "period_error_p99_us": GOAL_P99_US,
            "missed_cycles": 0,
            "watchdog_reaction_ms": GOAL_REACTION_PERIODS * period_ms,
        },
    }
    table = Table(title=f"runtime on the simulated UR5e, {cpu_model()}, {os.cpu_count()} cores")
    for column in (
        "run",
        "Hz",
        "p50 µs",
        "p99 µs",
        "max µs",
        "missed",
        "work p99 µs",
        "S1 Hz",
        "frame→setpoint p50/p99 ms",
        "S2 Hz",
        "violations",
    ):
        table.add_column(column)
    for name, row in rows.items():
        pe = row["period_error_us"]
        table.add_row(
            name,
            f"{row['control_rate_hz']:.1f}",
            f"{pe['p50']:.0f}",
            f"{pe['p99']:.0f}",
            f"{pe['max']:.0f}",
            str(row["missed_cycles"]),
            f"{row['work_us']['p99']:.0f}",
            f"{row['system1_rate_hz']:.1f}",
            f"{row['frame_to_setpoint_ms']['p50']:.1f}/{row['frame_to_setpoint_ms']['p99']:.1f}",
            f"{row['system2_rate_hz']:.2f}",
            str(row["limit_violations"]),
        )
    console.print(table)
    for label, r in reactions.items():
        console.print(
            f"watchdog {label}: trip {r['cause']}, deadline → stop command "
            f"{r['reaction_ms']} ms (goal ≤ {GOAL_REACTION_PERIODS * period_ms:.1f} ms), "
            f"at rest after {r['stopped_after_s']} s, violations {r['limit_violations']}"
        )
    verdict = (
        "met"
        if rt["period_error_us"]["p99"] <= GOAL_P99_US and rt["missed_cycles"] == 0
        else "NOT met"
    )
    console.print(f"goal p99 ≤ {GOAL_P99_US:.0f} µs with no missed cycle: {verdict}")
    path = save(record, args.out, "runtime")
    console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
