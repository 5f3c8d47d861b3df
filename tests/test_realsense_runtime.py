"""`edgevla run` on recorded RealSense cameras: the policy process plays .db3 recordings through
`rs.pipeline` with the same driver a live camera uses; a recording that ends or stalls is a
camera trip, and the report says what the capture cost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pyrealsense2", reason="pyrealsense2 is not installed (the realsense extra)")

from edgevla.cameras.realsense.recording import StreamSpec, record_sim
from edgevla.runtime.config import config_from_dict
from edgevla.runtime.faults import Fault
from edgevla.runtime.supervisor import RunOptions, Supervisor

pytestmark = pytest.mark.slow

RECORDING_S = 4.0
# 4:3 at a multiple of the trained policy's 32 px: the driver crops 96 x 96 and averages 3 x 3.
SPEC = StreamSpec(128, 96, 30)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("recorded-cell")
    out = {}
    for camera in ("scene", "wrist"):
        out[camera] = folder / f"{camera}.db3"
        record_sim(out[camera], seconds=RECORDING_S, stream=SPEC, camera=camera, episode_seed=3)
    return out


def recorded_config(bundle: Path, recordings: dict[str, Path], **cameras):
    raw = {
        "policy": {"bundle": str(bundle)},
        "cameras": {
            "kind": "realsense",
            "names": ["scene", "wrist"],
            "recordings": [str(recordings["scene"]), str(recordings["wrist"])],
            "width": SPEC.width,
            "height": SPEC.height,
            "fps": SPEC.fps,
            **cameras,
        },
        # As in test_runtime_faults: the robot-side watchdog must not race the trip under test.
        "watchdog": {"robot_watchdog_min_hz": 10.0},
    }
    return config_from_dict(raw, "test")


def _safe_camera_trip(report: dict, not_before_s: float) -> dict:
    causes = [t["cause"] for t in report["trips"] if t["cause"] != "operator-stop"]
    assert causes[:1] == ["camera-stale"], report["trips"]
    trip = report["trips"][0]
    assert trip["t_s"] >= not_before_s, trip
    assert trip["stopped_after_s"] is not None
    assert report["safety"]["limit_violations"] == 0, report["safety"]
    assert report["final"]["robot_stopped"], report["final"]
    return trip


def test_a_recording_that_ends_is_a_camera_trip(trained_bundle: Path, recordings) -> None:
    config = recorded_config(trained_bundle, recordings)
    report = Supervisor(config, RunOptions(duration_s=RECORDING_S + 3.0, live=False)).run()
    # Frames flowed while the recordings played: the policy drove the arm on them.
    cams = report["cameras"]
    assert cams["kind"] == "realsense"
    assert cams["published"] > 0.7 * RECORDING_S * SPEC.fps, cams
    assert cams["lost_by_driver"] == 0, cams
    assert 0 <= cams["arrival_to_published_ms"]["p50"] < 100, cams
    assert report["system2"]["count"] > 3 and report["safety"]["audited_cycles"] > 500
    # ... then the recordings ended, the frames went stale and the arm was stopped.
    _safe_camera_trip(report, not_before_s=RECORDING_S - 1.0)


def test_a_stalled_pipeline_is_a_camera_trip(trained_bundle: Path, recordings) -> None:
    """The injected stall pauses both playbacks inside librealsense mid-recording."""
    stall_at = 2.5
    config = recorded_config(trained_bundle, recordings, loop_recordings=True)
    options = RunOptions(
        duration_s=stall_at + 2.5, injections=[(Fault.CAMERA_STALL, stall_at)], live=False
    )
    report = Supervisor(config, options).run()
    trip = _safe_camera_trip(report, not_before_s=stall_at)
    assert trip["t_s"] < stall_at + 1.5, trip  # the trip follows the stall, not a recording's end


def test_a_missing_recording_stops_the_run_before_the_arm_moves(
    trained_bundle: Path, recordings, tmp_path: Path
) -> None:
    config_file = tmp_path / "run.toml"
    config_file.write_text(
        f'[policy]\nbundle = "{trained_bundle}"\n'
        '[cameras]\nkind = "realsense"\nwidth = 128\nheight = 96\n'
        f'recordings = ["{recordings["scene"]}", "{tmp_path / "gone.db3"}"]\n'
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgevla.cli",
            "run",
            "--config",
            str(config_file),
            "--quiet",
            "--duration",
            "5",
            "--report",
            str(tmp_path / "report.json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "no recording at" in proc.stderr and "gone.db3" in proc.stderr, proc.stderr
    assert proc.returncode != 0
