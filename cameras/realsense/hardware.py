"""The runtime's RealSense cameras from `[cameras]` with kind = "realsense"."""

from __future__ import annotations

import dataclasses

from edgevla.cameras.realsense.camera import RealSenseCamera, RealSenseSettings
from edgevla.runtime.config import CamerasConfig


def realsense_settings(cams: CamerasConfig, image_size: int | None) -> list[RealSenseSettings]:
    """One settings record per camera name, in the order of `cameras.names`."""
    out = []
    for i, name in enumerate(cams.names):
        out.append(
            RealSenseSettings(
                name=name,
                serial=cams.serials[i] if cams.serials else "",
                recording=cams.recordings[i] if cams.recordings else "",
                width=cams.width,
                height=cams.height,
                fps=round(cams.fps),
                depth=cams.depth,
                output_size=image_size,
                loop=cams.loop_recordings,
                stall_s=cams.stall_s,
                reconnect_deadline_s=cams.reconnect_deadline_s,
                hardware_reset=cams.hardware_reset,
            )
        )
    return out


def make_realsense_cameras(cams: CamerasConfig, image_size: int) -> list[RealSenseCamera]:
    """The cameras, not yet started (the policy process starts them): each frame is cropped to
    a square and resized to the policy's `image_size`. A camera with a calibration file gets
    its intrinsics, after the file's hash, serial and resolution are checked (CalibrationError,
    before any device is opened)."""
    settings = realsense_settings(cams, image_size)
    if cams.calibrations:
        from edgevla.calibration.calfile import load

        for i, path in enumerate(cams.calibrations):
            cal = load(path)
            cal.check_camera(settings[i].serial or None, cams.width, cams.height)
            settings[i] = dataclasses.replace(settings[i], calibrated=cal.intrinsics)
    return [RealSenseCamera(s) for s in settings]
