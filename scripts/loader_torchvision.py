#!/usr/bin/env python3
"""torchvision's side of `groupcam bench loader`, with the project's .venv Python.

  speed   --data DIR [--workers N --batch 32 --size 224]
          One epoch of ImageFolder + DataLoader (PIL) with RandomResizedCrop + RandomHorizontalFlip
          + ToTensor + Normalize: prints one JSON line {"images": n, "seconds": s}, timed from
          the DataLoader's creation to its last batch (Python's start and imports excluded).
  compare --dump DIR
          Reads what `groupcam bench loader --dump DIR` wrote (the source files, boxes.json, the
          new and old paths' crops) and crops the same boxes with torchvision
          (F.resized_crop, bilinear, then hflip where drawn): prints the 8-bit pixel
          difference of each path against torchvision's. Exits 1 if a crop is missing or its
          size is wrong.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import datasets, transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def cmd_speed(a):
    tf = T.Compose([T.RandomResizedCrop(a.size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    ds = datasets.ImageFolder(a.data, transform=tf)
    # One intra-op thread per process, as DataLoader's workers set themselves.
    torch.set_num_threads(1)
    t = time.perf_counter()
    dl = torch.utils.data.DataLoader(ds, batch_size=a.batch, shuffle=True, num_workers=a.workers)
    n = 0
    for x, _ in dl:
        n += x.shape[0]
    print(json.dumps({"images": n, "seconds": time.perf_counter() - t}))


def cmd_compare(a):
    d = Path(a.dump)
    boxes = json.loads((d / "boxes.json").read_text())
    rows, worst = [], {"new": [], "old": []}
    for b in boxes:
        img = Image.open(d / b["file"]).convert("RGB")
        x, y, w, h, s = b["x"], b["y"], b["w"], b["h"], b["size"]
        if any(v != int(v) for v in (x, y, w, h)):
            sys.exit(f"box {b['index']} is fractional (an eval crop): compare takes training boxes")
        tv = F.resized_crop(img, int(y), int(x), int(h), int(w), [s, s], InterpolationMode.BILINEAR)
        if b["flip"]:
            tv = F.hflip(tv)
        ref = np.asarray(tv, dtype=np.int16)
        row = [b["index"], f"{img.width}x{img.height}", f"({int(x)},{int(y)},{int(w)},{int(h)},{'T' if b['flip'] else 'F'})"]
        for path in ("new", "old"):
            got = np.asarray(Image.open(d / f"{path}_{b['index']}.png").convert("RGB"), dtype=np.int16)
            if got.shape != ref.shape:
                sys.exit(f"{path}_{b['index']}.png is {got.shape}, torchvision's crop {ref.shape}")
            diff = np.abs(got - ref)
            worst[path].append(diff)
            row += [f"{diff.mean():.3f}", str(diff.max())]
        rows.append(row)
    print("| sample | image | box (x,y,w,h,flip) | new mean | new max | old mean | old max |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(map(str, r)) + " |")
    for path in ("new", "old"):
        all_ = np.concatenate([v.ravel() for v in worst[path]])
        share = (all_ > 1).mean() * 100
        print(f"{path} path vs torchvision over {len(boxes)} crops: mean |diff| {all_.mean():.3f}, "
              f"max {all_.max()}, {share:.2f}% of values off by more than 1 (of 255)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(required=True)
    s = sub.add_parser("speed")
    s.add_argument("--data", required=True)
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--batch", type=int, default=32)
    s.add_argument("--size", type=int, default=224)
    s.set_defaults(fn=cmd_speed)
    s = sub.add_parser("compare")
    s.add_argument("--dump", required=True)
    s.set_defaults(fn=cmd_compare)
    a = p.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
