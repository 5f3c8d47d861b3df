"""MuJoCo UR5e scene, simulated robot, cameras and safety MCU behind the runtime's device protocols.

`scene` writes the MJCF from the DH table, `world` owns the MuJoCo model and data, `robot`
(`SimRobot`) is the real-time controller, `camera` (`SimCamera`) renders mirrors of the scene,
`mcu` (`SimSafetyMcu`) is the safety microcontroller.
"""

import os

# MuJoCo picks its GL backend from MUJOCO_GL when it is first imported. This package's modules
# import mujoco only after this line has run, so cameras render on a CPU (OSMesa) unless the
# environment chose another backend (egl on a GPU).
os.environ.setdefault("MUJOCO_GL", "osmesa")
