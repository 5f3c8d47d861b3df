"""Closed-loop episodes in simulated time: the runtime's planning, stitching and safety filter,
stepped in lockstep with the physics instead of on the host clock.

What runs is the robot-time code itself — `DualSystemPolicy.plan/react` on the bundle's
onnxruntime graphs, `CommittedTrajectory.stitch`, `SafetyFilter.step` at the controller's period,
`SimRobot.servo`, `SimCamera` frames at the camera rate — but time is a counter, so an episode
runs as fast as the machine allows and the same seed gives the same episode. Inference latency
is modelled: a plan observed at t reaches the trajectory at t + latency and is frozen for the
latency after that, as the policy process does with its measured latency. `edgevla run` is the
real-time path; this is the measurement path (success rates, demonstrations, value rollouts).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from edgevla.runtime.config import LimitsConfig
from edgevla.runtime.devices import RobotState
from edgevla.runtime.kinematics import UR5E, ForwardKinematics, RobotModel
from edgevla.runtime.policy import Observation
from edgevla.runtime.safety_filter import SafetyFilter, Trip
from edgevla.runtime.stitching import CommittedTrajectory
from edgevla.sim.camera import SimCamera
from edgevla.sim.clock import SimClock
from edgevla.sim.robot import SimRobot
from edgevla.sim.tasks import Episode, Outcome, TouchJudge

_JUDGE_EVERY_S = 0.01


@dataclass(frozen=True)
class EpisodeSettings:
    """How an episode is run: rates, latencies, limits (defaults: the runtime's defaults)."""

    timeout_s: float = 8.0
    image_size: int = 32
    cameras: tuple[str, ...] = ("scene", "wrist")
    camera_fps: float = 30.0
    system2_rate_hz: float = 5.0
    system1_rate_hz: float = 50.0
    system1_enabled: bool = True
    # Modelled inference latencies; None uses the measured wall-clock time of each call.
    system2_latency_s: float | None = 0.1
    system1_latency_s: float | None = 0.02
    crossfade_s: float = 0.1
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    robot: RobotModel = UR5E


class AgentPlan(Protocol):
    chunk: np.ndarray  # [H, 7] in robot units; row 0 belongs to the observation time


class Agent(Protocol):
    """Whatever chooses actions: the scripted expert or the exported policy."""

    def begin(self, episode: Episode, robot: SimRobot) -> None:
        """A new episode starts (the robot and its world are already reset)."""

    def plan(self, obs: Observation, t_s: float) -> AgentPlan:
        """System 2: a plan from this observation."""

    def react(self, plan: AgentPlan, step: int, obs: Observation, t_s: float) -> np.ndarray | None:
        """System 1: refined rows [step, step + h1) of `plan` from this observation, or None."""


@dataclass
class PlanEvent:
    """One System 2 plan: its observation and the chunk that was committed."""

    t_s: float
    obs: Observation
    chunk: np.ndarray


@dataclass
class EpisodeResult:
    episode: Episode
    outcome: Outcome
    duration_s: float  # simulated seconds until the outcome
    trip: str | None = None
    plans: int = 0
    reactions: int = 0
    wall_s: float = 0.0
    plan_wall_s: float = 0.0  # host time spent in agent.plan, all plans together
    events: list[PlanEvent] = field(default_factory=list)
    frames: list[np.ndarray] = field(default_factory=list)  # scene frames, when recorded

    @property
    def success(self) -> bool:
        return self.outcome is Outcome.SUCCESS

    def summary(self) -> dict[str, object]:
        return {
            "seed": self.episode.seed,
            "instruction": self.episode.instruction,
            "outcome": self.outcome.value,
            "success": self.success,
            "time_s": round(self.duration_s, 3),
            "trip": self.trip,
            "plans": self.plans,
            "reactions": self.reactions,
            "wall_s": round(self.wall_s, 3),
            "plan_ms_mean": round(1e3 * self.plan_wall_s / max(1, self.plans), 3),
        }


@dataclass
class _Pending:
    due_s: float
    times: np.ndarray
    points: np.ndarray
    freeze_s: float


def run_episode(
    agent: Agent,
    episode: Episode,
    settings: EpisodeSettings | None = None,
    step_period_s: float = 0.05,
    *,
    keep_events: bool = False,
    record_every: int = 0,
    record_size: int = 128,
    on_plan: Callable[[PlanEvent], np.ndarray | None] | None = None,
) -> EpisodeResult:
    """Run one episode to its outcome.

    `on_plan` may return another chunk to execute in place of the plan (noise injection for
    demonstrations); `record_every` > 0 keeps every n-th camera frame time's view of the scene
    camera, rendered at `record_size` pixels by a camera of its own, for a contact sheet.
    """
    s = settings or EpisodeSettings()
    wall_start = time.perf_counter()
    clock = SimClock()
    robot = SimRobot(seed=episode.scene_seed, image_size=s.image_size, robot=s.robot, clock=clock)
    robot.reset(np.asarray(episode.initial_q), episode.initial_gripper)
    cameras = [
        SimCamera(
            name,
            name,
            robot.world_state,
            fps=s.camera_fps,
            image_size=s.image_size,
            seed=episode.scene_seed,
            robot=s.robot,
            clock=clock,
            sleep=lambda _s: None,
        )
        for name in s.cameras
    ]
    recorder = None
    if record_every:
        recorder = SimCamera(
            "record",
            "scene",
            robot.world_state,
            fps=s.camera_fps,
            image_size=record_size,
            seed=episode.scene_seed,
            robot=s.robot,
            clock=clock,
            sleep=lambda _s: None,
        )
        cameras_and_recorder = [*cameras, recorder]
    else:
        cameras_and_recorder = cameras
    judge = TouchJudge(robot.world, episode.target)
    period = robot.period_s
    fk = ForwardKinematics(s.robot)
    safety = SafetyFilter(s.limits, period, fk)
    state = RobotState()
    robot.read_state(state)
    trip = safety.reset(state.q, state.gripper)
    result = EpisodeResult(episode, Outcome.RUNNING, 0.0)
    if trip is not Trip.NONE:
        robot.close()
        result.outcome, result.trip = Outcome.TRIP, trip.label
        return result
    committed = CommittedTrajectory()
    committed.hold(0.0, np.concatenate([state.q, [state.gripper]]))
    target = np.zeros(7)
    pending: list[_Pending] = []
    images: np.ndarray | None = None
    t_frame = 0.0
    anchor_t: float | None = None
    active: AgentPlan | None = None
    # Plans wait here until their latency has passed; then System 1 refines them.
    plans_due: list[tuple[float, AgentPlan, float]] = []
    s2_period = 1.0 / s.system2_rate_hz
    s1_period = 1.0 / s.system1_rate_hz
    next_frame = next_s2 = next_s1 = next_judge = 0.0
    tick_eps = period * 1e-3
    agent.begin(episode, robot)
    try:
        for cam in cameras_and_recorder:
            cam.start()
        steps = round(s.timeout_s / period)
        for i in range(steps):
            t = i * period
            clock.t_s = t
            if t + tick_eps >= next_frame:
                frames = [cam.read(timeout_s=1.0) for cam in cameras]
                images = np.stack([f.image for f in frames])
                t_frame = t
                next_frame += 1.0 / s.camera_fps
                if recorder is not None and round(t * s.camera_fps) % record_every == 0:
                    result.frames.append(recorder.read(timeout_s=1.0).image.copy())
            robot.read_state(state)
            if images is not None and t + tick_eps >= next_s2:
                next_s2 += s2_period
                obs = Observation(
                    images, np.append(state.q, state.gripper), episode.instruction, t_s=t_frame
                )
                begin = time.perf_counter()
                plan = agent.plan(obs, t)
                result.plan_wall_s += time.perf_counter() - begin
                latency = _latency(s.system2_latency_s, begin)
                event = PlanEvent(t_frame, obs, plan.chunk)
                chunk = plan.chunk
                if on_plan is not None:
                    replaced = on_plan(event)
                    chunk = chunk if replaced is None else replaced
                result.plans += 1
                if keep_events:
                    result.events.append(event)
                if s.system1_enabled:
                    plans_due.append((t + latency, plan, t_frame))
                else:
                    times = t_frame + np.arange(len(chunk)) * step_period_s
                    pending.append(_Pending(t + latency, times, chunk, latency))
            while plans_due and plans_due[0][0] <= t + tick_eps:
                _, active, anchor_t = plans_due.pop(0)
            if (
                s.system1_enabled
                and active is not None
                and anchor_t is not None
                and images is not None
                and t + tick_eps >= next_s1
            ):
                next_s1 += s1_period
                lead = s.system1_latency_s if s.system1_latency_s is not None else s1_period
                step = max(0, math.floor((t + lead - anchor_t) / step_period_s + 1e-9))
                obs = Observation(images, np.append(state.q, state.gripper), episode.instruction)
                begin = time.perf_counter()
                refined = agent.react(active, step, obs, t)
                latency = _latency(s.system1_latency_s, begin)
                if refined is not None:
                    result.reactions += 1
                    # As the policy process does: the refined rows, then the plan's own tail.
                    tail = active.chunk[step + len(refined) :]
                    points = np.concatenate([refined, tail]) if len(tail) else refined
                    times = anchor_t + (step + np.arange(len(points))) * step_period_s
                    pending.append(_Pending(t + latency, times, points, latency))
            while pending and pending[0].due_s <= t + tick_eps:
                p = pending.pop(0)
                committed.stitch(p.times, p.points, t, p.freeze_s, s.crossfade_s)
            committed.sample(t, target)
            trip = safety.step(target[:6], float(target[6]))
            if trip is not Trip.NONE:
                result.outcome, result.trip = Outcome.TRIP, trip.label
                result.duration_s = t
                break
            robot.servo(safety.q, safety.gripper)
            if t + tick_eps >= next_judge:
                next_judge += _JUDGE_EVERY_S
                outcome = judge.judge()
                if outcome is not Outcome.RUNNING:
                    result.outcome, result.duration_s = outcome, t
                    break
        else:
            result.outcome, result.duration_s = Outcome.TIMEOUT, s.timeout_s
    finally:
        for cam in cameras_and_recorder:
            cam.stop()
        robot.close()
    result.wall_s = time.perf_counter() - wall_start
    return result


def _latency(fixed: float | None, begin: float) -> float:
    return fixed if fixed is not None else time.perf_counter() - begin
