#!/usr/bin/env bash
# Set-up for the A/B (scripts/ab.py): Fashion-MNIST's four IDX files from Debian's
# `dataset-fashion-mnist` package (31 MB), into DIR (default .venv/data/fashion-mnist).
# Does nothing when they are already there; never run by the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.venv/data/fashion-mnist}
files="train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz"
missing=0
for f in $files; do [ -s "$dir/$f" ] || missing=1; done
[ "$missing" = 0 ] && exit 0
command -v apt-get >/dev/null || { echo "fetch-fashion-mnist: needs apt-get (Debian/Ubuntu); or put $files into $dir" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download dataset-fashion-mnist)
dpkg -x "$tmp"/dataset-fashion-mnist_*.deb "$tmp/x"
mkdir -p "$dir"
for f in $files; do cp "$tmp/x/usr/share/datasets/fashion-mnist/$f" "$dir/$f.tmp" && mv "$dir/$f.tmp" "$dir/$f"; done
echo "fashion-mnist: $dir"
