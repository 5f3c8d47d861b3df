"""The supervisor: owns shared memory, starts the control and policy processes, injects faults,
shows a live view, tells systemd how the run is (when it runs as a service), stops the robot on
SIGINT/SIGTERM, and writes the run report.

Processes are spawned (not forked) so neither child inherits the other's threads or libraries:
the control process never loads onnxruntime.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import multiprocessing as mp
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from edgevla.runtime.audit import AuditResult, audit_commands
from edgevla.runtime.config import RuntimeConfig
from edgevla.runtime.control import ControlState
from edgevla.runtime.faults import Fault
from edgevla.runtime.policy_process import COLD_START_PLANS, EXIT_DEVICE_FAILED
from edgevla.runtime.safety_filter import Trip
from edgevla.runtime.sd_notify import Notifier
from edgevla.runtime.service_health import HealthMonitor, ServiceReporter
from edgevla.runtime.shm import RECORD_COLUMNS, Layout, SeqLock

log = logging.getLogger("edgevla.supervisor")

_COL = {name: i for i, name in enumerate(RECORD_COLUMNS)}
_FINAL_WINDOW_S = 0.05  # the report's "stopped" looks at this much of the end of the run
_STOPPED_RAD_S = 1e-3
_STOP_GRACE_S = 5.0


@dataclass
class RunOptions:
    duration_s: float | None = None
    injections: list[tuple[Fault, float]] = field(default_factory=list)
    live: bool = True


def percentiles(values: np.ndarray, scale: float = 1.0) -> dict[str, float]:
    if len(values) == 0:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    v = np.asarray(values, dtype=float) * scale
    return {
        "p50": round(float(np.percentile(v, 50)), 3),
        "p99": round(float(np.percentile(v, 99)), 3),
        "max": round(float(v.max()), 3),
    }


# numpy's BLAS (OpenBLAS) starts a thread per core for a matrix product as small as a camera
# frame's resize; on two cores those threads fight onnxruntime and the control process, and the
# capture thread lost 329 of 1800 frames in 30 s (bench_camera.py; 0 with one thread). The
# children use onnxruntime's own pool for inference and want one BLAS thread each.
_BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")  # not OMP: onnxruntime may use it


@contextlib.contextmanager
def _single_threaded_numpy():
    """Environment for spawned children: one BLAS thread, unless the user set otherwise."""
    added = [k for k in _BLAS_THREAD_VARS if k not in os.environ]
    for key in added:
        os.environ[key] = "1"
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def final_joint_speed(t_s: np.ndarray, q_meas: np.ndarray) -> float:
    """The largest joint travel (max - min) across rows of measured q [T, 6], per second of the
    rows' own timestamps t_s [T].

    Not the largest sample-to-sample difference: at 500 Hz that multiplies position noise by
    500, and an arm held against a contact, still to 1e-5 rad, read as moving at 3e-3 rad/s.
    A servo ringing through zero speed still shows as its full swing. Timestamps, not the nominal
    rate: a loaded host misses cycles, and rows then span more time than their count says.
    """
    if len(q_meas) < 2:
        return 0.0
    span = float(t_s[-1] - t_s[0])
    if span <= 0.0:
        return 0.0
    return float(np.ptp(q_meas, axis=0).max() / span)


class Supervisor:
    def __init__(self, config: RuntimeConfig, options: RunOptions) -> None:
        from edgevla.sim.hardware import world_state_size

        self.config = config
        self.options = options
        self.rate_hz = 1.0 / config.robot_model.period_s
        horizon_s = (options.duration_s or 120.0) + 30.0
        self.ring = int(min(horizon_s, 900.0) * self.rate_hz)
        self.world_size = world_state_size(config)
        tag = f"edgevla-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        keys = ("trajectory", "robot", "policy", "control", "command", "world")
        self.layout = Layout({key: f"{tag}-{key}" for key in keys}, self.ring, self.world_size)
        self.blocks = self.layout.create()
        self.ctrl = self.blocks["control"]
        self.cmd = self.blocks["command"]
        self.pol = self.blocks["policy"]
        self._stop_requested = False
        self._policy_exit: int | None = None
        self.injected: list[dict[str, Any]] = []
        self.task = self._task_monitor()
        self._world_lock = SeqLock(self.blocks["world"])
        # Under systemd (Type=notify): READY, WATCHDOG, STATUS, STOPPING. Silent otherwise.
        self.service = ServiceReporter(
            Notifier(),
            HealthMonitor(self.ctrl, self.pol, config.policy.system2_rate_hz),
            config.policy.system1_enabled,
        )

    def _task_monitor(self):  # -> sim.tasks.TaskMonitor | None
        """On the simulated robot, judge the task the instruction names (touch the X cube)."""
        if self.config.robot.kind != "sim":
            return None
        from edgevla.sim.tasks import TaskMonitor, touch_target
        from edgevla.sim.world import SimWorld

        target = touch_target(self.config.policy.instruction)
        if target is None:
            return None
        world = SimWorld(self.config.robot.scene_seed, robot=self.config.robot_model)
        return TaskMonitor(world, target, self.config.policy.instruction)

    def _read_world(self, out: np.ndarray) -> None:
        world = self.blocks["world"]

        def copy() -> None:
            out[:] = world.qpos

        self._world_lock.read(copy)

    # ------------------------------------------------------------------ lifecycle

    def _request_stop(self, signum: int, _frame: object) -> None:
        log.warning("signal %s: stopping the robot", signal.Signals(signum).name)
        self._stop_requested = True

    def _spawn(self) -> None:
        from edgevla.runtime.control import control_main
        from edgevla.runtime.policy_process import policy_main

        ctx = mp.get_context("spawn")
        args = (self.config, self.layout)
        self.control = ctx.Process(target=control_main, args=args, name="edgevla-control")
        self.policy = ctx.Process(target=policy_main, args=args, name="edgevla-policy")
        with _single_threaded_numpy():
            self.control.start()
            self.policy.start()
        self.t0 = time.monotonic()
        # One line operators (and tests) can rely on, whatever the log level.
        print(
            f"edgevla: control pid {self.control.pid}, policy pid {self.policy.pid}",
            file=sys.stderr,
            flush=True,
        )

    @property
    def policy_pid(self) -> int | None:
        return self.policy.pid

    def inject(self, fault: Fault) -> None:
        """Inject a fault now (the `--inject` schedule calls this; so may another thread: it
        writes two shared-memory words and appends to a list)."""
        now = time.monotonic() - self.t0
        self.cmd.fault_t[0] = time.monotonic()
        self.cmd.fault[0] = int(fault)
        self.injected.append({"fault": fault.label, "t_s": round(now, 3)})
        log.warning("injecting %s at t=%.2f s", fault.label, now)

    def run(self, plot_path: Path | None = None) -> dict[str, Any]:
        old = {s: signal.signal(s, self._request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._spawn()
            self._supervise()
            self._shutdown()
            report = self.report()
            if plot_path is not None:
                self.plot(report, plot_path)
            return report
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
            for proc in (getattr(self, "policy", None), getattr(self, "control", None)):
                if proc is not None and proc.is_alive():
                    proc.kill()
            for block in self.blocks.values():
                block.close()

    def _supervise(self) -> None:
        from edgevla.runtime.live import LiveView

        pending = sorted(self.options.injections, key=lambda item: item[1])
        view = LiveView(self, enabled=self.options.live)
        with view:
            while not self._stop_requested:
                now = time.monotonic() - self.t0
                if self.options.duration_s is not None and now >= self.options.duration_s:
                    break
                while pending and now >= pending[0][1]:
                    self.inject(pending.pop(0)[0])
                if self._policy_exit is None and not self.policy.is_alive():
                    self._policy_exit = self.policy.exitcode
                    self.cmd.policy_exited[0] = 1
                    why = (
                        ": its cameras did not start (the error above)"
                        if self._policy_exit == EXIT_DEVICE_FAILED
                        else ""
                    )
                    log.error("policy process ended (exit code %s)%s", self._policy_exit, why)
                if not self.control.is_alive():
                    log.error("control process ended (exit code %s)", self.control.exitcode)
                    break
                self.service.update(policy_alive=self._policy_exit is None)
                if self.task is not None and int(self.ctrl.cycle[0]) > 0:
                    self.task.poll(self._read_world, now)
                view.update()
                time.sleep(0.05)

    def _shutdown(self) -> None:
        self.cmd.shutdown[0] = 1
        self.service.status("stopping the robot")
        deadline = time.monotonic() + _STOP_GRACE_S
        while self.control.is_alive() and time.monotonic() < deadline:
            if self._policy_exit is None and not self.policy.is_alive():
                self._policy_exit = self.policy.exitcode
                self.cmd.policy_exited[0] = 1
            time.sleep(0.02)
        if self.control.is_alive():
            log.error(
                "control process did not finish its stop in %.0f s; killing it (the "
                "robot-side watchdog stops the arm)",
                _STOP_GRACE_S,
            )
            self.control.kill()
        self.control.join(2.0)
        # The control process has ended: the arm is at rest, or its own watchdog halts it.
        self.service.stopping(self._stop_summary())
        self.policy.join(2.0)
        if self.policy.is_alive():
            self.policy.terminate()
            self.policy.join(2.0)
        if self.policy.is_alive():
            self.policy.kill()
            self.policy.join(1.0)
        if self._policy_exit is None:
            self._policy_exit = self.policy.exitcode

    def _stop_summary(self) -> str:
        """How the control process ended, for systemd's STATUS."""
        state = ControlState(int(self.ctrl.state[0])).name.lower()
        code = self.control.exitcode
        if code == 0:
            return f"robot stopped (control {state})"
        if code == -signal.SIGKILL:
            return "control process killed; the robot-side watchdog stops the arm"
        return f"control process ended with exit code {code} (control {state})"

    # ------------------------------------------------------------------ report

    def _records(self) -> np.ndarray:
        cycles = int(self.ctrl.cycle[0])
        n = min(cycles, self.ring)
        start = cycles - n
        idx = (np.arange(start, cycles)) % self.ring
        return self.ctrl.record[idx].copy()

    def _ring(self, name: str) -> tuple[np.ndarray, np.ndarray, int]:
        """(all rows in order, rows after the cold start, total count) of a policy ring."""
        count = int(getattr(self.pol, f"{name}_count")[0])
        ring = getattr(self.pol, name)
        n = min(count, len(ring))
        rows = ring[np.arange(count - n, count) % len(ring)].copy()
        warm = rows[COLD_START_PLANS:] if count <= len(ring) else rows
        return rows, warm, count

    def report(self) -> dict[str, Any]:
        rec = self._records()
        cycles = int(self.ctrl.cycle[0])
        t_start = self.t0  # every time in the report counts from the spawn of the processes
        elapsed = float(rec[-1, 0] - t_start) if len(rec) else 0.0
        errors = self.ctrl.period_error_us[: min(cycles, self.ring)].copy()
        audit = self._audit(rec)
        trips = []
        for k in range(min(int(self.ctrl.trip_count[0]), len(self.ctrl.trips))):
            cause, t_trip, t_deadline, t_cmd, t_rest = self.ctrl.trips[k]
            entry = {
                "cause": Trip(int(cause)).label,
                "t_s": round(t_trip - t_start, 4),
                "stopped_after_s": None if np.isnan(t_rest) else round(t_rest - t_trip, 4),
            }
            if not np.isnan(t_deadline):
                entry["deadline_t_s"] = round(t_deadline - t_start, 4)
                entry["reaction_ms"] = round((t_cmd - t_deadline) * 1e3, 3)
            trips.append(entry)
        s2, s2_warm, s2_count = self._ring("s2")
        s1, s1_warm, s1_count = self._ring("s1")
        cam, _, cam_count = self._ring("cam")

        def rate(rows: np.ndarray) -> float:
            if len(rows) < 2:
                return 0.0
            return round((len(rows) - 1) / max(rows[-1, 0] - rows[0, 0], 1e-9), 2)

        tail = rec[rec[:, _COL["t"]] >= rec[-1, _COL["t"]] - _FINAL_WINDOW_S] if len(rec) else rec
        final_speed = final_joint_speed(
            tail[:, _COL["t"]], tail[:, [_COL[f"q_meas{i}"] for i in range(6)]]
        )
        final_state = ControlState(int(self.ctrl.state[0])).name.lower()
        report = {
            "started_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "duration_s": round(elapsed, 3),
            "config": msgspec.to_builtins(self.config),
            "control": {
                "rate_hz": rate(rec),
                "cycles": cycles,
                "period_error_us": percentiles(errors),
                "work_us": percentiles(self.ctrl.work_us[: min(cycles, self.ring)]),
                "missed_cycles": int(self.ctrl.missed[0]),
                "realtime": bool(self.ctrl.rt[0]),
            },
            "system1": {
                "enabled": self.config.policy.system1_enabled,
                "rate_hz": rate(s1_warm),
                "count": s1_count,
                "latency_ms": percentiles(s1_warm[:, 1], 1e3),
                "frame_to_setpoint_ms": percentiles(s1_warm[:, 2], 1e3),
            },
            "system2": {
                "rate_hz": rate(s2_warm),
                "count": s2_count,
                "latency_ms": percentiles(s2_warm[:, 1], 1e3),
                "cold_start_ms": [round(v * 1e3, 2) for v in s2[:COLD_START_PLANS, 1]],
            },
            "cameras": {
                "kind": self.config.cameras.kind,
                "frames": int(self.pol.frame_number[0]),
                "dropped": int(self.pol.frames_dropped[0]),
                "lost_by_driver": int(self.pol.frames_lost[0]),
                "stale_sets": int(self.pol.frames_stale[0]),
                "published": cam_count,
                "arrival_to_published_ms": percentiles(cam[:, 1], 1e3),
                "age_when_published_ms": percentiles(cam[:, 2], 1e3),
            },
            "trips": trips,
            "injections": self.injected,
            "safety": {
                "limit_violations": audit.total,
                "violations_by_kind": audit.violations,
                "worst_ratio_to_limit": {k: round(v, 6) for k, v in audit.worst.items()},
                "audited_cycles": audit.samples,
                "clamped_position_cycles": int(self.ctrl.counters[0]),
                "scaled_velocity_cycles": int(self.ctrl.counters[1]),
                "defence_clamps": int(self.ctrl.counters[2]),
                "hold_cycles": int(self.ctrl.counters[3]),
            },
            "final": {
                "state": final_state,
                "max_joint_speed_rad_s": round(final_speed, 6),
                "robot_stopped": final_speed < _STOPPED_RAD_S,
            },
            "policy_process": {"pid": self.policy.pid, "exit_code": self._policy_exit},
            "control_process": {"pid": self.control.pid, "exit_code": self.control.exitcode},
            "task": None if self.task is None else self.task.report(),
        }
        self._rec = rec
        self._s1, self._s2 = s1, s2
        return report

    def _audit(self, rec: np.ndarray) -> AuditResult:
        """Audit every setpoint that went to the robot, run by run of consecutive sends."""
        sent = rec[:, _COL["sent"]] > 0 if len(rec) else np.zeros(0, dtype=bool)
        breaks = np.flatnonzero(np.diff(sent.astype(np.int8)) != 0) + 1
        total = AuditResult(samples=0)
        for run in np.split(np.arange(len(rec)), breaks):
            if len(run) == 0 or not sent[run[0]]:
                continue
            q = rec[run][:, [_COL[f"q_cmd{i}"] for i in range(6)]]
            g = rec[run, _COL["gripper_cmd"]]
            part = audit_commands(
                q, g, 1.0 / self.rate_hz, self.config.limits, self.config.robot_model
            )
            total.samples += part.samples
            for kind, count in part.violations.items():
                total.violations[kind] = total.violations.get(kind, 0) + count
            for kind, worst in part.worst.items():
                total.worst[kind] = max(total.worst.get(kind, 0.0), worst)
        return total

    def plot(self, report: dict[str, Any], path: Path) -> None:
        from edgevla.runtime.report_plot import plot_run

        plot_run(
            report,
            self._rec,
            self._s1,
            self._s2,
            self.t0,
            self.ctrl.period_error_us[: min(int(self.ctrl.cycle[0]), self.ring)],
            path,
        )


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__}")


def write_report(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = msgspec.json.encode(report, enc_hook=_plain)
    path.write_text(msgspec.json.format(raw, indent=2).decode() + "\n")


def run(
    config: RuntimeConfig, options: RunOptions, report_path: Path | None, plot_path: Path | None
) -> dict[str, Any]:
    report = Supervisor(config, options).run(plot_path)
    if report_path is not None:
        write_report(report, report_path)
    return report


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `edgevla run`")
