"""Camera drivers behind the runtime's `Camera` protocol (one folder per device).

`realsense/`: Intel RealSense through pyrealsense2, live or from a `.db3` recording played through
the same `rs.pipeline`. The simulated camera lives in `edgevla.sim`.
"""
