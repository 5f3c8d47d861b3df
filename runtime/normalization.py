"""Affine state/action normalisation with the statistics that travel in the bundle."""

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

    @classmethod
    def from_manifest(cls, stats: Normalization) -> Normalizer:
        def f32(values: list[float]) -> np.ndarray:
            return np.asarray(values, dtype=np.float32)

        return cls(
            f32(stats.state_mean),
            f32(stats.state_std),
            f32(stats.action_mean),
            f32(stats.action_std),
        )

    def normalize_state(self, state: np.ndarray) -> np.ndarray:
        state = np.asarray(state, dtype=np.float32)
        if state.shape != self.state_mean.shape:
            raise InferenceInputError(
                f"state has shape {state.shape}, the bundle expects {self.state_mean.shape}"
            )
        if not np.all(np.isfinite(state)):
            raise InferenceInputError(f"state contains NaN or Inf: {state.tolist()}")
        return (state - self.state_mean) / self.state_std

    def normalize_actions(self, actions: np.ndarray) -> np.ndarray:
        return ((np.asarray(actions, np.float32) - self.action_mean) / self.action_std).astype(
            np.float32
        )

    def unnormalize_actions(self, actions: np.ndarray) -> np.ndarray:
        return (np.asarray(actions, np.float32) * self.action_std + self.action_mean).astype(
            np.float32
        )
