# `make test` and `make demo` set themselves up: the first run installs torch 2.11.0 into .venv.
# With your own libtorch 2.11, export LIBTORCH=/path/to/libtorch and `make build` skips the venv
# (the tests still use .venv's Python to make their PyTorch fixtures).
CARGO ?= cargo
SETUP := .venv/.groupcam-setup-2
BIN := target/release/groupcam
EFFNET := .venv/weights/efficientnet-lite0.pth

.PHONY: build test demo venv bench clean-demo ab ab-data fidelity

venv: $(SETUP)

$(SETUP): scripts/setup-venv.sh
	scripts/setup-venv.sh

ifdef LIBTORCH
build:
	$(CARGO) build --release
else
build: $(SETUP)
	$(CARGO) build --release
endif

# Release mode: the tests run real networks, and it shares the one dependency build with `make build`.
test: $(SETUP)
	$(CARGO) test --release
	$(CARGO) build --release --examples

# The embedded default: synthetic shapes, a ResNet-18 pre-trained then fine-tuned with the
# Group-CAM augmentation (configs/demo.yaml), then explanations of the bundled photos.
demo: build
	$(BIN) doctor
	rm -rf out/demo
	$(BIN) synth --out out/demo/data
	$(BIN) finetune --config configs/demo.yaml
	$(BIN) report out/demo/run
	$(MAKE) --no-print-directory $(SETUP)
	$(BIN) explain --arch efficientnet-lite0 --weights $(EFFNET) --image tests/data/coffee.png tests/data/chelsea.png --out out/demo/explain
	@echo "demo: run in out/demo/run (tensorboard --logdir out/demo/run/tb), saliency grids in out/demo/run/saliency, photo maps in out/demo/explain"

bench: build
	$(BIN) bench explain --device cpu

# The A/B of README "Does the augmentation help?" (issue 22): for each data set (AB_SETS), the data,
# the small CNN and its converged plain pre-training (scripts/ab.py, AB_PREP), then `groupcam ab`
# with every built-in arm over AB_SEEDS. Finished runs are reused, so an interrupted study goes on.
# AB_ARGS adds to groupcam ab (e.g. --nproc 2).
AB_DATA ?= .venv/data/fashion-mnist
AB_PHOTOS ?= .venv/data/photos
AB_SETS ?= photos fmnist
AB_PREP ?= --train-size 2000 --val-size 2000 --input-size 32 --batch 64 --pretrain-epochs 30 --pretrain-lr 0.05 --pretrain-lr-step 10 --epochs 8 --threads 2 --device cpu
AB_SEEDS ?= 0,1,2
AB_ARGS ?=
ab-data:
	scripts/fetch-fashion-mnist.sh $(AB_DATA)
	scripts/fetch-photos.sh $(AB_PHOTOS)

ab: build $(SETUP) ab-data
	set -e; for s in $(AB_SETS); do \
	  .venv/bin/python scripts/ab.py --set $$s --idx $(AB_DATA) --photos $(AB_PHOTOS) --work out/ab/$$s --bin $(BIN) $(AB_PREP); \
	  $(BIN) ab --config out/ab/$$s/base.yaml --work out/ab/$$s/arms --seeds $(AB_SEEDS) $(AB_ARGS); \
	done

# The saliency cache fidelity study (BENCHMARKS.md, "Saliency cache fidelity (issue 13)").
fidelity: $(SETUP)
	.venv/bin/python scripts/cache_fidelity.py --weights $(EFFNET) --json out/fidelity.json
