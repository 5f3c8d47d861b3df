"""Shared fixtures: one tiny bundle per precision, exported once per test session; the root
logger restored after every test."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from edgevla.export.bundle_writer import ExportOptions, export_bundle
from edgevla.export.checkpoint import ReferencePolicy, init_policy
from edgevla.export.configs import get_config
from edgevla.runtime.manifest import MANIFEST_NAME

TINY_SEED = 7
CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "touch-tiny"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """`edgevla.cli.main()` reconfigures the root logger onto the calling test's captured
    stderr; undo that, so later tests do not log into a closed stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hil", "hardware-in-the-loop tests (tests/hil, docs/hil.md)")
    group.addoption(
        "--ur-host",
        default=None,
        metavar="IP",
        help="a real UR controller or URSim to run tests/hil against (or UR_HOST)",
    )
    group.addoption(
        "--realsense-serial",
        default=None,
        metavar="SN",
        help="a connected RealSense to run tests/hil against (or REALSENSE_SERIAL)",
    )
    group.addoption(
        "--mcu-port",
        default=None,
        metavar="PORT",
        help="a safety MCU running the edgevla firmware, for tests/hil (or MCU_PORT)",
    )


@pytest.fixture(scope="session")
def tiny_policy() -> ReferencePolicy:
    return init_policy(get_config("tiny"), TINY_SEED)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_policy: ReferencePolicy, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only reference bundle (fp32, N=5). Copy it before tampering: see `bundle_copy`."""
    out = tmp_path_factory.mktemp("bundles") / "tiny-fp32"
    export_bundle(tiny_policy, out, ExportOptions(precision="fp32", candidates=5))
    return out


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed, trained checkpoint (fp32, N=5). Runs that must not end on a safety trip
    use it: the untrained tiny policy drives at full speed wherever its weights point, and on a
    slow machine it reaches the workspace wall within seconds."""
    from edgevla.export.checkpoint import load_checkpoint

    out = tmp_path_factory.mktemp("trained") / "bundle"
    export_bundle(load_checkpoint(CHECKPOINT), out, ExportOptions(candidates=5))
    return out


@pytest.fixture(scope="session")
def tiny_bundle_fp16(
    tiny_policy: ReferencePolicy, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "tiny-fp16"
    export_bundle(tiny_policy, out, ExportOptions(precision="fp16", candidates=5))
    return out


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny bundle that a test may corrupt."""
    dest = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dest)
    return dest


@pytest.fixture
def edited_bundle(tmp_path: Path) -> Callable[[Path, Callable[[dict], object]], Path]:
    """`edited_bundle(src, edit)`: a private copy of bundle `src` whose manifest (a dict) `edit`
    has changed in place."""

    def make(src: Path, edit: Callable[[dict], object]) -> Path:
        dest = tmp_path / "edited"
        shutil.copytree(src, dest)
        path = dest / MANIFEST_NAME
        manifest = json.loads(path.read_text())
        edit(manifest)
        path.write_text(json.dumps(manifest))
        return dest

    return make


def _first_frames(seed: int, size: int) -> np.ndarray:
    from edgevla.sim.camera import start_frames
    from edgevla.sim.tasks import touch_episode

    return start_frames(touch_episode(seed), size)


@pytest.fixture(scope="session")
def first_frames() -> Callable[[int, int], np.ndarray]:
    """`first_frames(seed, size)`: both cameras' views at the start of a touch episode."""
    return _first_frames
