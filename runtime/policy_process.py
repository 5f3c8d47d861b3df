"""The policy process: cameras, System 2 and System 1, running concurrently.

- capture thread: reads every camera at its rate and keeps the newest frame set;
- System 2 thread: plans at `system2_rate_hz` (N candidates, value-selected) from the newest
  frames and robot state; a plan is anchored at its observation time;
- System 1 thread: at `system1_rate_hz` refines the slice of the newest plan that covers "now"
  plus its own expected latency, from the newest frame and state, and stitches it into the
  committed trajectory (frozen for the actions that execute during the next inference,
  cross-faded after);
- heartbeat thread: proves the process is alive and scheduled, independently of inference.

The control process reads the committed trajectory, the heartbeat and the frame time from
shared memory and trusts none of them beyond their deadlines.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from edgevla.runtime.config import RuntimeConfig
from edgevla.runtime.errors import EdgeVlaError
from edgevla.runtime.faults import Fault
from edgevla.runtime.policy import DualSystemPolicy, Observation, Plan
from edgevla.runtime.shm import Layout, SeqLock, ShmBlock
from edgevla.runtime.stitching import CommittedTrajectory

log = logging.getLogger("edgevla.policy")

EXIT_DEVICE_FAILED = 78  # sysexits' EX_CONFIG: a camera is missing or cannot stream as asked

COLD_START_PLANS = 2  # the first inferences pay for lazy initialisation; reports exclude them
_WILD_OFFSET_RAD = 10.0
_RUNNING_STATES = (1, 2)  # control WAITING or RUNNING: it will use what we publish


@dataclass
class FrameSet:
    images: np.ndarray  # uint8 [cameras, S, S, 3]
    t_capture: float  # oldest capture time in the set
    number: int


@dataclass
class AnchoredPlan:
    plan: Plan
    t_obs: float  # the chunk's first action belongs to this moment


class LatencyWindow:
    """Recent latencies, for the freeze horizon of stitching (p90 of the last few)."""

    def __init__(self, size: int = 20, initial_s: float = 0.05) -> None:
        self._values: deque[float] = deque([initial_s], maxlen=size)

    def add(self, value: float) -> None:
        self._values.append(value)

    def p90(self) -> float:
        ordered = sorted(self._values)
        return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


class PolicyRuntime:
    def __init__(
        self,
        config: RuntimeConfig,
        policy: DualSystemPolicy,
        cameras: list,
        blocks: dict[str, ShmBlock],
    ) -> None:
        self.config = config
        self.pc = config.policy
        self.policy = policy
        self.cameras = cameras
        self.shm_traj = blocks["trajectory"]
        self.shm_robot = blocks["robot"]
        self.shm_policy = blocks["policy"]
        self.cmd = blocks["command"]
        self.traj_lock = SeqLock(self.shm_traj)
        self.robot_lock = SeqLock(self.shm_robot)
        self.step_s = policy.bundle.manifest.action_space.step_period_s
        self.rng = np.random.default_rng(self.pc.seed)
        self.lock = threading.Lock()
        self.frames: FrameSet | None = None
        self.plan: AnchoredPlan | None = None
        self.committed = CommittedTrajectory()
        self.stop = threading.Event()
        self.s1_latency = LatencyWindow(initial_s=1.0 / self.pc.system1_rate_hz)
        self.s2_latency = LatencyWindow(initial_s=0.2)
        self.max_plan_age_s = max(1.0, 3.0 / self.pc.system2_rate_hz)
        self.max_frame_age_s = config.watchdog.camera_max_age_s
        self._robot_q = np.zeros(7)
        self._control_state = 0
        self._anchored = False

    # ------------------------------------------------------------------ shared inputs

    def fault(self) -> Fault:
        return Fault(int(self.cmd.fault[0]))

    def _hang_if_asked(self) -> None:
        if self.fault() is Fault.POLICY_HANG:
            log.warning("injected fault: policy-hang (inference threads block)")
            while True:
                time.sleep(3600)

    def robot_state(self) -> np.ndarray:
        def copy() -> None:
            self._robot_q[:6] = self.shm_robot.q
            self._robot_q[6] = self.shm_robot.gripper[0]
            self._control_state = int(self.shm_robot.control_state[0])

        self.robot_lock.read(copy)
        return self._robot_q.copy()

    def observation(self) -> tuple[Observation, FrameSet] | None:
        with self.lock:
            frames = self.frames
        if frames is None:
            return None
        obs = Observation(
            frames.images, self.robot_state(), self.pc.instruction, t_s=frames.t_capture
        )
        return obs, frames

    # ------------------------------------------------------------------ publishing

    def _publish(self) -> None:
        c = self.committed
        fault = self.fault()
        with self.traj_lock.write():
            n = c.count
            self.shm_traj.times[:n] = c.times[:n]
            self.shm_traj.points[:n] = c.points[:n]
            # Injected corruption lands where a bug past the policy's own checks would: in what
            # the control process receives. The control process must catch it.
            if fault is Fault.NAN_PLAN:
                self.shm_traj.points[:n] = np.nan
            elif fault is Fault.WILD_PLAN:
                self.shm_traj.points[:n, :6] += _WILD_OFFSET_RAD
            self.shm_traj.count[0] = n
            self.shm_traj.t_written[0] = time.monotonic()

    def _commit(self, times: np.ndarray, points: np.ndarray, freeze_s: float) -> None:
        now = time.monotonic()
        measured = self.robot_state()
        with self.lock:
            if self._control_state not in _RUNNING_STATES or not self._anchored:
                # Stopped or starting: begin again from where the arm really is.
                self.committed.hold(now, measured)
                self._anchored = self._control_state in _RUNNING_STATES
            self.committed.stitch(times, points, now, freeze_s, self.pc.crossfade_s)
            self._publish()

    def _ring(self, name: str, values: tuple[float, float, float]) -> None:
        counter = getattr(self.shm_policy, f"{name}_count")
        ring = getattr(self.shm_policy, name)
        ring[int(counter[0]) % len(ring)] = values
        counter[0] += 1

    # ------------------------------------------------------------------ threads

    def capture_loop(self) -> None:
        stalled = False
        last_numbers = [-1] * len(self.cameras)
        while not self.stop.is_set():
            if self.fault() is Fault.CAMERA_STALL and not stalled:
                log.warning("injected fault: camera-stall")
                for cam in self.cameras:
                    cam.stall()
                stalled = True
            try:
                frames = [cam.read(timeout_s=0.5) for cam in self.cameras]
            except Exception as exc:  # CameraTimeout, or a device error: the frame age tells
                log.debug("camera read failed: %s", exc)
                continue
            for i, frame in enumerate(frames):
                if last_numbers[i] >= 0 and frame.frame_number > last_numbers[i] + 1:
                    self.shm_policy.frames_dropped[0] += frame.frame_number - last_numbers[i] - 1
                last_numbers[i] = frame.frame_number
            self.shm_policy.frames_lost[0] = sum(getattr(c, "frames_lost", 0) for c in self.cameras)
            t_oldest = min(f.t_capture_s for f in frames)
            now = time.monotonic()
            if now - t_oldest > self.max_frame_age_s:
                # A set this old is no observation of the present (a camera delivering late, a
                # reader stuck behind another camera): not published, so the control process's
                # frame deadline runs on as if nothing had come.
                self.shm_policy.frames_stale[0] += 1
                continue
            images = np.stack([f.image for f in frames])
            with self.lock:
                self.frames = FrameSet(images, t_oldest, frames[0].frame_number)
            published = time.monotonic()
            self.shm_policy.frame_t[0] = t_oldest
            self.shm_policy.frame_number[0] = frames[0].frame_number
            arrival = max(f.t_arrival_s for f in frames)
            self._ring("cam", (published, published - arrival, published - t_oldest))

    def system2_loop(self) -> None:
        period = 1.0 / self.pc.system2_rate_hz
        next_t = time.monotonic()
        while not self.stop.is_set():
            self._hang_if_asked()
            got = self.observation()
            if got is None:
                time.sleep(0.01)
                continue
            obs, frames = got
            start = time.monotonic()
            plan = self.policy.plan(obs, self.rng)
            latency = time.monotonic() - start
            anchored = AnchoredPlan(plan, frames.t_capture)
            with self.lock:
                self.plan = anchored
            self.s2_latency.add(latency)
            self._ring("s2", (time.monotonic(), latency, plan.result.chosen))
            if not self.pc.system1_enabled:
                times = frames.t_capture + np.arange(len(plan.chunk)) * self.step_s
                self._commit(times, plan.chunk, freeze_s=self.s2_latency.p90())
                self.shm_policy.ready[0] = 1
            next_t = max(next_t + period, time.monotonic())
            self.stop.wait(max(0.0, next_t - time.monotonic()))

    def system1_loop(self) -> None:
        period = 1.0 / self.pc.system1_rate_hz
        next_t = time.monotonic()
        while not self.stop.is_set():
            self._hang_if_asked()
            with self.lock:
                anchored = self.plan
            got = self.observation()
            if anchored is None or got is None:
                time.sleep(0.005)
                continue
            obs, frames = got
            start = time.monotonic()
            if start - anchored.t_obs > self.max_plan_age_s:
                # System 2 has stopped delivering: refining an old plan forever would keep the
                # setpoints "fresh". Publish nothing; the control process's deadline trips.
                self.stop.wait(period)
                continue
            lead = self.s1_latency.p90()
            step = max(0, math.floor((start + lead - anchored.t_obs) / self.step_s))
            refined = self.policy.react(anchored.plan, step, obs, self.rng)
            chunk = anchored.plan.chunk
            tail = chunk[step + len(refined) :]
            points = np.concatenate([refined, tail]) if len(tail) else refined
            times = anchored.t_obs + (step + np.arange(len(points))) * self.step_s
            latency = time.monotonic() - start
            self._commit(times, points, freeze_s=lead)
            self.shm_policy.ready[0] = 1
            self.s1_latency.add(latency)
            self._ring("s1", (time.monotonic(), latency, time.monotonic() - frames.t_capture))
            next_t = max(next_t + period, time.monotonic())
            self.stop.wait(max(0.0, next_t - time.monotonic()))

    def heartbeat_loop(self) -> None:
        while not self.stop.wait(0.02):
            self.shm_policy.heartbeat_t[0] = time.monotonic()

    def _guarded(self, loop) -> None:
        """Keep a loop alive through errors; the control process's deadlines judge the result."""
        while not self.stop.is_set():
            try:
                loop()
                return
            except Exception:
                log.exception("%s failed; retrying", threading.current_thread().name)
                self.stop.wait(0.1)

    def run(self) -> None:
        self.shm_policy.pid[0] = os.getpid()
        self.shm_policy.heartbeat_t[0] = time.monotonic()
        started = []
        try:
            for cam in self.cameras:
                cam.start()
                started.append(cam)
        except EdgeVlaError as exc:
            # A camera that is not there (serial, recording) or cannot stream what is asked:
            # nothing has moved yet. Close what opened, so no device thread outlives us.
            log.error("cannot start the cameras: %s", exc)
            for cam in started:
                cam.stop()
            sys.stderr.flush()
            os._exit(EXIT_DEVICE_FAILED)
        threads = [
            threading.Thread(target=self.heartbeat_loop, name="heartbeat", daemon=True),
            threading.Thread(
                target=self._guarded, args=(self.capture_loop,), name="capture", daemon=True
            ),
            threading.Thread(
                target=self._guarded, args=(self.system2_loop,), name="system2", daemon=True
            ),
        ]
        if self.pc.system1_enabled:
            threads.append(
                threading.Thread(
                    target=self._guarded, args=(self.system1_loop,), name="system1", daemon=True
                )
            )
        for t in threads:
            t.start()
        parent = os.getppid()
        while not self.stop.wait(0.05):
            if os.getppid() != parent:
                log.error("the supervisor is gone; stopping")
                break
            if self.fault() is Fault.POLICY_CRASH:
                log.error("injected fault: policy-crash")
                os._exit(70)
            if self.cmd.shutdown[0] and int(self.shm_robot.control_state[0]) == 5:
                break
        self.stop.set()
        # Cameras own GL contexts: close them only once the capture thread has let go.
        for t in threads:
            t.join(timeout=2.0)
        if any(t.is_alive() for t in threads if t.name == "capture"):
            log.error("capture thread did not stop; leaving the cameras open")
            return
        for cam in self.cameras:
            cam.stop()


def policy_main(config: RuntimeConfig, layout: Layout) -> None:
    """Entry point of the policy process (spawned by the supervisor)."""
    from edgevla.runtime.backend import BackendConfig
    from edgevla.sim.hardware import make_sim_cameras

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when we stop
    if config.robot.control_cpus:
        others = set(os.sched_getaffinity(0)) - set(config.robot.control_cpus)
        if others:
            os.sched_setaffinity(0, others)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s policy %(levelname)s %(message)s")
    blocks = layout.attach(["trajectory", "robot", "policy", "command", "world"])
    policy = DualSystemPolicy.from_dir(
        config.policy.bundle, BackendConfig(intra_op_threads=config.policy.intra_op_threads)
    ).with_steering(config.policy.steer)
    image_size = policy.bundle.model.image_size
    if config.cameras.kind == "realsense":
        from edgevla.cameras.realsense.hardware import make_realsense_cameras

        cameras = make_realsense_cameras(config.cameras, image_size)
    else:
        cameras = make_sim_cameras(config, blocks["world"], image_size)
    runtime = PolicyRuntime(config, policy, cameras, blocks)
    try:
        runtime.run()
    finally:
        for block in blocks.values():
            block.close()
