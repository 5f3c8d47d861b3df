"""What System 2 may skip from one plan to the next: visual-token reuse and action reuse.

- **Visual-token reuse** (VLA-Cache). Bundles exported with `--reuse-tokens R` have a
  `prefix_reuse` graph that takes the previous prefix cache and recomputes R visual tokens
  (plus every text, state and value-query token). Which R: the `token_relevant` tokens the token
  selector scored highest on the last plan (the task needs them fresh), then the patches whose
  pixels changed most since their token was last computed. Every `token_refresh_every`-th plan
  is a full prefix pass, so tokens that did not change in pixels but attend to ones that did
  cannot drift for long.
- **Action reuse** (FlashVLA). When the last two computed plans kept nearly the same
  top-scored visual tokens (Jaccard overlap of their top `action_top_tokens`) and agreed on
  the steps they share (joint targets within `action_max_change_rad`), the next plan is not
  computed: the last computed plan is re-anchored to the new frame time (its rows shifted by
  the steps that have passed). At most `action_reuse_max` plans in a row are skipped.

All state is per episode: `PlanMemory.reset` at an episode start, and the memory drops itself
when the frame times show a gap (a camera that stalled and came back, frames older than the
last plan) or are unknown.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from edgevla.runtime.manifest import Reuse, TokenReuse
from edgevla.runtime.system2 import PlanResult, ReuseRequest

log = logging.getLogger(__name__)


def patch_pixels(images: np.ndarray, patch: int) -> np.ndarray:
    """uint8 [cameras, S, S, 3] → float32 [cameras · P, patch · patch · 3], in the order of the
    model's visual tokens (camera-major, then patch rows, then patch columns)."""
    c, s, _, ch = images.shape
    g = s // patch
    x = images.reshape(c, g, patch, g, patch, ch).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(c * g * g, patch * patch * ch).astype(np.float32)


def top_tokens(scores: np.ndarray, count: int) -> np.ndarray:
    return np.argsort(-scores, kind="stable")[:count]


def choose_recompute(
    relevant_scores: np.ndarray, change: np.ndarray, count: int, relevant: int
) -> np.ndarray:
    """The `count` visual tokens to recompute: the `relevant` best-scored, then the most
    changed of the rest. Ascending indices."""
    chosen = list(top_tokens(relevant_scores, min(relevant, count)))
    taken = set(chosen)
    for i in np.argsort(-change, kind="stable"):
        if len(chosen) == count:
            break
        if int(i) not in taken:
            chosen.append(int(i))
    return np.sort(np.asarray(chosen, dtype=np.int64))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = set(a.tolist()), set(b.tolist())
    return len(sa & sb) / max(1, len(sa | sb))


def shared_step_change(older: np.ndarray, newer: np.ndarray, shift: int, joints: int = 6) -> float:
    """Max joint disagreement (rad) of two chunks on the steps both cover; inf if none."""
    if shift >= len(older):
        return float("inf")
    overlap = len(older) - shift
    return float(np.max(np.abs(older[shift:, :joints] - newer[:overlap, :joints])))


def reanchor(rows: np.ndarray, shift: int) -> np.ndarray:
    """Rows from `shift` on, the last row held to keep the length ([..., H, A] arrays)."""
    if shift == 0:
        return rows.copy()
    held = np.repeat(rows[..., -1:, :], shift, axis=-2)
    return np.concatenate([rows[..., shift:, :], held], axis=-2)


@dataclass
class _Computed:
    t_s: float
    chunk: np.ndarray  # robot units [H, A]
    top: np.ndarray  # the top-scored visual tokens
    result: PlanResult


class PlanMemory:
    """Per-episode reuse state of one policy (used from one planning thread)."""

    def __init__(
        self,
        settings: Reuse,
        token_reuse: TokenReuse | None,
        patch_size: int,
        step_period_s: float,
    ) -> None:
        self.settings = settings
        self.token_reuse = token_reuse
        self.patch_size = patch_size
        self.step_period_s = step_period_s
        self.counts = {"full": 0, "tokens": 0, "action": 0, "resets": 0}
        self.reset()

    def reset(self) -> None:
        self._computed: list[_Computed] = []
        self._skipped = 0
        self._since_full = 0
        self._cache: PlanResult | None = None
        self._ref_patches: np.ndarray | None = None
        self._pixels = np.zeros(0)  # this frame's patch pixels, from token_reuse_request
        self._last_t: float | None = None

    def _drop(self, why: str) -> None:
        if self._computed or self._cache is not None:
            log.info("plan reuse state dropped: %s", why)
            self.counts["resets"] += 1
        self.reset()

    def begin(self, t_s: float | None) -> None:
        """A new plan is asked for at frame time `t_s`: drop the state across a gap."""
        if t_s is None:
            self._drop("frame time unknown")
            return
        if self._last_t is not None:
            gap = t_s - self._last_t
            if gap < 0:
                self._drop(f"frame time went back by {-gap:.3f} s")
            elif gap > self.settings.max_frame_gap_s:
                self._drop(f"{gap:.3f} s between planned frames")
        self._last_t = t_s

    # ------------------------------------------------------------------ action reuse

    def action_reuse_shift(self, t_s: float | None) -> int | None:
        """Steps to shift the last computed plan by, if this plan may be skipped."""
        s = self.settings
        if t_s is None or s.action_reuse_max == 0 or self._skipped >= s.action_reuse_max:
            return None
        if len(self._computed) < 2:
            return None
        older, newer = self._computed[-2], self._computed[-1]
        between = round((newer.t_s - older.t_s) / self.step_period_s)
        stable = (
            jaccard(older.top, newer.top) >= s.action_min_overlap
            and shared_step_change(older.chunk, newer.chunk, between) <= s.action_max_change_rad
        )
        shift = round((t_s - newer.t_s) / self.step_period_s)
        if not stable or not 0 <= shift < len(newer.chunk):
            return None
        return shift

    def reused_action(self, shift: int) -> tuple[np.ndarray, PlanResult]:
        """The last computed plan re-anchored `shift` steps later (robot units, result)."""
        last = self._computed[-1]
        result = last.result
        reused = PlanResult(
            candidates=reanchor(result.candidates, shift),
            q=result.q,
            q_critics=result.q_critics,
            chosen=result.chosen,
            token_scores=result.token_scores,
            timings_s={"prefix_s": 0.0, "denoise_s": 0.0, "value_s": 0.0, "total_s": 0.0},
            prefix=None,
            reused="action",
        )
        self._skipped += 1
        self.counts["action"] += 1
        return reanchor(last.chunk, shift), reused

    # ------------------------------------------------------------------ token reuse

    def token_reuse_request(self, images: np.ndarray) -> ReuseRequest | None:
        r = self.token_reuse
        if r is None or self._cache is None or self._cache.prefix is None:
            return None
        if self._since_full + 1 >= self.settings.token_refresh_every:
            return None
        assert self._ref_patches is not None
        self._pixels = patch_pixels(images, self.patch_size)  # `record` takes them from here
        change = np.abs(self._pixels - self._ref_patches).mean(axis=1)
        tokens = choose_recompute(
            self._cache.token_scores, change, r.recompute_tokens, self.settings.token_relevant
        )
        return ReuseRequest(cache=self._cache.prefix, recompute_tokens=tokens)

    # ------------------------------------------------------------------ bookkeeping

    def record(
        self,
        images: np.ndarray,
        t_s: float | None,
        chunk: np.ndarray,
        result: PlanResult,
        reuse: ReuseRequest | None,
    ) -> None:
        """A plan was computed (fully, or with reused tokens)."""
        self._skipped = 0
        if reuse is None:
            self.counts["full"] += 1
            self._since_full = 0
        else:
            self.counts["tokens"] += 1
            self._since_full += 1
        if self.token_reuse is not None:
            if reuse is None or self._ref_patches is None:
                self._ref_patches = patch_pixels(images, self.patch_size)
            else:  # the request of this plan computed this frame's pixels
                tokens = reuse.recompute_tokens
                self._ref_patches[tokens] = self._pixels[tokens]
            self._cache = result
        if t_s is not None:
            top = top_tokens(result.token_scores, self.settings.action_top_tokens)
            self._computed = [*self._computed[-1:], _Computed(t_s, chunk, top, result)]
