# Two commands do everything on a fresh machine (Python 3.11, no GPU needed):
#   make demo   set up, then train rs-sdf on the built-in default scene and report its test PSNR
#   make test   set up, then run the test suite
PYTHON ?= python3
VENV := .venv

.PHONY: demo test setup

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e .
	@# ns-render wants an ffmpeg on PATH, even for images; where the machine has none, use imageio-ffmpeg's build
	command -v ffmpeg >/dev/null || ln -sf "$$($(VENV)/bin/python -c 'import imageio_ffmpeg as f; print(f.get_ffmpeg_exe())')" $(VENV)/bin/ffmpeg
	touch $@

demo: setup
	$(VENV)/bin/rs-demo

test: setup
	$(VENV)/bin/python -m pytest -q
