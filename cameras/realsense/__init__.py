"""Intel RealSense cameras through pyrealsense2 (docs/realsense.md).

`RealSenseCamera` implements the runtime's `Camera` protocol for a live camera (by serial) or a
`.db3` recording (played through the same `rs.pipeline`); `recording` writes such recordings
from a live camera or from the simulated cell through a librealsense software device.
pyrealsense2 is imported inside functions: the rest of the runtime runs without it.
"""

from edgevla.cameras.realsense.camera import RealSenseCamera, RealSenseSettings

__all__ = ["RealSenseCamera", "RealSenseSettings"]
