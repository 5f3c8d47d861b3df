"""Hand-eye and intrinsics calibration for technicians. Lands with the calibration issue (#9)."""
