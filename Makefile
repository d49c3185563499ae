# Two commands do everything on a fresh machine (Python 3.11, no GPU needed):
#   make demo   set up, then train rs-sdf on the built-in default scene and report its test PSNR
#   make test   set up, then run the test suite
PYTHON ?= python3
VENV := .venv
LIBUSB := import libusb_package; print(libusb_package.get_library_path())
OPEN3D_DIR := import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("open3d").origin))

.PHONY: demo test setup

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e .
	@# ns-render wants an ffmpeg on PATH, even for images; where the machine has none, use imageio-ffmpeg's build
	command -v ffmpeg >/dev/null || ln -sf "$$($(VENV)/bin/python -c 'import imageio_ffmpeg as f; print(f.get_ffmpeg_exe())')" $(VENV)/bin/ffmpeg
	@# ns-export imports open3d, which needs the system's libusb-1.0; where there is none, put libusb-package's beside it
	$(VENV)/bin/python -c 'import open3d' 2>/dev/null || ! $(VENV)/bin/python -c '$(LIBUSB)' >/dev/null 2>&1 || \
	    ln -sf "$$($(VENV)/bin/python -c '$(LIBUSB)')" "$$($(VENV)/bin/python -c '$(OPEN3D_DIR)')/libusb-1.0.so.0"
	touch $@

demo: setup
	$(VENV)/bin/rs-demo

test: setup
	$(VENV)/bin/python -m pytest -q
