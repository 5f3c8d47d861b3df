"""edgevla: deploys dual-system VLA robot policies on an edge computer, safely.

Import map: `edgevla.export` (PyTorch, workstation), `edgevla.runtime` (robot computer, never
torch), `edgevla.sim`, `edgevla.firmware_bridge`, `edgevla.calibration`.
"""

__version__ = "0.1.0"
