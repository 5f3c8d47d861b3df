"""edgevla as a systemd service (docs/deploy.md): the unit and its companion files (templates in
this folder), `edgevla service install` (`install.py`), `edgevla service verify` (`verify.py`)
and the last-resort stop systemd runs after every exit (`safe_stop.py`).

The supervisor's side of the protocol (READY, WATCHDOG, STATUS, STOPPING) lives in the runtime:
`edgevla.runtime.sd_notify` and `edgevla.runtime.service_health`.
"""
