"""Named model configs: `tiny` for tests, `small` for CPU benchmarks, `pi0-scale` for sizes."""

from __future__ import annotations

from edgevla.runtime.errors import ConfigError
from edgevla.runtime.model_config import ModelConfig

# UR5e: six joint positions (rad) and a gripper opening in [0, 1].
_UR5E = {"state_dim": 7, "action_dim": 7}

# fmt: off
CONFIGS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        name="tiny", num_cameras=2, image_size=32, patch_size=4, chunk_len=8,
        max_instruction_tokens=12, vocab_size=128,
        vit_width=32, vit_depth=1, vit_heads=2, vit_mlp_dim=64,
        d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, ffn_dim=128,
        expert_width=32, expert_ffn_dim=64, value_horizon=4, value_hidden=64,
        s1_horizon=4, s1_width=32, s1_depth=1, s1_heads=2, **_UR5E,
    ),
    # Proportions follow pi0 so that CPU timings rank design choices as they rank at full size:
    # a prefix of a few hundred tokens, Gemma's 8×d_model FFN, an action expert of half the
    # width with a 4× FFN over a chunk of ~5 % of the prefix length, a ViT ~10 % of prefix FLOPs.
    "small": ModelConfig(
        name="small", num_cameras=2, image_size=96, patch_size=8, chunk_len=16,
        max_instruction_tokens=24, vocab_size=256,
        vit_width=192, vit_depth=4, vit_heads=6, vit_mlp_dim=768,
        d_model=384, n_layers=6, n_heads=8, n_kv_heads=2, head_dim=48, ffn_dim=3072,
        expert_width=192, expert_ffn_dim=768, value_horizon=8, value_hidden=256,
        s1_horizon=8, s1_width=128, s1_depth=2, s1_heads=4, **_UR5E,
    ),
    # PaliGemma-sized backbone (SigLIP So400m + Gemma 2B) with pi0's 300M action expert and
    # 50-step chunks, three cameras. For shapes and FLOP estimates, not for running on a CPU.
    "pi0-scale": ModelConfig(
        name="pi0-scale", num_cameras=3, image_size=224, patch_size=14, chunk_len=50,
        max_instruction_tokens=48, vocab_size=257_152,
        vit_width=1152, vit_depth=27, vit_heads=16, vit_mlp_dim=4304,
        d_model=2048, n_layers=18, n_heads=8, n_kv_heads=1, head_dim=256, ffn_dim=16_384,
        expert_width=1024, expert_ffn_dim=4096, value_horizon=10, value_hidden=1024,
        s1_horizon=10, s1_width=512, s1_depth=4, s1_heads=8, **_UR5E,
    ),
}
# fmt: on


def get_config(name: str) -> ModelConfig:
    try:
        return CONFIGS[name]
    except KeyError:
        raise ConfigError(f"unknown model config {name!r}; choose from {sorted(CONFIGS)}") from None
