"""The control process: owns the robot, runs at the robot's rate, trusts nothing it is sent.

Every cycle: read the robot and the safety MCU, run the watchdogs, sample the committed
trajectory, pass it through the safety filter, servo. Any trip starts a controlled stop (the
filter's `stop_step`, within the acceleration and jerk limits) that stays latched until an
explicit reset. The process imports no ML code, runs under SCHED_FIFO when the system permits
(and says so when it does not), keeps the garbage collector out of the loop, and works in
preallocated arrays.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import logging
import os
import signal
import time
from enum import IntEnum

import numpy as np

from edgevla.runtime.config import RuntimeConfig
from edgevla.runtime.devices import McuStatus, Robot, RobotDisconnected, RobotState, SafetyMode
from edgevla.runtime.faults import Fault
from edgevla.runtime.kinematics import ForwardKinematics
from edgevla.runtime.safety_filter import SafetyFilter, Trip
from edgevla.runtime.shm import Layout, SeqLock, ShmBlock
from edgevla.runtime.stitching import sample

log = logging.getLogger("edgevla.control")

_SPIN_S = 0.0002  # sleep until this close to the deadline, then spin: sleep wake-up is coarse
_PARENT_CHECK_CYCLES = 50
# Measured joint speed below which the arm counts as at rest: half the report's "stopped" bound
# (supervisor._STOPPED_RAD_S), so an arm still settling against a contact when the stop is
# declared is not read as moving in the run's final readings.
_SETTLED_RAD_S = 5e-4
_SETTLED_FOR_S = 0.05  # ... for this long: a servo ringing through zero speed is not at rest
_SETTLE_TIMEOUT_S = 2.0  # after this, at rest on the command alone
_MAX_CYCLE_FAULTS = 50  # consecutive failing cycles before giving up to the robot's watchdog


class ControlState(IntEnum):
    STARTING = 0
    WAITING = 1  # holding position until the policy publishes a fresh trajectory
    RUNNING = 2
    STOPPING = 3  # controlled stop in progress after a trip
    TRIPPED = 4  # at rest, latched until reset
    FINISHED = 5  # stopped on request (shutdown), process about to exit


def hold_low_wakeup_latency() -> object | None:
    """Ask the kernel to keep CPUs out of deep idle states (PM QoS), as cyclictest does.

    The request lasts while the returned file stays open; None if the system refuses it.
    """
    try:
        fd = open("/dev/cpu_dma_latency", "wb", buffering=0)  # noqa: SIM115 - held for the run
        fd.write((0).to_bytes(4, "little"))
        return fd
    except OSError:
        return None


def enable_realtime(priority: int) -> tuple[bool, str]:
    """SCHED_FIFO and locked memory when permitted. Returns (in effect, explanation)."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (PermissionError, OSError) as exc:
        return False, (
            f"SCHED_FIFO refused ({exc.strerror or exc}); running at normal priority, expect "
            "jitter. Grant it with LimitRTPRIO= (systemd) or CAP_SYS_NICE."
        )
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        mcl_current, mcl_future = 1, 2
        if libc.mlockall(mcl_current | mcl_future) != 0:
            return True, f"SCHED_FIFO priority {priority}; mlockall refused (page faults possible)"
    return True, f"SCHED_FIFO priority {priority}, memory locked"


class ControlLoop:
    """One robot, one filter, the watchdogs, and the shared-memory endpoints."""

    def __init__(
        self,
        config: RuntimeConfig,
        robot: Robot,
        mcu,  # SafetyMcu
        blocks: dict[str, ShmBlock],
        world=None,  # sim only: publishes the world state for the cameras
        injector=None,  # sim only: applies robot-side fault injections
    ) -> None:
        self.config = config
        self.robot = robot
        self.mcu = mcu
        self.world = world
        self.injector = injector
        self.period = robot.period_s
        self.filter = SafetyFilter(
            config.limits, self.period, ForwardKinematics(config.robot_model)
        )
        self.wd = config.watchdog
        self.traj = blocks["trajectory"]
        self.robot_out = blocks["robot"]
        self.policy = blocks["policy"]
        self.ctrl = blocks["control"]
        self.cmd = blocks["command"]
        self.world_out = blocks.get("world")
        self.traj_lock = SeqLock(self.traj)
        self.robot_lock = SeqLock(self.robot_out)
        self.world_lock = SeqLock(self.world_out) if self.world_out is not None else None
        self.state = RobotState()
        self.mcu_status = McuStatus()
        self.control_state = ControlState.STARTING
        self.trip = Trip.NONE
        self.ring = len(self.ctrl.period_error_us)
        # Local copies of the committed trajectory, refreshed when its version changes.
        self._times = np.zeros_like(self.traj.times)
        self._points = np.zeros_like(self.traj.points)
        self._new_times = np.zeros_like(self.traj.times)
        self._new_points = np.zeros_like(self.traj.points)
        self._new_count = 0
        self._bad_trajectory = False
        self._count = 0
        # Change detection on our clock for the policy's liveness signals.
        self._hb_value = -1.0
        self._hb_seen = time.monotonic()
        self._frame_value = -1
        self._frame_seen = time.monotonic()
        self._t_written = 0.0
        self._traj_version = -1
        self._target = np.zeros(7)
        self._target_q = self._target[:6]
        self._reset_seen = 0
        self._fault_seen = 0
        self._parent = os.getppid()
        self._connected = True
        self._t_start = time.monotonic()
        self._stop_t = self._t_start
        self._still_cycles = 0
        self._commanding = False  # nothing is sent to the robot before the filter is anchored
        self._sent = 0.0

    # ------------------------------------------------------------------ inputs

    def _copy_trajectory(self) -> None:
        # Into scratch: a copy the sequence lock later finds torn must never be used.
        n = int(self.traj.count[0])
        self._new_count = n
        if 1 <= n <= len(self._new_times):
            self._new_times[:n] = self.traj.times[:n]
            self._new_points[:n] = self.traj.points[:n]

    def _refresh_trajectory(self, now: float) -> None:
        """Take a new, consistent, well-formed snapshot; its age is judged on our own clock."""
        version = self.traj_lock.version
        if version == self._traj_version or version % 2:
            return
        if not self.traj_lock.read(self._copy_trajectory, max_tries=3):
            return  # torn three times: keep the previous snapshot, the next cycle tries again
        self._traj_version = version
        n = self._new_count
        times = self._new_times[:n]
        if (
            not (1 <= n <= len(self._times))
            or not np.isfinite(times).all()
            or (n > 1 and (np.diff(times) <= 0).any())
        ):
            self._bad_trajectory = True
            return
        self._times, self._new_times = self._new_times, self._times
        self._points, self._new_points = self._new_points, self._points
        self._count = n
        self._t_written = now  # arrival on this clock, whatever the policy wrote

    def _read_devices(self, now: float) -> Trip:
        try:
            self.robot.read_state(self.state)
        except RobotDisconnected:
            self._connected = False
            return Trip.ROBOT_DISCONNECTED
        self._connected = True
        self.mcu.heartbeat(now)
        self.mcu.read_status(self.mcu_status)
        return Trip.NONE

    # ------------------------------------------------------------------ watchdogs

    def _watchdogs(self, now: float) -> tuple[Trip, float]:
        """The first tripped watchdog and its deadline (NaN when it is an event, not a timeout)."""
        nan = float("nan")
        mode = self.state.safety_mode
        if self.mcu_status.estop_pressed:
            return Trip.ESTOP, nan
        if mode == SafetyMode.PROTECTIVE_STOP:
            return Trip.ROBOT_PROTECTIVE_STOP, nan
        if mode not in (SafetyMode.NORMAL, SafetyMode.REDUCED):
            return Trip.ROBOT_SAFETY_STOP, nan
        if not self.state.program_running:
            return Trip.ROBOT_PROGRAM_STOPPED, nan  # e.g. the robot-side watchdog expired
        if self.state.age_s > self.wd.robot_state_max_age_s:
            # Readings that old describe an arm that has moved on; the stop still goes out (the
            # command link is separate) and is computed from our own commanded state.
            return Trip.ROBOT_STATE_STALE, now - (self.state.age_s - self.wd.robot_state_max_age_s)
        mcu_deadline = self.mcu_status.t_last_heartbeat_s + self.wd.mcu_heartbeat_timeout_s
        if now > mcu_deadline:
            return Trip.MCU_HEARTBEAT, mcu_deadline
        if self.cmd.policy_exited[0]:
            return Trip.POLICY_DEAD, nan
        ready = bool(self.policy.ready[0])
        if self.control_state == ControlState.WAITING:
            startup_deadline = self._t_start + self.wd.startup_timeout_s
            if not ready and now > startup_deadline:
                return Trip.STARTUP_TIMEOUT, startup_deadline
        if self._bad_trajectory:
            return Trip.BAD_TRAJECTORY, nan
        # Liveness is a value that keeps changing, timed on this clock: a policy clock that
        # runs ahead (or a stuck timestamp in the future) cannot make stale data look fresh.
        hb = float(self.policy.heartbeat_t[0])
        if hb != self._hb_value:
            self._hb_value, self._hb_seen = hb, now
        frame = int(self.policy.frame_number[0])
        if frame != self._frame_value:
            self._frame_value, self._frame_seen = frame, now
        if not ready:
            return Trip.NONE, nan
        hb_deadline = self._hb_seen + self.wd.policy_heartbeat_timeout_s
        if now > hb_deadline:
            return Trip.POLICY_DEAD, hb_deadline
        if self.control_state != ControlState.RUNNING:
            return Trip.NONE, nan
        cam_deadline = self._frame_seen + self.wd.camera_max_age_s
        if now > cam_deadline:
            return Trip.CAMERA_STALE, cam_deadline
        sp_deadline = self._t_written + self.wd.setpoint_stop_s
        if now > sp_deadline:
            return Trip.SETPOINT_STALE, sp_deadline
        return Trip.NONE, nan

    # ------------------------------------------------------------------ state changes

    def _begin_stop(self, cause: Trip, now: float, deadline: float) -> None:
        self.trip = cause
        self._stop_t = now
        self.control_state = ControlState.STOPPING
        k = int(self.ctrl.trip_count[0]) % len(self.ctrl.trips)
        self.ctrl.trips[k] = (int(cause), now, deadline, now, float("nan"))
        self.ctrl.trip_count[0] += 1
        if cause is not Trip.OPERATOR_STOP:
            log.warning("TRIP %s at t=%.3f s", cause.label, now - self._t_start)
        robot_side = cause in (
            Trip.ROBOT_PROTECTIVE_STOP,
            Trip.ROBOT_SAFETY_STOP,
            Trip.ROBOT_PROGRAM_STOPPED,
            Trip.ESTOP,
            Trip.ROBOT_DISCONNECTED,
        )
        if robot_side:
            # The robot has halted by itself; streaming our own stop to it would leave a command
            # that runs ahead of the arm and moves it the moment the stop clears.
            self._commanding = False
            if self._connected:
                self.robot.stop()

    def _refuse(self, cause: Trip, now: float) -> None:
        """A start or reset the filter cannot anchor: latch without commanding anything."""
        self._begin_stop(cause, now, float("nan"))
        self._commanding = False
        self._at_rest(now)

    def _at_rest(self, now: float) -> None:
        k = (int(self.ctrl.trip_count[0]) - 1) % len(self.ctrl.trips)
        self.ctrl.trips[k, 4] = now
        # Latched: nothing more is sent until a reset re-anchors on the measured pose.
        if self._commanding and self._connected:
            self.robot.stop()
        self._commanding = False
        if self.trip is Trip.OPERATOR_STOP or self.cmd.shutdown[0]:
            self.control_state = ControlState.FINISHED
        else:
            self.control_state = ControlState.TRIPPED
            log.warning("stopped after %s; latched until reset", self.trip.label)

    def _handle_commands(self, now: float) -> None:
        fault = int(self.cmd.fault[0])
        if fault != self._fault_seen:
            self._fault_seen = fault
            if self.injector is not None:
                self.injector(Fault(fault))
        if self.cmd.shutdown[0]:
            if self.control_state in (
                ControlState.STARTING,
                ControlState.WAITING,
                ControlState.RUNNING,
            ):
                self._begin_stop(Trip.OPERATOR_STOP, now, float("nan"))
            elif self.control_state == ControlState.TRIPPED:
                self.control_state = ControlState.FINISHED
        resets = int(self.cmd.reset[0])
        if resets != self._reset_seen:
            self._reset_seen = resets
            still = float(np.abs(self.state.qd).max()) < _SETTLED_RAD_S
            if self.control_state == ControlState.TRIPPED and not (self._connected and still):
                log.warning("reset refused: the robot is not connected or not at rest")
                return
            if self.control_state == ControlState.TRIPPED:
                trip = self.filter.reset(self.state.q, self.state.gripper)
                if trip:
                    self._refuse(trip, now)
                    return
                self._commanding = True
                self.trip = Trip.NONE
                self._bad_trajectory = False
                self._traj_version = self.traj_lock.version  # only a trajectory sent after this
                self._count = 0
                self.control_state = ControlState.WAITING
                log.warning("reset: waiting for a fresh trajectory")

    # ------------------------------------------------------------------ the cycle

    def cycle(self, now: float) -> None:
        self._target.fill(np.nan)  # recorded as "no policy target" unless sampled below
        device_trip = self._read_devices(now)  # first: a reset must anchor on this reading
        self._handle_commands(now)
        if self.control_state == ControlState.STARTING:
            trip = device_trip or self.filter.reset(self.state.q, self.state.gripper)
            if trip:
                self._refuse(trip, now)
            else:
                self._commanding = True
                self.control_state = ControlState.WAITING
        self._refresh_trajectory(now)
        active = self.control_state in (ControlState.WAITING, ControlState.RUNNING)
        if active:
            trip, deadline = (device_trip, float("nan")) if device_trip else self._watchdogs(now)
            if trip is not Trip.NONE:
                self._begin_stop(trip, now, deadline)
        if self.control_state == ControlState.WAITING:
            fresh = now - self._t_written < self.wd.setpoint_hold_s and self._count > 0
            if self.policy.ready[0] and fresh:
                self.control_state = ControlState.RUNNING
            else:
                self.filter.hold_step()
        if self.control_state == ControlState.RUNNING:
            if now - self._t_written > self.wd.setpoint_hold_s:
                self.filter.hold_step()  # late setpoints: hold; the stop deadline follows
                self.ctrl.counters[3] += 1
            else:
                sample(self._times, self._points, self._count, now, self._target)
                trip = self.filter.step(self._target_q, float(self._target[6]))
                if trip is not Trip.NONE:
                    self._begin_stop(trip, now, float("nan"))
        if self.control_state == ControlState.STOPPING:
            command_at_rest = self.filter.stop_step() if self._commanding else True
            if command_at_rest and self._commanding:
                # The command is at rest: hand the hold to the robot (servoStop), which holds
                # where the arm itself comes to rest. Streaming the same setpoint while waiting
                # for the arm kept pushing wherever the command ended: into a cube the policy
                # was pressing, which gave way, and the arm followed it for seconds.
                if self._connected:
                    self.robot.stop()
                self._commanding = False
            # At rest means the arm, not just the command: the servo lags a few milliseconds.
            # A lost robot reports nothing; its own watchdog stops it.
            still = float(np.abs(self.state.qd).max()) < _SETTLED_RAD_S
            self._still_cycles = self._still_cycles + 1 if still else 0
            settled = not self._connected or self._still_cycles * self.period >= _SETTLED_FOR_S
            if command_at_rest and (settled or now - self._stop_t > _SETTLE_TIMEOUT_S):
                self._at_rest(now)
        self._sent = 0.0
        if self._connected and self._commanding:
            try:
                self.robot.servo(self.filter.q, self.filter.gripper)
                self._sent = 1.0
            except RobotDisconnected:
                self._connected = False
        self._publish(now)

    def _publish(self, now: float) -> None:
        with self.robot_lock.write():
            out = self.robot_out
            out.t[0] = self.state.t_s
            out.q[:] = self.state.q
            out.qd[:] = self.state.qd
            out.gripper[0] = self.state.gripper
            out.safety_mode[0] = self.state.safety_mode
            out.control_state[0] = self.control_state
        c = self.ctrl
        c.state[0] = self.control_state
        i = int(c.cycle[0]) % self.ring
        row = c.record[i]
        row[0] = now
        row[1:7] = self.filter.q
        row[7] = self.filter.gripper
        row[8:14] = self.state.q
        row[14] = self.control_state
        row[15:22] = self._target
        row[22] = self._sent
        c.counters[0] = self.filter.clamped_position
        c.counters[1] = self.filter.scaled_velocity
        c.counters[2] = self.filter.defence_clamps
        if self.world is not None and self.world_lock is not None and c.cycle[0] % 5 == 0:
            with self.world_lock.write():
                self.world_out.t[0] = self.world.world_state(self.world_out.qpos)

    def warm_up(self) -> None:
        """Run every path of the cycle once before the real-time loop: first calls import,
        allocate and fault pages in (measured: a 10 ms first filter step under mlockall)."""
        scratch = SafetyFilter(self.config.limits, self.period, self.filter.fk)
        scratch.reset(self.state.q, self.state.gripper)
        times = np.array([0.0, 1.0])
        points = np.zeros((2, 7))
        points[:, :6] = self.state.q
        points[1, 0] += 0.01
        for t in (0.25, 0.5, 0.75):
            sample(times, points, 2, t, self._target)
            scratch.step(self._target_q, float(self._target[6]))
        scratch.step(self._target_q * np.nan, 0.0)
        scratch.hold_step()
        while not scratch.stop_step():
            pass
        self._refresh_trajectory(time.monotonic())
        self._watchdogs(time.monotonic())
        self._bad_trajectory = False

    def run(self) -> None:
        """Cycle at the robot's period until a requested stop has completed."""
        c = self.ctrl
        period = self.period
        c.t_start[0] = self._t_start
        deadline = time.monotonic()
        cycle = 0
        faults = 0
        while self.control_state != ControlState.FINISHED:
            now = time.monotonic()
            lateness = now - deadline
            c.period_error_us[cycle % self.ring] = lateness * 1e6
            if lateness > period:
                missed = int(lateness // period)
                c.missed[0] += missed
                deadline += missed * period
            try:
                self.cycle(now)
                faults = 0
            except Exception:
                faults += 1
                log.exception("control cycle failed")
                if faults > _MAX_CYCLE_FAULTS:
                    raise  # the robot-side watchdog stops the arm
                if self.control_state in (
                    ControlState.STARTING,
                    ControlState.WAITING,
                    ControlState.RUNNING,
                ):
                    self._begin_stop(Trip.CONTROL_FAULT, now, float("nan"))
            c.work_us[cycle % self.ring] = (time.monotonic() - now) * 1e6
            cycle += 1
            c.cycle[0] = cycle
            if cycle % _PARENT_CHECK_CYCLES == 0 and os.getppid() != self._parent:
                if self.control_state in (ControlState.WAITING, ControlState.RUNNING):
                    self._begin_stop(Trip.SUPERVISOR_LOST, now, float("nan"))
                elif self.control_state == ControlState.TRIPPED:
                    break  # nobody left to reset us; the arm is at rest
            deadline += period
            remaining = deadline - time.monotonic()
            if remaining > _SPIN_S:
                time.sleep(remaining - _SPIN_S)
            while time.monotonic() < deadline:
                pass


def control_main(config: RuntimeConfig, layout: Layout) -> None:
    """Entry point of the control process (spawned by the supervisor)."""
    from edgevla.sim.hardware import make_sim_hardware

    # Ctrl-C and a group-wide SIGTERM (systemd's default KillMode) reach the supervisor, which
    # asks for a controlled stop; dying here mid-motion would skip it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s control %(levelname)s %(message)s")
    blocks = layout.attach(["trajectory", "robot", "policy", "control", "command", "world"])
    if config.robot.kind == "ur":
        from edgevla.robots.ur.hardware import make_ur_hardware

        hardware = make_ur_hardware(config)
    else:
        hardware = make_sim_hardware(config)
    if config.robot.control_cpus:
        os.sched_setaffinity(0, config.robot.control_cpus)
    qos = hold_low_wakeup_latency()
    if config.robot.realtime_priority > 0:
        rt, why = enable_realtime(config.robot.realtime_priority)
    else:
        rt, why = False, "SCHED_FIFO not requested (robot.realtime_priority = 0)"
    blocks["control"].rt[0] = int(rt)
    (log.info if rt else log.warning)("%s", why)
    # Connected after SCHED_FIFO, so that a driver's I/O threads (ur_rtde's receive thread)
    # inherit it: at normal priority they starve behind this loop, whose commands wait on them.
    # Before the loop is built: a real controller decides the control period.
    hardware.robot.connect()
    loop = ControlLoop(
        config, hardware.robot, hardware.mcu, blocks, hardware.world, hardware.inject
    )
    gc.collect()
    gc.freeze()
    gc.disable()  # a collection in the loop costs milliseconds; the loop makes no cycles
    hardware.robot.read_state(loop.state)
    loop.warm_up()
    # The MCU's enable goes high only now: from here heartbeats come every cycle, and a real MCU
    # drops enable after 100 ms without them (the set-up above can take longer than that).
    hardware.mcu.arm()
    # Armed last: from here on a servo goes out every period, and if we stall the arm stops.
    hardware.robot.set_watchdog(config.watchdog.robot_watchdog_min_hz)
    try:
        loop.run()
    finally:
        if qos is not None:
            qos.close()
        gc.enable()
        with contextlib.suppress(Exception):
            hardware.robot.stop()
        hardware.close()
        for block in blocks.values():
            block.close()
