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

# The reference results (reports/reference/): every model in the reference profile at each
# training seed of REF_SEEDS, clean scores of every seed in both void modes, the seed's sweep
# of every seed's checkpoints on every test image (or a seeded subset of REF_IMAGES), the
# report of the first seed's sweep, a check baseline that knows the spread over seeds, and a
# table over seeds. Each stage's wall time goes to REF_OUT/stages.tsv and is printed at the end.
REF_OUT    ?= runs/reference
REF_IMAGES ?=
REF_SEEDS  ?= 0 1 2
REF_MODELS ?= effnet_unet clip_unet point_clip_unet clip_only autoencoder unet
REF_FIRST  := $(firstword $(REF_SEEDS))
# A smoke test runs the same stages small: REF_PROFILE=quick REF_TRAIN_ARGS='--epochs 1 --limit 16'.
REF_PROFILE    ?= reference
REF_TRAIN_ARGS ?=
# `timed,NAME,COMMAND`: run COMMAND and append "NAME<TAB>seconds" to the stage log.
timed = t0=$$(date +%s); $(2); echo "$(1)	$$(( $$(date +%s) - t0 ))" >> $(REF_OUT)/stages.tsv

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
	# torchattacks, for the adversarial tests' cross-check of PGD; --no-deps, as its pin of
	# requests~=2.25 would downgrade requests (it imports without it).
	$(BIN)/python -m pip install --quiet --no-deps 'torchattacks>=3.5,<4'
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
	@mkdir -p $(REF_OUT) && printf '# stage\tseconds (%s, %s)\n' "$$(date -u +%FT%TZ)" \
		"$$(sed -n 's/^model name[^:]*: *//p' /proc/cpuinfo | head -1)" >> $(REF_OUT)/stages.tsv
	set -e; for s in $(REF_SEEDS); do for m in $(REF_MODELS); do \
		$(call timed,train $$m seed $$s,$(BIN)/petseg-bench train $$m --profile $(REF_PROFILE) --seed $$s \
			--out $(REF_OUT)/seed$$s/checkpoints --resume $(REF_TRAIN_ARGS)); done; done
	set -e; for s in $(REF_SEEDS); do for m in $(REF_MODELS); do for v in nearest ignore; do \
		$(call timed,evaluate $$m seed $$s $$v,$(BIN)/petseg-bench evaluate $(REF_OUT)/seed$$s/checkpoints/$$m/best.pt \
			--void $$v --out $(REF_OUT)/clean/seed$$s/$$m.$$v.json); done; done; done
	set -e; for s in $(REF_SEEDS); do \
		$(call timed,sweep seed $$s,$(BIN)/petseg-bench run --models $$(echo $(REF_MODELS) | tr ' ' ,) \
			--perturbations $(DEMO_PERTURBATIONS) --checkpoints $(REF_OUT)/seed$$s/checkpoints --out $(REF_OUT)/seed$$s \
			$(if $(REF_IMAGES),--limit $(REF_IMAGES)) --resume --no-report); done
	$(call timed,report,$(BIN)/petseg-bench report $(REF_OUT)/seed$(REF_FIRST) --no-examples)
	$(call timed,baseline,$(BIN)/petseg-bench baseline $(foreach s,$(REF_SEEDS),$(REF_OUT)/seed$(s)) \
		--out $(REF_OUT)/baseline.json)
	$(BIN)/python -m petseg_bench.reporting.seeds $(REF_OUT)/clean --void ignore | tee $(REF_OUT)/seeds.md
	@echo "stage times (s), this and earlier invocations:"; cat $(REF_OUT)/stages.tsv

test: venv
	$(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
