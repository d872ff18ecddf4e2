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

# Issue 13's A/B on Fashion-MNIST (README "A/B on Fashion-MNIST"): fetches the data once (set-up, Debian's
# dataset-fashion-mnist), then scripts/ab.py with the README's settings (AB_SETTINGS: the small
# scripted CNN at 32 px); AB_ARGS adds options or overrides them (later ones win), e.g.
# AB_ARGS="--threads 2 --device cpu" as the README's run, or "--arm cached:augment.refresh=5".
AB_DATA ?= .venv/data/fashion-mnist
AB_SETTINGS ?= --arch small-cnn --train-size 6000 --pretrain-epochs 3 --pretrain-lr 0.02 --epochs 2 --lr 0.01 --lr-step 1 --batch 64 --seeds 0,1,2 --cache-refresh 1 --cache-size 32 --arm cached-k2:augment.refresh=2,augment.cache_size=32
AB_ARGS ?=
ab-data:
	scripts/fetch-fashion-mnist.sh $(AB_DATA)

ab: build $(SETUP) ab-data
	.venv/bin/python scripts/ab.py --idx $(AB_DATA) --work out/ab --bin $(BIN) $(AB_SETTINGS) $(AB_ARGS)

# The saliency cache fidelity study (BENCHMARKS.md, "Saliency cache fidelity (issue 13)").
fidelity: $(SETUP)
	.venv/bin/python scripts/cache_fidelity.py --weights $(EFFNET) --json out/fidelity.json
