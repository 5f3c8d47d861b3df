# Two commands on a fresh machine: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The CPU wheel of torch lies on this machine's disk; installing it first keeps pip from
# resolving the project's torch range to a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0
STAMP  := $(VENV)/.installed
OUT    := out

# The trained reference policy (tiny config, touch task): committed, rebuilt by `make policy`.
CHECKPOINT  := checkpoints/touch-tiny
DEMO_BUNDLE := $(OUT)/demo-bundle
EDGEVLA     := $(VENV)/bin/edgevla

.PHONY: demo test bench lint clean setup policy policy-paced

setup: $(STAMP)

# Debian packages: OSMesa lets MuJoCo render on a CPU; pyrealsense2 links libusb; the tests build
# the reference safety-MCU firmware with the system C compiler and check the systemd unit with
# systemd-analyze (package systemd; it need not run). Installed when run as root, else checked.
DEBS := libosmesa6 libusb-1.0-0 gcc libc6-dev systemd

$(STAMP): pyproject.toml Makefile
	@if [ "$$(id -u)" = 0 ]; then \
		dpkg -s $(DEBS) >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq $(DEBS); }; \
	else \
		dpkg -s $(DEBS) >/dev/null 2>&1 || echo "warning: install $(DEBS) (sudo apt-get install $(DEBS))"; \
	fi
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -e '.[export,sim,ur,realsense,mcu,calib,dev]'
	@touch $(STAMP)

# The bundle follows the checkpoint: a newer checkpoint (or a tampered bundle) is re-exported.
$(DEMO_BUNDLE)/manifest.json: $(CHECKPOINT)/model.safetensors $(CHECKPOINT)/config.json | $(STAMP)
	$(EDGEVLA) export --checkpoint $(CHECKPOINT) --out $(DEMO_BUNDLE) --overwrite

# The main job: the runtime on the embedded default (simulated UR5e, cameras and MCU, the trained
# policy told to touch the red cube) for 20 s, then the same bundle on 10 held-out episodes with
# a success rate and a contact sheet.
demo: $(STAMP) $(DEMO_BUNDLE)/manifest.json
	@$(EDGEVLA) bundle verify $(DEMO_BUNDLE) >/dev/null 2>&1 || \
		$(EDGEVLA) export --checkpoint $(CHECKPOINT) --out $(DEMO_BUNDLE) --overwrite
	$(EDGEVLA) run --duration 20 --report $(OUT)/demo-report.json --plot $(OUT)/demo-run.png
	$(EDGEVLA) eval --bundle $(DEMO_BUNDLE) --episodes 10 --json $(OUT)/demo-eval.json \
		--sheet $(OUT)/demo-episodes.png

# Rebuild the committed checkpoint from scratch (about 90 minutes on 2 cores): demonstrations,
# behaviour cloning, DAgger rows from that policy, behaviour cloning on both, the value head.
policy: $(STAMP)
	$(EDGEVLA) demos generate --episodes 500 --seed 0 --out $(OUT)/demos-touch
	$(EDGEVLA) train policy --demos $(OUT)/demos-touch --config tiny --out $(OUT)/touch-tiny-bc
	$(EDGEVLA) export --checkpoint $(OUT)/touch-tiny-bc --out $(OUT)/touch-tiny-bc-n1 \
		--candidates 1 --overwrite
	$(EDGEVLA) demos dagger --bundle $(OUT)/touch-tiny-bc-n1 --episodes 400 --seed 300000 \
		--out $(OUT)/dagger-touch
	$(EDGEVLA) train policy --demos $(OUT)/demos-touch $(OUT)/dagger-touch --config tiny \
		--out $(OUT)/touch-tiny-dagger
	$(EDGEVLA) train value --checkpoint $(OUT)/touch-tiny-dagger --out $(CHECKPOINT) \
		--rollouts $(OUT)/value-rollouts --recollect

# The reference policy fine-tuned to read "slowly"/"quickly" (checkpoints/touch-tiny-paced; about
# 20 minutes on 2 cores), for the `pace` steering direction. Needs `make policy`'s data in out/.
policy-paced: $(STAMP)
	$(EDGEVLA) demos generate --episodes 300 --seed 0 --paces slowly,quickly --out $(OUT)/demos-paced
	$(EDGEVLA) train policy --init $(CHECKPOINT) --demos $(OUT)/demos-touch $(OUT)/dagger-touch \
		$(OUT)/demos-paced --steps 3000 --lr 3e-4 --out checkpoints/touch-tiny-paced

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP) $(OUT)/demos-calib/dataset.json
	$(PY) benchmarks/bench_plan.py
	$(PY) benchmarks/bench_runtime.py
	$(PY) benchmarks/bench_success.py
	$(PY) benchmarks/bench_optimizations.py --calibration $(OUT)/demos-calib
	$(PY) benchmarks/bench_ur_jitter.py
	$(PY) benchmarks/bench_camera.py
	$(PY) benchmarks/bench_steering.py --calibration $(OUT)/demos-calib

# Calibration frames for layer pruning and the steering direction (24 expert episodes, ~1 min).
$(OUT)/demos-calib/dataset.json: $(STAMP)
	$(EDGEVLA) demos generate --out $(OUT)/demos-calib --episodes 24

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .ruff_cache
