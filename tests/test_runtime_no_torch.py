"""The robot side never imports torch: checked in a fresh interpreter that forbids it."""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import edgevla.calibration
import edgevla.cameras
import edgevla.firmware_bridge
import edgevla.robots
import edgevla.runtime
import edgevla.systemd

# Any attempt to import torch fails loudly and is remembered, even if the caller catches it.
_GUARD = """
import importlib.abc, sys
attempts = []
class ForbidTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            attempts.append(name)
            raise ImportError("torch is forbidden on the robot side")
        return None
sys.meta_path.insert(0, ForbidTorch())
"""


def _run(body: str) -> subprocess.CompletedProcess[str]:
    code = _GUARD + body + "\nassert not attempts, attempts\nassert 'torch' not in sys.modules\n"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )


def test_every_runtime_module_imports_without_torch() -> None:
    names = [m.name for m in pkgutil.walk_packages(edgevla.runtime.__path__, "edgevla.runtime.")]
    assert "edgevla.runtime.system2" in names and "edgevla.runtime.backend" in names
    # The device drivers run on the robot too (the RealSense recorder imports the simulator
    # only inside the function that renders).
    # So does the service's side (the safe stop runs after every exit of the service).
    packages = (
        edgevla.cameras,
        edgevla.robots,
        edgevla.firmware_bridge,
        edgevla.calibration,
        edgevla.systemd,
    )
    for package in packages:
        prefix = package.__name__ + "."
        names += [m.name for m in pkgutil.walk_packages(package.__path__, prefix)]
    assert "edgevla.cameras.realsense.camera" in names
    assert "edgevla.systemd.safe_stop" in names and "edgevla.runtime.sd_notify" in names
    result = _run(
        "import importlib\n"
        + "".join(f"importlib.import_module({n!r})\n" for n in names)
        + "import edgevla.cli\n"
    )
    assert result.returncode == 0, result.stderr


def test_a_plan_from_a_bundle_runs_without_torch(tiny_bundle: Path) -> None:
    result = _run(f"""
import numpy as np
from edgevla.runtime.policy import DualSystemPolicy, Observation
policy = DualSystemPolicy.from_dir({str(tiny_bundle)!r})
cfg = policy.bundle.model
obs = Observation(np.zeros((cfg.num_cameras, cfg.image_size, cfg.image_size, 3), np.uint8),
                  np.zeros(cfg.state_dim, np.float32), "touch the red cube")
plan = policy.plan(obs, np.random.default_rng(0))
refined = policy.react(plan, 0, obs, np.random.default_rng(1))
print("chunk", plan.chunk.shape, "refined", refined.shape)
""")
    assert result.returncode == 0, result.stderr
    assert "chunk (8, 7) refined (4, 7)" in result.stdout


def test_bundle_commands_run_without_torch(tiny_bundle: Path) -> None:
    result = _run(f"""
from edgevla.cli import main
for argv in (["bundle", "verify", {str(tiny_bundle)!r}], ["bundle", "info", {str(tiny_bundle)!r}]):
    assert main(argv) == 0, argv
""")
    assert result.returncode == 0, result.stderr


def test_the_guard_itself_catches_torch() -> None:
    """The check above must be able to fail: importing the export side trips it."""
    result = _run("import edgevla.export.reference\n")
    assert result.returncode != 0
    assert "torch is forbidden" in result.stderr
