"""Hand-eye calibration with a ChArUco board, and the calibration file the runtime enforces
(docs/calibration.md)."""
