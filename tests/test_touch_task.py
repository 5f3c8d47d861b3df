"""The touch task, its scripted expert, demonstrations and the closed-loop episode runner."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgevla.runtime.kinematics import UR5E, ForwardKinematics, InverseKinematics
from edgevla.sim.demonstrations import DemoSettings, generate_demos
from edgevla.sim.demos import (
    ARRAYS,
    CARD,
    DatasetError,
    DemoSet,
    ValueSet,
    concat_demos,
    load_demos,
    load_values,
    save_demos,
    save_values,
)
from edgevla.sim.episode import EpisodeResult, EpisodeSettings, PlanEvent, run_episode
from edgevla.sim.evaluation import difference_interval, summarize, wilson_interval
from edgevla.sim.expert import ExpertAgent, ExpertPlan
from edgevla.sim.tasks import (
    HELD_OUT_SEED_BASE,
    Episode,
    Outcome,
    TaskMonitor,
    held_out_seeds,
    touch_episode,
    touch_target,
)
from edgevla.sim.value_rollouts import label_returns
from edgevla.sim.world import SimWorld

STEP_S = 0.05
EXPERT = EpisodeSettings(system1_enabled=False)


def test_an_episode_is_a_pure_function_of_its_seed() -> None:
    assert touch_episode(11) == touch_episode(11)
    targets = {touch_episode(seed).target for seed in range(30)}
    assert targets == {"red", "green", "blue"}
    ep = touch_episode(4)
    assert ep.instruction == f"touch the {ep.target} cube"
    assert np.abs(np.asarray(ep.initial_q) - np.asarray(touch_episode(5).initial_q)).max() > 0


def test_held_out_seeds_never_overlap_demonstration_seeds() -> None:
    seeds = held_out_seeds(0, 50)
    assert min(seeds) >= HELD_OUT_SEED_BASE
    assert len(set(seeds)) == 50


def test_inverse_kinematics_reaches_a_pose_forward_kinematics_confirms() -> None:
    ik = InverseKinematics(UR5E)
    fk = ForwardKinematics(UR5E)
    q_true = np.array([0.3, -1.4, 1.7, -1.9, -1.5, 0.2])
    pose = fk.flange_pose(q_true)
    seed = q_true + 0.1
    q, residual = ik.solve(pose[:3, 3], pose[:3, :3], seed)
    assert residual < 1e-6
    np.testing.assert_allclose(fk.flange_pose(q), pose, atol=1e-6)


def test_the_expert_solves_at_least_95_percent_of_20_seeded_episodes() -> None:
    results = [
        run_episode(ExpertAgent(8, STEP_S), touch_episode(seed), EXPERT, STEP_S)
        for seed in range(20)
    ]
    outcomes = [r.outcome for r in results]
    assert sum(o is Outcome.SUCCESS for o in outcomes) >= 19, outcomes
    assert all(r.trip is None for r in results)


def test_touching_another_cube_than_the_named_one_is_a_failure() -> None:
    episode = touch_episode(3)
    other = next(c for c in ("red", "green", "blue") if c != episode.target)
    # The expert is sent to `other` while the judge holds the instruction's target.
    misled = dataclasses.replace(episode, target=other)

    class Misled(ExpertAgent):
        def begin(self, _episode, robot) -> None:
            super().begin(misled, robot)

    result = run_episode(Misled(8, STEP_S), episode, EXPERT, STEP_S)
    assert result.outcome is Outcome.WRONG_OBJECT


class _Constant:
    """An agent whose every plan is one fixed chunk."""

    def __init__(self, row: np.ndarray) -> None:
        self.row = row

    def begin(self, episode: Episode, robot: object) -> None:
        pass

    def plan(self, obs, t_s: float) -> ExpertPlan:
        return ExpertPlan(np.tile(self.row, (8, 1)).astype(np.float32))

    def react(self, plan, step, obs, t_s):
        return None


def test_a_nan_chunk_trips_the_safety_filter_and_ends_the_episode() -> None:
    row = np.full(7, np.nan)
    result = run_episode(_Constant(row), touch_episode(0), EXPERT, STEP_S)
    assert result.outcome is Outcome.TRIP
    assert result.trip == "nan-setpoint"


def test_a_policy_that_holds_still_times_out() -> None:
    episode = touch_episode(0)
    row = np.append(episode.initial_q, 1.0)
    settings = dataclasses.replace(EXPERT, timeout_s=0.5)
    result = run_episode(_Constant(row), episode, settings, STEP_S)
    assert result.outcome is Outcome.TIMEOUT
    assert result.duration_s == pytest.approx(0.5)
    assert result.plans == 3  # at 0, 0.2 and 0.4 s


def test_demonstrations_are_reproducible_and_round_trip(tmp_path: Path) -> None:
    settings = DemoSettings()
    a = generate_demos([1, 2], settings)
    b = generate_demos([1, 2], settings)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.actions, b.actions)
    assert a.meta["expert_success_rate"] == 1.0
    assert a.images.shape[1:] == (2, 32, 32, 3)
    assert a.actions.shape[1:] == (settings.chunk_len, 7)
    # Each label starts where the arm is: the chunk's first row is the present.
    np.testing.assert_array_less(np.abs(a.actions[:, 0, :6] - a.state[:, :6]).max(), 0.35)
    save_demos(a, tmp_path / "d")
    c = load_demos(tmp_path / "d")
    np.testing.assert_array_equal(c.images, a.images)
    assert c.instructions == a.instructions
    assert c.instruction(0) == touch_episode(1).instruction


def test_paced_demonstrations_carry_the_word_and_move_at_its_pace() -> None:
    from edgevla.export.steering import chunk_speed

    demos = generate_demos(range(4), DemoSettings(paces=("slowly", "quickly")))
    speed = chunk_speed(demos.state, demos.actions, demos.step_period_s)
    by_word: dict[str, list[float]] = {"slowly": [], "quickly": []}
    for i in range(len(demos)):
        words = demos.instruction(i).split()
        assert touch_target(demos.instruction(i)) is not None and words[-1] in by_word
        by_word[words[-1]].append(float(speed[i]))
    slow, quick = np.mean(by_word["slowly"]), np.mean(by_word["quickly"])
    assert quick > 2.0 * slow, (slow, quick)  # the expert's cruise speed: 0.125 vs 0.4 m/s
    with pytest.raises(ValueError, match="unknown paces"):
        generate_demos([0], DemoSettings(paces=("briskly",)))


def test_a_broken_dataset_is_refused_with_the_reason(tmp_path: Path) -> None:
    demos = generate_demos([1], DemoSettings())
    good = tmp_path / "good"
    save_demos(demos, good)
    with pytest.raises(DatasetError, match="missing"):
        load_demos(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="format"):
        load_values(good)
    bad = tmp_path / "rows"
    shutil.copytree(good, bad)
    arrays = dict(np.load(bad / ARRAYS))
    arrays["state"] = arrays["state"][:-1]
    np.savez(bad / ARRAYS, **arrays)
    with pytest.raises(DatasetError, match="number of rows"):
        load_demos(bad)
    card = json.loads((good / CARD).read_text())
    card["instructions"] = []
    (bad / CARD).write_text(json.dumps(card))
    shutil.copy(good / ARRAYS, bad / ARRAYS)
    with pytest.raises(DatasetError, match="instruction"):
        load_demos(bad)


def test_value_labels_discount_the_time_to_success_and_zero_failures(tmp_path: Path) -> None:
    ep = touch_episode(0)
    obs = None
    events = [PlanEvent(t, obs, np.zeros((8, 7))) for t in (0.0, 0.4, 0.8)]  # type: ignore[arg-type]
    won = EpisodeResult(ep, Outcome.SUCCESS, 0.8, events=events)
    np.testing.assert_allclose(label_returns(won, 0.4, 0.9), [0.81, 0.9, 1.0], rtol=1e-6)
    lost = EpisodeResult(ep, Outcome.WRONG_OBJECT, 0.8, events=events)
    np.testing.assert_array_equal(label_returns(lost, 0.4, 0.9), [0.0, 0.0, 0.0])
    values = ValueSet(
        images=np.zeros((3, 2, 32, 32, 3), np.uint8),
        state=np.zeros((3, 7), np.float32),
        actions=np.zeros((3, 8, 7), np.float32),
        returns=label_returns(won, 0.4, 0.9),
        instruction_index=np.zeros(3, np.int16),
        episode=np.zeros(3, np.int32),
        instructions=[ep.instruction],
    )
    save_values(values, tmp_path / "v")
    np.testing.assert_array_equal(load_values(tmp_path / "v").returns, values.returns)


def test_wilson_interval_matches_reference_values() -> None:
    lo, hi = wilson_interval(40, 50)
    assert lo == pytest.approx(0.6696, abs=1e-4) and hi == pytest.approx(0.8876, abs=1e-4)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(0, 20)[1] > 0.1
    assert wilson_interval(20, 20)[1] == 1.0 and wilson_interval(20, 20)[0] < 0.9


def test_summary_counts_every_outcome() -> None:
    ep = touch_episode(0)
    results = [
        EpisodeResult(ep, Outcome.SUCCESS, 2.0),
        EpisodeResult(ep, Outcome.SUCCESS, 3.0),
        EpisodeResult(ep, Outcome.TIMEOUT, 8.0),
        EpisodeResult(ep, Outcome.TRIP, 1.0, trip="nan-setpoint"),
    ]
    summary = summarize(results)
    assert summary["success_rate"] == 0.5
    assert summary["outcomes"] == {"success": 2, "timeout": 1, "trip": 1}
    assert summary["trips"] == {"nan-setpoint": 1}
    assert summary["time_to_success_s"]["median"] == 2.5


def test_difference_interval_matches_newcombes_worked_example() -> None:
    # Newcombe (1998), Table II, example (a): 56/70 vs 48/80 → 0.2, CI (0.0524, 0.3339).
    d, lo, hi = difference_interval(56, 70, 48, 80)
    assert d == pytest.approx(0.2)
    assert lo == pytest.approx(0.0524, abs=2e-4) and hi == pytest.approx(0.3339, abs=2e-4)


def test_touch_instructions_name_their_target() -> None:
    assert touch_target("touch the red cube") == "red"
    assert touch_target("Touch the BLUE cube") == "blue"
    assert touch_target("push the red cube") is None
    assert touch_target("touch the red or blue cube") is None


def _cube_against_palm(world: SimWorld, colour: str) -> np.ndarray:
    """The world's qpos with the `colour` cube pushed up against the palm, under the flange."""
    qpos = world.data.qpos.copy()
    adr = world.cube_qpos[colour]
    qpos[adr : adr + 3] = world.flange_position() + np.array([0.0, 0.0, -0.065])
    return qpos


@pytest.mark.parametrize(
    ("moved", "expected"), [("red", Outcome.SUCCESS), ("blue", Outcome.WRONG_OBJECT)]
)
def test_the_run_task_monitor_judges_the_published_world_state(
    moved: str, expected: Outcome
) -> None:
    source = SimWorld(seed=0)
    qpos = _cube_against_palm(source, moved)
    monitor = TaskMonitor(SimWorld(seed=0), "red", "touch the red cube")
    untouched = source.data.qpos.copy()
    assert monitor.poll(lambda out: out.__setitem__(slice(None), untouched), 0.5) is Outcome.RUNNING
    assert monitor.poll(lambda out: out.__setitem__(slice(None), qpos), 1.25) is expected
    # The first outcome latches: a later state does not change it.
    assert monitor.poll(lambda out: out.__setitem__(slice(None), untouched), 2.0) is expected
    assert monitor.report()["t_s"] == 1.25


class _IdentityReflex(ExpertAgent):
    """System 1 that returns the plan's own rows: the System 1 path must then act like System 2."""

    def react(self, plan, step: int, obs, t_s: float) -> np.ndarray:
        rows = np.minimum(np.arange(step, step + 4), len(plan.chunk) - 1)
        return plan.chunk[rows]


def test_the_system1_path_commits_the_refined_rows_and_the_plan_tail() -> None:
    settings = dataclasses.replace(EXPERT, system1_enabled=True)
    for seed in (0, 1, 2):
        result = run_episode(_IdentityReflex(8, STEP_S), touch_episode(seed), settings, STEP_S)
        assert result.outcome is Outcome.SUCCESS, result.summary()
        assert result.reactions > 5 * result.plans


def test_validation_seeds_stay_apart_from_training_and_held_out_seeds() -> None:
    from edgevla.sim.tasks import VALIDATION_SEED_BASE, split_seeds

    assert split_seeds("held-out", 3, 2) == held_out_seeds(3, 2)
    validation = split_seeds("validation", 0, 50)
    assert validation[0] == VALIDATION_SEED_BASE and len(set(validation)) == 50
    assert max(validation) < HELD_OUT_SEED_BASE
    with pytest.raises(ValueError, match="held-out range"):
        split_seeds("validation", HELD_OUT_SEED_BASE - VALIDATION_SEED_BASE - 1, 2)
    with pytest.raises(ValueError, match="split must be one of"):
        split_seeds("train", 0, 1)


def _demo_set(instructions: list[str], index: list[int], seed: int, meta: dict) -> DemoSet:
    n = len(index)
    return DemoSet(
        images=np.full((n, 2, 8, 8, 3), seed % 255, np.uint8),
        state=np.full((n, 7), seed, np.float32),
        actions=np.full((n, 4, 7), seed, np.float32),
        instruction_index=np.array(index, np.int16),
        episode=np.full(n, seed, np.int32),
        step=np.arange(n, dtype=np.int32),
        instructions=instructions,
        step_period_s=STEP_S,
        meta=meta,
    )


def test_combined_sets_remap_instructions_and_keep_every_card() -> None:
    a = _demo_set(["touch the red cube", "touch the blue cube"], [0, 1, 1], 1, {"task": "touch"})
    b = _demo_set(["touch the green cube", "touch the red cube"], [1, 0], 2, {"task": "touch"})
    both = concat_demos([a, b])
    assert len(both) == 5 and both.meta["task"] == "touch"
    assert [both.instruction(i) for i in range(5)] == [
        "touch the red cube",
        "touch the blue cube",
        "touch the blue cube",
        "touch the red cube",
        "touch the green cube",
    ]
    assert both.meta["parts"] == [a.meta, b.meta]
    np.testing.assert_array_equal(both.episode, [1, 1, 1, 2, 2])
    other_rate = dataclasses.replace(b, step_period_s=0.1)
    with pytest.raises(DatasetError, match="step_period_s"):
        concat_demos([a, other_rate])
    other_chunk = dataclasses.replace(b, actions=np.zeros((2, 8, 7), np.float32))
    with pytest.raises(DatasetError, match="shapes"):
        concat_demos([a, other_chunk])


@pytest.fixture(scope="module")
def trained_n1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed checkpoint exported with one candidate."""
    from edgevla.export.bundle_writer import ExportOptions, export_bundle
    from edgevla.export.checkpoint import load_checkpoint

    checkpoint = Path(__file__).resolve().parent.parent / "checkpoints" / "touch-tiny"
    bundle = tmp_path_factory.mktemp("trained") / "n1"
    export_bundle(load_checkpoint(checkpoint), bundle, ExportOptions(candidates=1))
    return bundle


def test_a_worker_that_dies_ends_the_run_with_an_error_not_a_hang(trained_n1: Path) -> None:
    """The OOM killer (here: SIGKILL) takes a worker mid-run: the run raises, naming how far
    it got, instead of waiting forever for the lost episode."""
    import multiprocessing
    import os
    import signal

    from edgevla.sim.evaluation import EpisodeWorkerDied, run_policy_episodes

    def kill_a_worker(result: EpisodeResult) -> None:
        for child in multiprocessing.active_children():
            if child.name.startswith("SpawnProcess"):
                os.kill(child.pid, signal.SIGKILL)
                return

    settings = EpisodeSettings(timeout_s=0.5, system1_enabled=False)
    seeds = held_out_seeds(0, 8)
    with pytest.raises(EpisodeWorkerDied, match=r"died after \d of 8 episodes"):
        run_policy_episodes(trained_n1, seeds, settings, workers=2, on_episode=kill_a_worker)


def test_a_missing_bundle_is_refused_before_any_worker_starts(tmp_path: Path) -> None:
    from edgevla.runtime.errors import BundleFileMissing
    from edgevla.sim.evaluation import run_policy_episodes

    with pytest.raises(BundleFileMissing):
        run_policy_episodes(tmp_path / "nothing", [1], EpisodeSettings(), workers=2)


def test_dagger_labels_every_policy_plan_with_the_expert_from_that_state(
    tmp_path: Path, trained_n1: Path
) -> None:
    """Rows from a policy's own episode: frames and states the policy saw, labels the expert's
    chunk from each state (checked against a fresh expert), loadable as demonstrations."""
    from edgevla.sim.dagger import collect_dagger
    from edgevla.sim.expert import TouchExpert
    from edgevla.sim.scene import cube_layout

    bundle = trained_n1
    settings = EpisodeSettings(timeout_s=1.0)  # 5 plans at 5 Hz, System 1 on
    rows = collect_dagger(bundle, [300_000], settings)
    assert rows.meta["source"] == "dagger" and rows.meta["episodes_kept"] == 1
    assert len(rows) == 5 and rows.actions.shape == (5, 8, 7)
    assert rows.images.dtype == np.uint8 and rows.images.shape[1:] == (2, 32, 32, 3)
    np.testing.assert_array_equal(rows.step, [0, 4, 8, 12, 16])  # 0.2 s apart, 0.05 s steps
    episode = touch_episode(300_000)
    expert = TouchExpert(np.asarray(cube_layout(300_000)[episode.target]), 8, STEP_S)
    for state, label in zip(rows.state, rows.actions, strict=True):
        np.testing.assert_allclose(label, expert.plan(state), atol=1e-6)
    # The states are the policy's: they move, and the expert's label is not the state held.
    assert np.abs(rows.state[-1, :6] - rows.state[0, :6]).max() > 0.01
    assert np.abs(rows.actions[:, -1, :6] - rows.state[:, :6]).max() > 0.01
    save_demos(rows, tmp_path / "dagger")
    assert len(load_demos(tmp_path / "dagger")) == 5

    # The command: the same rows on disk, with the rolled-out policy's making recorded.
    from edgevla.cli import main

    argv = ["demos", "dagger", "--bundle", str(bundle), "--out", str(tmp_path / "cli")]
    assert (
        main([*argv, "--episodes", "1", "--seed", "300000", "--timeout", "1", "--workers", "1"])
        == 0
    )
    written = load_demos(tmp_path / "cli")
    np.testing.assert_array_equal(written.actions, rows.actions)
    assert "behaviour_cloning" in written.meta["policy_origin"]
    assert main([*argv, "--episodes", "1", "--seed", str(HELD_OUT_SEED_BASE)]) == 1
