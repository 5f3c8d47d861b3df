"""Affine state/action normalisation with the statistics that travel in the bundle.

System 2 sees absolute joint targets normalized by the demonstrations' spread over the whole
workspace. System 1 sees its slice as offsets from the current state, normalized per row by the
spread of a slice's own motion: re-noising to θ1 then perturbs the slice by a fraction of how far
the arm moves in it, at every pose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgevla.runtime.errors import InferenceInputError
from edgevla.runtime.manifest import Normalization


@dataclass(frozen=True)
class Normalizer:
    state_mean: np.ndarray
    state_std: np.ndarray
    action_mean: np.ndarray
    action_std: np.ndarray
    s1_delta_mean: np.ndarray | None = None  # [s1_horizon, A]
    s1_delta_std: np.ndarray | None = None

    @classmethod
    def from_manifest(cls, stats: Normalization) -> Normalizer:
        def f32(values: list[float] | list[list[float]] | None) -> np.ndarray | None:
            return None if values is None else np.asarray(values, dtype=np.float32)

        return cls(
            f32(stats.state_mean),  # type: ignore[arg-type]
            f32(stats.state_std),  # type: ignore[arg-type]
            f32(stats.action_mean),  # type: ignore[arg-type]
            f32(stats.action_std),  # type: ignore[arg-type]
            f32(stats.s1_delta_mean),
            f32(stats.s1_delta_std),
        )

    def _checked_state(self, state: np.ndarray) -> np.ndarray:
        state = np.asarray(state, dtype=np.float32)
        if state.shape != self.state_mean.shape:
            raise InferenceInputError(
                f"state has shape {state.shape}, the bundle expects {self.state_mean.shape}"
            )
        if not np.all(np.isfinite(state)):
            raise InferenceInputError(f"state contains NaN or Inf: {state.tolist()}")
        return state

    def normalize_state(self, state: np.ndarray) -> np.ndarray:
        return (self._checked_state(state) - self.state_mean) / self.state_std

    def normalize_actions(self, actions: np.ndarray) -> np.ndarray:
        return ((np.asarray(actions, np.float32) - self.action_mean) / self.action_std).astype(
            np.float32
        )

    def unnormalize_actions(self, actions: np.ndarray) -> np.ndarray:
        return (np.asarray(actions, np.float32) * self.action_std + self.action_mean).astype(
            np.float32
        )

    def _s1_stats(self) -> tuple[np.ndarray, np.ndarray]:
        if self.s1_delta_mean is None or self.s1_delta_std is None:
            raise InferenceInputError("these statistics have no System 1 offsets (s1_delta_*)")
        return self.s1_delta_mean, self.s1_delta_std

    def to_system1(self, rows: np.ndarray, state: np.ndarray) -> np.ndarray:
        """Absolute rows [h1, A] (robot units) → System 1's normalized offsets from `state`."""
        mean, std = self._s1_stats()
        offset = np.asarray(rows, np.float32) - self._checked_state(state)
        return ((offset - mean) / std).astype(np.float32)

    def from_system1(self, x: np.ndarray, state: np.ndarray) -> np.ndarray:
        """System 1's normalized offsets [h1, A] → absolute rows in robot units."""
        mean, std = self._s1_stats()
        return (np.asarray(x, np.float32) * std + mean + self._checked_state(state)).astype(
            np.float32
        )
