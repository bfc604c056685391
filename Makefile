# Two entry points: `make demo` (the main job, end to end) and `make test`.
# Each bootstraps its own virtual environment in .venv from nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The torch build that works with torchvision (which open_clip needs) on this machine.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
# The demo's output folder.
OUT    ?= runs/demo
# Test images in the demo's sweep (a fixed seeded subset).
DEMO_IMAGES ?= 100
# The seed study's eight corruptions (named, so optional packs such as ImageNet-C stay out).
DEMO_PERTURBATIONS ?= gaussian_noise,gaussian_blur,contrast_increase,contrast_decrease,brightness_increase,brightness_decrease,occlusion,salt_and_pepper

# Never stall on hub or update checks: there is no model hub here, and weights
# are passed as local files.
export HF_HUB_OFFLINE := 1
export NO_ALBUMENTATIONS_UPDATE := 1

# The reference results (reports/reference/): every model in the reference profile, then the
# seed's sweep on every test image (or a seeded subset of REF_IMAGES), clean scores in both void modes.
REF_OUT    ?= runs/reference
REF_IMAGES ?=
REF_MODELS ?= effnet_unet clip_unet point_clip_unet clip_only autoencoder unet

.PHONY: venv demo test test-fast clean reference

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# The ImageNet-C pack's library, for its tests; --no-deps keeps opencv-python (GUI)
	# from landing over opencv-python-headless: the library works with either.
	$(BIN)/python -m pip install --quiet --no-deps 'imagecorruptions-imaug>=1.1.5,<1.2'
	$(BIN)/python -m pip install --quiet numba
	touch $@

venv: $(BIN)/.installed

# The main job on $PETSEG_DATA, or on the official release downloaded to the cache:
# train the five models (quick profile), sweep 8 perturbations x 10 levels, report.
# Re-running reuses finished checkpoints and sweep cells.
demo: venv
	@if [ -z "$$PETSEG_DATA" ]; then $(BIN)/petseg-bench data download; fi
	$(BIN)/petseg-bench data check
	$(BIN)/petseg-bench run --models all --perturbations $(DEMO_PERTURBATIONS) --train-missing \
		--checkpoints $(OUT)/checkpoints --out $(OUT) --limit $(DEMO_IMAGES) --resume

reference: venv
	@if [ -z "$$PETSEG_DATA" ]; then $(BIN)/petseg-bench data download; fi
	set -e; for m in $(REF_MODELS); do \
		$(BIN)/petseg-bench train $$m --profile reference --out $(REF_OUT)/checkpoints --resume; done
	set -e; for m in $(REF_MODELS); do for v in nearest ignore; do \
		$(BIN)/petseg-bench evaluate $(REF_OUT)/checkpoints/$$m/best.pt --void $$v \
			--out $(REF_OUT)/clean/$$m.$$v.json; done; done
	$(BIN)/petseg-bench run --models $$(echo $(REF_MODELS) | tr ' ' ,) --perturbations $(DEMO_PERTURBATIONS) \
		--checkpoints $(REF_OUT)/checkpoints --out $(REF_OUT) $(if $(REF_IMAGES),--limit $(REF_IMAGES)) --resume --no-report
	$(BIN)/petseg-bench report $(REF_OUT) --no-examples

test: venv
	$(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
