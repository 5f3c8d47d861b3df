"""Universal Robots over ur_rtde: the driver (`URRobot`) and a loopback controller emulator that
the real library talks to (`URControllerEmulator`, `edgevla ur-emulator`)."""
