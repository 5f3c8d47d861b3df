"""Robot drivers: one folder per robot family (`ur/`: UR5 / UR5e over ur_rtde)."""
