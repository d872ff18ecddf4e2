# `make test` and `make demo` set themselves up: the first run installs torch 2.11.0 into .venv.
# With your own libtorch 2.11, export LIBTORCH=/path/to/libtorch and `make build` skips the venv
# (the tests still use .venv's Python to make their PyTorch fixtures).
CARGO ?= cargo
SETUP := .venv/.groupcam-setup-1
BIN := target/release/groupcam
EFFNET := .venv/weights/efficientnet-lite0.pth

.PHONY: build test demo venv bench clean-demo

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

demo: build $(SETUP)
	$(BIN) doctor
	$(BIN) predict --arch efficientnet-lite0 --weights $(EFFNET) --image tests/data/coffee.png tests/data/chelsea.png --topk 3
	$(BIN) explain --arch efficientnet-lite0 --weights $(EFFNET) --image tests/data/coffee.png tests/data/chelsea.png --out out/demo
	@echo "demo: overlays and maps are in out/demo/"

bench: build
	$(BIN) bench explain --device cpu
