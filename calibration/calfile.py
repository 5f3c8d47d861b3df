"""The calibration file: what was calibrated, against what, how well, and a hash over all of it
(docs/calibration.md). The runtime refuses a missing, tampered or mismatched file.

JSON, one object. `sha256` is the hash of the canonical JSON of every other key (sorted keys,
no whitespace), so any edit (a transform, a threshold, a serial) breaks it. Transforms are named
`T_parent_child`: row-major 4×4, metres, mapping points of the child frame into the parent's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from edgevla.runtime.devices import CameraIntrinsics
from edgevla.runtime.errors import EdgeVlaError

log = logging.getLogger(__name__)

SCHEMA = 1
DEFAULT_MAX_AGE_DAYS = 90


class CalibrationError(EdgeVlaError):
    """The calibration file cannot be used."""


class CalibrationMissing(CalibrationError):
    pass


class CalibrationTampered(CalibrationError):
    pass


class CalibrationMismatch(CalibrationError):
    """The file is for another camera (serial) or another stream resolution."""


def canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def body_sha256(data: dict[str, Any]) -> str:
    return hashlib.sha256(canonical({k: v for k, v in data.items() if k != "sha256"})).hexdigest()


def dataset_sha256(arrays: list[np.ndarray], images: list[bytes]) -> str:
    """A hash of what the solve saw: the robot poses and the image bytes, in order."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
    for b in images:
        h.update(hashlib.sha256(b).digest())
    return h.hexdigest()


def write(path: Path, body: dict[str, Any]) -> dict[str, Any]:
    data = {**body, "schema": SCHEMA}
    data["sha256"] = body_sha256(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)  # never a half-written calibration
    return data


class Calibration:
    """A loaded, hash-checked calibration file."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data

    @property
    def created(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.data["created_utc"])

    @property
    def camera(self) -> dict[str, Any]:
        return self.data["camera"]

    def transform(self, name: str) -> np.ndarray:
        try:
            return np.asarray(self.data["transforms"][name], dtype=float)
        except KeyError:
            known = ", ".join(self.data.get("transforms", {}))
            raise CalibrationError(f"{self.path}: no transform {name!r} (has {known})") from None

    @property
    def intrinsics(self) -> CameraIntrinsics:
        i = self.data["intrinsics"]
        return CameraIntrinsics(
            int(i["width"]),
            int(i["height"]),
            float(i["fx"]),
            float(i["fy"]),
            float(i["ppx"]),
            float(i["ppy"]),
            str(i.get("model", "none")),
            tuple(float(c) for c in i["coeffs"]),
        )

    def check_camera(self, serial: str | None, width: int, height: int) -> None:
        """Refuse a file made for another camera or resolution (a swapped or re-mounted
        camera needs its own calibration)."""
        cam = self.camera
        if serial and cam.get("serial") and cam["serial"] != serial:
            raise CalibrationMismatch(
                f"{self.path} is for camera serial {cam['serial']}, but {serial} is configured:"
                " calibrate this camera (edgevla calib) or point at its own file"
            )
        if (int(cam["width"]), int(cam["height"])) != (width, height):
            raise CalibrationMismatch(
                f"{self.path} was made at {cam['width']}x{cam['height']}, the camera streams "
                f"{width}x{height}: set cameras.width/height to match or calibrate again"
            )

    def age_days(self, now: dt.datetime | None = None) -> float:
        now = now or dt.datetime.now(dt.timezone.utc)
        return (now - self.created).total_seconds() / 86400


def load(path: Path | str, *, max_age_days: float = DEFAULT_MAX_AGE_DAYS) -> Calibration:
    """Read and check a calibration file; raises CalibrationMissing or CalibrationTampered,
    warns when it is older than `max_age_days`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CalibrationMissing(f"no calibration file at {path}: run `edgevla calib`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CalibrationTampered(f"{path}: not a calibration file ({exc})") from exc
    if not isinstance(data, dict) or "sha256" not in data:
        raise CalibrationTampered(f"{path}: not a calibration file (no sha256)")
    if body_sha256(data) != data["sha256"]:
        raise CalibrationTampered(
            f"{path}: its content does not match its sha256: edited or corrupted after it was "
            "written. Calibrate again; do not edit calibration files by hand"
        )
    if data.get("schema") != SCHEMA:
        raise CalibrationError(f"{path}: schema {data.get('schema')}; this edgevla reads {SCHEMA}")
    cal = Calibration(path, data)
    age = cal.age_days()
    if age > max_age_days:
        log.warning(
            "%s is %.0f days old (over %g): check it with `edgevla calib verify`",
            path,
            age,
            max_age_days,
        )
    return cal
