"""System 1: cascaded denoising of the plan slice for "now" (pure functions over a backend).

The slice of the chosen chunk that covers the next `s1_horizon` steps is re-noised to θ1 and
denoised from θ1 to 0 conditioned on the newest frame and state (Hume's cascaded denoising).
The slice arrives in System 1's own units (`Normalizer.to_system1`: each row's offset from the
current state, normalized by the spread of a slice's motion), so θ1 is a fraction of the motion
being refined, not of the workspace.
"""

from __future__ import annotations

import numpy as np

from edgevla.runtime.backend import InferenceBackend
from edgevla.runtime.system2 import require_finite


def plan_slice(chunk: np.ndarray, start_step: int, length: int) -> np.ndarray:
    """Rows [start_step, start_step + length) of a chunk, holding the last row past its end."""
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    last = chunk.shape[0] - 1
    rows = np.minimum(np.arange(start_step, start_step + length), last)
    return chunk[rows].astype(np.float32)


def renoise(slice_: np.ndarray, noise: np.ndarray, theta1: float) -> np.ndarray:
    return (theta1 * noise + (1.0 - theta1) * slice_).astype(np.float32)


def react(
    backend: InferenceBackend,
    images: np.ndarray,
    state: np.ndarray,
    slice_: np.ndarray,
    noise: np.ndarray,
    theta1: float,
    steps: int,
) -> np.ndarray:
    """Refine a plan slice [h1, A] in System 1's units from the newest frame and normalized
    state [1, S]; the result is in the same units."""
    x = renoise(slice_, noise, theta1)[None]
    dt = np.float32(theta1 / steps)
    for k in range(steps):
        t = np.array([theta1 * (1.0 - k / steps)], dtype=np.float32)
        out = backend.run(
            "system1", {"images": images, "state": state, "noisy_actions": x, "time": t}
        )
        velocity = out["velocity"]
        require_finite("system1", "velocity", velocity, f", Euler step {k + 1} of {steps}")
        x -= dt * velocity.astype(np.float32)
    return x[0]
