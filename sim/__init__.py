"""MuJoCo UR5e scene, simulated robot and cameras. Lands with the runtime issue (#3)."""
