"""The control process in isolation: what it imports, and that its cycle allocates nothing."""

from __future__ import annotations

import subprocess
import sys
import time
import tracemalloc

import numpy as np

from edgevla.runtime.config import load_config
from edgevla.runtime.control import ControlLoop, ControlState
from edgevla.runtime.shm import Layout

ML_MODULES = ("torch", "onnxruntime", "onnx", "tokenizers", "safetensors")


def test_the_control_process_imports_no_ml_code() -> None:
    code = (
        "import sys\n"
        "import edgevla.runtime.control, edgevla.sim.hardware\n"
        f"loaded = [m for m in {ML_MODULES!r} if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def _loop():
    from edgevla.sim.hardware import make_sim_hardware, world_state_size

    config = load_config(None)
    keys = ("trajectory", "robot", "policy", "control", "command", "world")
    layout = Layout(
        {k: f"edgevla-test-{k}-{time.monotonic_ns()}" for k in keys}, 4096, world_state_size(config)
    )
    blocks = layout.create()
    hw = make_sim_hardware(config)
    loop = ControlLoop(config, hw.robot, hw.mcu, blocks, hw.world, hw.inject)
    return config, blocks, hw, loop


def test_a_running_cycle_allocates_nothing_that_lasts() -> None:
    config, blocks, hw, loop = _loop()
    try:
        traj, policy = blocks["trajectory"], blocks["policy"]
        q0 = np.asarray(config.robot.initial_q_rad)
        now = time.monotonic()
        traj.times[:2] = (now, now + 2.0)
        traj.points[0, :6] = q0
        traj.points[1, :6] = q0 + 0.3
        traj.points[:2, 6] = 0.5
        traj.count[0] = 2
        policy.ready[0] = 1

        def cycles(n: int) -> None:
            for _ in range(n):
                t = time.monotonic()
                traj.t_written[0] = t  # a fresh trajectory, a live policy, a fresh frame
                traj.seq[0] += 2
                policy.heartbeat_t[0] = t
                policy.frame_t[0] = t
                policy.frame_number[0] += 1
                loop.cycle(t)

        loop.warm_up()
        cycles(500)
        assert loop.control_state == ControlState.RUNNING, loop.trip
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        cycles(2000)
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        grown = sum(s.size_diff for s in after.compare_to(before, "filename") if s.size_diff > 0)
        assert loop.control_state == ControlState.RUNNING, loop.trip
        assert grown < 16_384, f"{grown} bytes retained over 2000 cycles"
        # ... and the arm did move toward the target.
        assert np.abs(loop.filter.q - q0).max() > 0.01
    finally:
        hw.close()
        for block in blocks.values():
            block.close()


def _drive(loop, blocks, seconds: float, fresh: bool = True) -> None:
    """Cycle in real time (the simulated arm runs on the wall clock) with a live policy."""
    traj, policy = blocks["trajectory"], blocks["policy"]
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.monotonic()
        if fresh:
            traj.seq[0] += 2
            policy.heartbeat_t[0] = t
            policy.frame_number[0] += 1
        loop.cycle(t)
        time.sleep(0.002)


def _moving_target(config, blocks) -> np.ndarray:
    traj, policy = blocks["trajectory"], blocks["policy"]
    q0 = np.asarray(config.robot.initial_q_rad)
    now = time.monotonic()
    traj.times[:2] = (now, now + 1.0)
    traj.points[0, :6] = q0
    traj.points[1, :6] = q0 + np.array([0.8, 0, 0, 0, 0, 0])
    traj.points[:2, 6] = 1.0
    traj.count[0] = 2
    policy.ready[0] = 1
    return q0


def test_releasing_the_estop_after_a_trip_does_not_move_the_arm() -> None:
    """A latched trip sends nothing: clearing the robot-side stop must not let the arm chase a
    command that kept running (a review found it moved 0.1 rad without any reset)."""
    from edgevla.runtime.faults import Fault

    config, blocks, hw, loop = _loop()
    try:
        _moving_target(config, blocks)
        loop.warm_up()
        _drive(loop, blocks, 0.4)
        assert loop.control_state == ControlState.RUNNING, loop.trip
        hw.inject(Fault.ESTOP)
        _drive(loop, blocks, 1.0)
        assert loop.control_state == ControlState.TRIPPED and loop.trip.label == "estop"
        held = hw.robot.world.q.copy()
        # Released, reset and re-armed (say, by a technician's selftest): the robot's
        # safeguard stop clears, and still nothing moves.
        hw.mcu.mcu.release_estop()
        hw.mcu.mcu.reset_estop()
        hw.mcu.arm()
        _drive(loop, blocks, 1.0)
        assert loop.control_state == ControlState.TRIPPED  # still latched
        assert np.abs(hw.robot.world.q - held).max() < 1e-3
    finally:
        hw.close()
        for block in blocks.values():
            block.close()


def test_a_malformed_trajectory_trips_instead_of_being_sampled() -> None:
    config, blocks, hw, loop = _loop()
    try:
        _moving_target(config, blocks)
        loop.warm_up()
        _drive(loop, blocks, 0.2)
        assert loop.control_state == ControlState.RUNNING, loop.trip
        blocks["trajectory"].count[0] = 0  # a policy bug: nothing to sample
        _drive(loop, blocks, 0.5)
        assert loop.trip.label == "bad-trajectory"
        assert loop.control_state == ControlState.TRIPPED
    finally:
        hw.close()
        for block in blocks.values():
            block.close()
