"""Serial protocol to the safety microcontroller. Lands with the firmware-bridge issue (#8)."""
