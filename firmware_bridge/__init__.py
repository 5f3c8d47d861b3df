"""The safety microcontroller link: protocol, host side, reference C firmware (docs/protocol.md)."""
