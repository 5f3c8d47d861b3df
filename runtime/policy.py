"""The dual-system policy as the robot sees it: observations in, joint-space chunks out.

A thin layer over the pure System 2 / System 1 functions that owns the bundle's tokenizer,
normalisation and sampling defaults, and checks every observation before it reaches a graph.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np

from edgevla.runtime import system1, system2
from edgevla.runtime.backend import BackendConfig, InferenceBackend, OnnxRuntimeBackend
from edgevla.runtime.bundle import Bundle, load_bundle, verify_files
from edgevla.runtime.errors import InferenceInputError, InvalidSetting
from edgevla.runtime.expert_cache import ExpertSchedule
from edgevla.runtime.manifest import Reuse, Sampling, validate_reuse, validate_sampling
from edgevla.runtime.normalization import Normalizer
from edgevla.runtime.reuse import PlanMemory
from edgevla.runtime.steering import steering_inputs
from edgevla.runtime.tokenizer import InstructionTokenizer


@dataclass(frozen=True)
class Observation:
    images: np.ndarray  # uint8 [cameras, S, S, 3], RGB
    state: np.ndarray  # [state_dim]: joint positions (rad) and gripper opening
    instruction: str
    # When the frames were captured (host monotonic or simulated seconds). Token and action
    # reuse need it to see gaps and elapsed steps; without it every plan is computed in full.
    t_s: float | None = None


@dataclass(frozen=True)
class Plan:
    """A System 2 plan in the robot's units, with the normalized result kept for System 1."""

    chunk: np.ndarray  # float32 [H, A], absolute joint targets + gripper
    result: system2.PlanResult


class DualSystemPolicy:
    def __init__(
        self,
        bundle: Bundle,
        backend: InferenceBackend | None = None,
        sampling: Sampling | None = None,
        reuse: Reuse | None = None,
        steer: Mapping[str, float] | None = None,
    ) -> None:
        self.bundle = bundle
        self.sampling = sampling or bundle.manifest.sampling
        validate_sampling(self.sampling)
        self.expert_schedule = ExpertSchedule.from_sampling(self.sampling)
        self.reuse = reuse or bundle.manifest.reuse
        validate_reuse(self.reuse, bundle.model.num_visual_tokens)
        self.steer = dict(steer or {})
        self.steering = steering_inputs(
            bundle.model, bundle.manifest.optimizations.steering, self.steer
        )
        self.memory = PlanMemory(
            self.reuse,
            bundle.manifest.optimizations.token_reuse,
            bundle.model.patch_size,
            bundle.manifest.action_space.step_period_s,
        )
        if self.sampling.candidates != bundle.candidates:
            raise InvalidSetting(
                "sampling.candidates",
                f"the bundle's graphs take {bundle.candidates} candidates, "
                f"sampling asks for {self.sampling.candidates} (another N needs another export)",
            )
        self.backend = backend if backend is not None else OnnxRuntimeBackend.from_bundle(bundle)
        self.normalizer = Normalizer.from_manifest(bundle.manifest.normalization)
        self.tokenizer = InstructionTokenizer.from_file(
            bundle.tokenizer_path, bundle.model.max_instruction_tokens
        )
        # The tokenizer was read after load_bundle hashed it; refuse one swapped in between.
        verify_files(bundle, [bundle.manifest.tokenizer.file])

    @classmethod
    def from_dir(cls, path: str | Path, config: BackendConfig | None = None) -> DualSystemPolicy:
        bundle = load_bundle(path)
        return cls(bundle, OnnxRuntimeBackend.from_bundle(bundle, config))

    def with_sampling(self, **changes: float | int) -> DualSystemPolicy:
        """The same bundle and backend with other sampling settings, checked like the bundle's
        (fresh reuse state)."""
        sampling = msgspec.structs.replace(self.sampling, **changes)
        return DualSystemPolicy(self.bundle, self.backend, sampling, self.reuse, self.steer)

    def with_reuse(self, **changes: float | int) -> DualSystemPolicy:
        """The same bundle and backend with other reuse settings (fresh reuse state)."""
        reuse = msgspec.structs.replace(self.reuse, **changes)
        return DualSystemPolicy(self.bundle, self.backend, self.sampling, reuse, self.steer)

    def with_steering(self, steer: Mapping[str, float]) -> DualSystemPolicy:
        """The same bundle and backend steered by `steer` (direction name → alpha)."""
        return DualSystemPolicy(self.bundle, self.backend, self.sampling, self.reuse, steer)

    def reset(self) -> None:
        """A new episode: forget every reused token and plan."""
        self.memory.reset()

    def _images(self, images: np.ndarray) -> np.ndarray:
        cfg = self.bundle.model
        want = (cfg.num_cameras, cfg.image_size, cfg.image_size, 3)
        images = np.asarray(images)
        if images.shape != want or images.dtype != np.uint8:
            raise InferenceInputError(
                f"images are {images.dtype}{list(images.shape)}, "
                f"the bundle expects uint8{list(want)}"
            )
        return np.ascontiguousarray(images[None])

    def prefix_inputs(self, obs: Observation) -> system2.PrefixInputs:
        ids, mask = self.tokenizer.encode(obs.instruction)
        return system2.PrefixInputs(
            images=self._images(obs.images),
            instruction_ids=ids,
            instruction_mask=mask,
            state=self.normalizer.normalize_state(obs.state)[None],
            keep_mask=self.steering.keep_mask,
            steer_bias=self.steering.steer_bias,
        )

    def plan(self, obs: Observation, rng: np.random.Generator) -> Plan:
        """A System 2 plan for `obs`, or the last one re-anchored when action reuse allows.

        The noise is drawn whether or not the plan is computed, so that reuse settings do not
        change the noise of later plans.
        """
        s, cfg = self.sampling, self.bundle.model
        noise = system2.sample_noise(
            rng, (s.candidates, cfg.chunk_len, cfg.action_dim), s.noise_temperature
        )
        inputs = self.prefix_inputs(obs)
        memory = self.memory
        memory.begin(obs.t_s)
        shift = memory.action_reuse_shift(obs.t_s)
        if shift is not None:
            chunk, reused = memory.reused_action(shift)
            return Plan(chunk=chunk, result=reused)
        starts = system2.candidate_start_times(s.candidates, s.start_time_min, s.start_time_max)
        reuse = memory.token_reuse_request(inputs.images[0])
        result = system2.plan(
            self.backend,
            inputs,
            noise,
            starts,
            s.denoise_steps,
            self.expert_schedule,
            reuse,
            self.steering.expert_bias,
        )
        chunk = self.normalizer.unnormalize_actions(result.chunk)
        memory.record(inputs.images[0], obs.t_s, chunk, result, reuse)
        return Plan(chunk=chunk, result=result)

    def react(
        self, plan: Plan, start_step: int, obs: Observation, rng: np.random.Generator
    ) -> np.ndarray:
        """System 1: the refined [s1_horizon, A] slice of `plan` from `start_step`, robot units."""
        cfg = self.bundle.model
        rows = system1.plan_slice(plan.chunk, start_step, cfg.s1_horizon)
        slice_ = self.normalizer.to_system1(rows, obs.state)
        noise = system2.sample_noise(rng, slice_.shape)
        refined = system1.react(
            self.backend,
            self._images(obs.images),
            self.normalizer.normalize_state(obs.state)[None],
            slice_,
            noise,
            self.sampling.s1_theta,
            self.sampling.s1_steps,
        )
        return self.normalizer.from_system1(refined, obs.state)
