"""Saliency cache fidelity (issue 13): how far is a mask read from a cached whole-image map from
the fresh mask of the crop that training actually sees?

For random RandomResizedCrops of real photos, on the real EfficientNet-Lite0:
- fresh: the augmentation's Group-CAM of the crop (official variant, G = 16, channel weights 1,
  no de-noise, blur baseline of kernel 51 / sigma 50 with reflect padding), S = [map >= mean];
- cached (one row per design): the whole image's map, computed once, stored as u8 at a reduced
  resolution, the crop's box cut out of it and resized to the crop (bilinear, roi_align), then
  S = [map >= its mean over the crop], the rule the issue's cache prescribes;
- noise floor: the fresh mask against the fresh mask of the same box moved by 2 px, compared
  on the pixels both crops show ("aligned") and pixel for pixel ("unaligned").
IoU of the binary masks, per crop-scale band (area of the box over the image's area).

    .venv/bin/python scripts/cache_fidelity.py --weights .venv/weights/efficientnet-lite0.pth \
        --images tests/data/chelsea.png tests/data/coffee.png --crops 100 --json out/fidelity.json

Nothing is downloaded; the class of each photo is the model's top-1 on the whole photo.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.ops import roi_align
from torchvision.transforms import functional as TF

torch.set_grad_enabled(False)

SIZE = 224
BANDS = [("< 0.25", 0.0, 0.25), ("0.25-0.5", 0.25, 0.5), ("> 0.5", 0.5, 1.01)]


def load_model(weights):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "py"))
    from fixtures import load_effnet  # the tests' loader of the converted weights

    return load_effnet(weights)


def normalise(x):
    # EfficientNet-Lite0's own normalisation, as the crate applies it: (x * 255 - 127) / 128.
    return (x * 255.0 - 127.0) / 128.0


def blur(x):
    import kornia

    return kornia.filters.gaussian_blur2d(x, (51, 51), (50.0, 50.0), border_type="reflect")


def minmax(m):
    """Per-map min-max over the last two dims; a constant map becomes zeros."""
    lo = m.amin((-2, -1), keepdim=True)
    hi = m.amax((-2, -1), keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (m - lo) / span.clamp_min(1e-12), torch.zeros_like(m))


def augment_maps(model, x, cls, groups=16, chunk=32):
    """The augmentation's map (src/augment: official variant, weights 1, no de-noise) for each of
    the N normalised images x (N x 3 x H x W) and its class: N x H x W in [0, 1]."""
    n, _, h, w = x.shape
    a = model.extract_features(x)
    blurred = blur(x)
    idx = torch.arange(n)
    p_blur = F.softmax(model(blurred), -1)[idx, cls]
    m = torch.stack([F.relu(c.sum(1)) for c in a.chunk(groups, 1)], 1)  # N x G x h x w
    up = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
    norm = minmax(up)
    live = (up.amax((-2, -1)) > up.amin((-2, -1)))  # N x G: a constant group gets weight 0
    g = m.shape[1]
    masked = (x[:, None] * norm[:, :, None] + blurred[:, None] * (1 - norm[:, :, None])).reshape(n * g, 3, h, w)
    probs = torch.cat([F.softmax(model(masked[i : i + chunk]), -1) for i in range(0, n * g, chunk)])
    p = probs[torch.arange(n * g), torch.as_tensor(cls).repeat_interleave(g)].view(n, g)
    alpha = F.relu(p - p_blur[:, None]) * live
    return minmax((alpha[:, :, None, None] * up).sum(1))


def binarise(maps):
    return maps >= maps.mean((-2, -1), keepdim=True)


def iou(a, b, valid=None):
    if valid is not None:
        a, b = a & valid, b & valid
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


def load_photo(path):
    """The photo as a 224 x 224 training image: shorter side 224 (bilinear), centre crop."""
    img = TF.to_tensor(Image.open(path).convert("RGB"))
    img = TF.resize(img, SIZE, antialias=True)
    return TF.center_crop(img, [SIZE, SIZE])


def random_box(gen, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop.get_params on a 224 x 224 image, from `gen`."""
    area = SIZE * SIZE
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * gen.random())
        ar = math.exp(log_r[0] + (log_r[1] - log_r[0]) * gen.random())
        w = int(round(math.sqrt(target * ar)))
        h = int(round(math.sqrt(target / ar)))
        if 0 < w <= SIZE and 0 < h <= SIZE:
            return int(gen.integers(0, SIZE - h + 1)), int(gen.integers(0, SIZE - w + 1)), h, w
    return 0, 0, SIZE, SIZE


def shifted(box, gen, px=2):
    """The same box moved by `px` pixels in a random direction that stays inside the image."""
    top, left, h, w = box
    moves = [(px, 0), (-px, 0), (0, px), (0, -px)]
    for k in gen.permutation(4):
        dy, dx = moves[k]
        if 0 <= top + dy <= SIZE - h and 0 <= left + dx <= SIZE - w:
            return (top + dy, left + dx, h, w), (dy, dx)
    return box, (0, 0)


def crop(img, box):
    top, left, h, w = box
    return TF.resized_crop(img, top, left, h, w, [SIZE, SIZE], antialias=True)


def cut(cache, box, source):
    """The box (in `source`-px image coordinates) cut out of a cached map (C x C) and resized to
    224 x 224 with bilinear sampling, pixel centres aligned."""
    top, left, h, w = box
    s = cache.shape[-1] / source
    rois = torch.tensor([[0, left, top, left + w, top + h]], dtype=torch.float32)
    return roi_align(cache[None, None].float(), rois, (SIZE, SIZE), spatial_scale=s, sampling_ratio=1, aligned=True)[0, 0]


def to_cache(m, side):
    """A [0, 1] map stored as u8 at side x side (area average), read back as floats."""
    small = F.interpolate(m[None, None], size=(side, side), mode="area")[0, 0] if side != m.shape[-1] else m
    return (small * 255).round().to(torch.uint8).float() / 255


def warp_back(mask2, d, box):
    """The shifted crop's mask in the first crop's frame (nearest), and where it is defined."""
    dy, dx = d
    _, _, h, w = box
    oy, ox = dy * SIZE / h, dx * SIZE / w  # frame-2 pixel = frame-1 pixel - offset
    ys = torch.arange(SIZE, dtype=torch.float32) - oy
    xs = torch.arange(SIZE, dtype=torch.float32) - ox
    yi, xi = ys.round().long(), xs.round().long()
    vy, vx = (yi >= 0) & (yi < SIZE), (xi >= 0) & (xi < SIZE)
    out = mask2[yi.clamp(0, SIZE - 1)][:, xi.clamp(0, SIZE - 1)]
    return out, vy[:, None] & vx[None, :]


class Design:
    """A way to fill the cache; `read(box)` gives the crop's cached map at 224 x 224."""

    def __init__(self, name, cost):
        self.name, self.cost = name, cost


def whole_maps(model, photos, classes, input_size):
    """Each photo's map on the whole photo resized to input_size (224 x 224 out)."""
    out = []
    for img, c in zip(photos, classes):
        x = normalise(TF.resize(img, [input_size, input_size], antialias=True))[None]
        m = augment_maps(model, x, [c])[0]
        out.append(F.interpolate(m[None, None], size=(SIZE, SIZE), mode="area")[0, 0] if input_size != SIZE else m)
    return out


def whole_design(maps, input_size, side):
    d = Design(f"whole image at {input_size} px, cache {side} px", (input_size / SIZE) ** 2)
    caches = [to_cache(m, side) for m in maps]
    d.read = lambda k, box: cut(caches[k], box, SIZE)
    return d


def tile_boxes(levels):
    """Square tiles: for each (side, stride) as fractions of the image, a grid covering it."""
    boxes = []
    for side, stride in levels:
        t, st = int(round(side * SIZE)), int(round(stride * SIZE))
        starts = list(range(0, SIZE - t + 1, st))
        boxes += [(y, x, t, t) for y in starts for x in starts]
    return boxes


def tile_maps(model, photos, classes, levels):
    """The whole-image map plus each tile's own map (the tile resized to 224 px)."""
    boxes = [(0, 0, SIZE, SIZE)] + tile_boxes(levels)
    out = []
    for img, c in zip(photos, classes):
        maps = []
        for i in range(0, len(boxes), 8):
            x = normalise(torch.stack([crop(img, b) for b in boxes[i : i + 8]]))
            maps += list(augment_maps(model, x, [c] * x.shape[0]))
        out.append(list(zip(boxes, maps)))
    return out


def tiled_design(entries, levels, side):
    """A crop reads the smallest cached entry (whole image or tile) that contains its box."""
    desc = " + ".join(f"{len(tile_boxes([l]))} tiles of {l[0]:g}" for l in levels)
    d = Design(f"whole + {desc} (each at 224 px), cache {side} px", len(entries[0]))
    cached = [[(b, to_cache(m, side)) for b, m in e] for e in entries]

    def read(k, box):
        top, left, h, w = box
        inside = [(b, m) for b, m in cached[k] if b[0] <= top and b[1] <= left and top + h <= b[0] + b[2] and left + w <= b[1] + b[3]]
        b, m = min(inside, key=lambda e: e[0][2] * e[0][3])
        return cut(m, (top - b[0], left - b[1], h, w), b[2])

    d.read = read
    return d


def summarise(rows, key):
    out = {}
    for name, lo, hi in BANDS + [("all", 0.0, 1.01)]:
        v = [r[key] for r in rows if lo <= r["scale"] < hi]
        out[name] = {"n": len(v), "mean": float(np.mean(v)) if v else None}
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=".venv/weights/efficientnet-lite0.pth")
    p.add_argument("--images", nargs="+", default=["tests/data/chelsea.png", "tests/data/coffee.png"])
    p.add_argument("--crops", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--designs", default="all", help="comma list of design ids (see --list) or all")
    p.add_argument("--list", action="store_true")
    p.add_argument("--json", default=None)
    a = p.parse_args()

    memo = {}

    def once(key, fn):
        # Designs that share their maps compute them once.
        if key not in memo:
            memo[key] = fn()
        return memo[key]

    levels = [(0.75, 0.125), (0.5, 0.25)]
    whole = lambda n: once(n, lambda: whole_maps(model, photos, classes, n))
    tiles = lambda: once("tiles", lambda: tile_maps(model, photos, classes, levels))
    designs = {
        "w224c56": lambda: whole_design(whole(224), 224, 56),
        "w224c224": lambda: whole_design(whole(224), 224, 224),
        "w448c56": lambda: whole_design(whole(448), 448, 56),
        "w448c112": lambda: whole_design(whole(448), 448, 112),
        "w672c112": lambda: whole_design(whole(672), 672, 112),
        "tiles56": lambda: tiled_design(tiles(), levels, 56),
        "tiles112": lambda: tiled_design(tiles(), levels, 112),
    }
    if a.list:
        print("\n".join(designs))
        return
    chosen = list(designs) if a.designs == "all" else a.designs.split(",")
    for k in chosen:
        if k not in designs:
            sys.exit(f"unknown design '{k}' (known: {', '.join(designs)})")
    for path in [a.weights] + a.images:
        if not os.path.isfile(path):
            sys.exit(f"{path}: no such file")

    t0 = time.time()
    model = load_model(a.weights)
    photos = [load_photo(p) for p in a.images]
    classes = [int(model(normalise(img)[None]).argmax()) for img in photos]
    gen = np.random.default_rng(a.seed)
    crops = []
    for i in range(a.crops):
        k = i % len(photos)
        box = random_box(gen)
        moved, d = shifted(box, gen)
        crops.append((k, box, moved, d))

    # Fresh masks of every crop and of its moved twin, in batches.
    fresh, twin = [], []
    for i in range(0, len(crops), 8):
        part = crops[i : i + 8]
        x = normalise(torch.stack([crop(photos[k], b) for k, b, _, _ in part] + [crop(photos[k], m) for k, _, m, _ in part]))
        maps = augment_maps(model, x, [classes[k] for k, *_ in part] * 2)
        fresh += list(binarise(maps[: len(part)]))
        twin += list(binarise(maps[len(part) :]))
    print(f"fresh maps of {2 * len(crops)} crops: {time.time() - t0:.0f} s", file=sys.stderr)

    rows = []
    for (k, box, _, d), f, t in zip(crops, fresh, twin):
        back, valid = warp_back(t, d, box)
        rows.append({
            "photo": a.images[k], "box": list(box), "scale": box[2] * box[3] / SIZE**2,
            "floor_aligned": iou(f, back, valid), "floor_unaligned": iou(f, t),
        })
    result = {
        "images": a.images, "classes": classes, "crops": a.crops, "seed": a.seed,
        "floor_aligned": summarise(rows, "floor_aligned"),
        "floor_unaligned": summarise(rows, "floor_unaligned"),
        "designs": [],
    }
    for key in chosen:
        d = designs[key]()
        for r, (k, box, _, _), f in zip(rows, crops, fresh):
            cached = binarise(d.read(k, box))
            r[key] = iou(cached, f)
        result["designs"].append({"id": key, "name": d.name, "refresh_cost": d.cost, "iou": summarise(rows, key)})
        print(f"{key}: {time.time() - t0:.0f} s", file=sys.stderr)
    result["rows"] = rows

    def cells(s):
        return " | ".join(f"{s[b]['mean']:.2f}" if s[b]["mean"] is not None else "-" for b, *_ in BANDS + [("all",)])

    counts = result["floor_aligned"]
    print(f"crops: {a.crops} from {len(photos)} photos (classes {classes}), seed {a.seed}; per band n = "
          + ", ".join(f"{b} {counts[b]['n']}" for b, *_ in BANDS))
    print("\n| design | refresh cost (224-px maps per image) | IoU < 0.25 | 0.25-0.5 | > 0.5 | all |")
    print("|---|---|---|---|---|---|")
    print(f"| noise floor: fresh vs fresh moved 2 px, aligned | - | {cells(result['floor_aligned'])} |")
    print(f"| noise floor: fresh vs fresh moved 2 px, unaligned | - | {cells(result['floor_unaligned'])} |")
    for d in result["designs"]:
        print(f"| {d['name']} | {d['refresh_cost']:g} | {cells(d['iou'])} |")
    best = max(result["designs"], key=lambda d: d["iou"]["all"]["mean"], default=None)
    if best is not None:
        reached = best["iou"]["all"]["mean"] >= 0.8
        print(f"\nbest design: {best['name']} (mean {best['iou']['all']['mean']:.2f}); "
              + ("reaches" if reached else "no design reaches") + " mean >= 0.8")
    print(f"total {time.time() - t0:.0f} s", file=sys.stderr)
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
