"""Data and starting point of the A/B (README "Does the augmentation help?"); the A/B itself is
`groupcam ab`. For one data set (--set fmnist or photos) it writes under --work:

1. data/: ImageFolder PNGs. fmnist: Fashion-MNIST's 28 x 28 grey garments stored as RGB;
   photos: the garments composited onto natural photographs by scripts/fmnist_photos.py (train,
   val = unseen crops of the training photos, val_heldout, val_shift). --train-size and
   --val-size subsample (stratified, seeded by --subset-seed; the same test garments in both).
2. model/: scripts/ab_model.py's small CNN (TorchScript, random weights, seeded by --model-seed).
3. runs/pretrain/: one plain `groupcam finetune` (augmentation off) of --pretrain-epochs epochs
   at --pretrain-lr, x0.1 after --pretrain-lr-step; it is converged when val top-1 gained under
   --plateau points over the last --plateau-window epochs (else an error: nothing is written
   after it). Its final.safetensors is loaded into the archive again (strict) and saved as
   pretrained.pt, checked by the val top-1 in PyTorch against the run's own.
   pretrain.json: the curve, the gain, the rule.
4. base.yaml: the fine-tuning base of every arm: weights pretrained.pt, --epochs epochs at the
   pre-training lr / 100, x0.1 after 3/4 of them (the paper's 20 and 15, scaled), the same batch,
   crop and flip; for photos the extra validation sets heldout and shift.

A finished step with the same inputs is reused. Then:

    target/release/groupcam ab --config WORK/base.yaml --work WORK/arms --seeds 0,1,2
    make ab   # both data sets, the README's settings
"""
import argparse
import gzip
import hashlib
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import time

import numpy as np
from PIL import Image

CLASSES = ["t-shirt-top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class AbError(Exception):
    pass


def idx_path(folder, name):
    for p in (os.path.join(folder, name), os.path.join(folder, name + ".gz")):
        if os.path.isfile(p):
            return p
    raise AbError(f"{os.path.join(folder, name)}(.gz) is missing (scripts/fetch-fashion-mnist.sh {folder} fetches it)")


def read_idx(path, dims):
    """An IDX file of unsigned bytes with `dims` dimensions (1: labels, 3: images)."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise AbError(f"{path}: cannot read: {e}")
    if len(data) < 4 + 4 * dims:
        raise AbError(f"{path}: too short for an IDX header")
    zero, kind, nd = struct.unpack(">HBB", data[:4])
    if zero != 0 or kind != 0x08 or nd != dims:
        raise AbError(f"{path}: not an IDX file of {dims}-D unsigned bytes (magic {data[:4].hex()})")
    shape = struct.unpack(">" + "I" * dims, data[4 : 4 + 4 * dims])
    body = data[4 + 4 * dims :]
    if len(body) != math.prod(shape):
        raise AbError(f"{path}: header says {shape} ({math.prod(shape)} bytes), body has {len(body)} bytes")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def load_split(folder, split):
    img_name, lab_name = FILES[split]
    ip, lp = idx_path(folder, img_name), idx_path(folder, lab_name)
    images, labels = read_idx(ip, 3), read_idx(lp, 1)
    if len(images) != len(labels):
        raise AbError(f"{ip} has {len(images)} images but {lp} has {len(labels)} labels")
    if labels.size and labels.max() >= len(CLASSES):
        raise AbError(f"{lp}: label {labels.max()} is out of range 0..{len(CLASSES) - 1}")
    return images, labels


def subsample(labels, size, seed):
    """A stratified subset of about `size` indices (the same share of every class), sorted."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    keep = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        n = max(1, round(size * len(idx) / len(labels)))
        keep.append(rng.choice(idx, size=min(n, len(idx)), replace=False))
    return np.sort(np.concatenate(keep))


def convert(idx_dir, root, train_size, val_size, subset_seed):
    """ImageFolder PNGs (RGB, 28 px) under root/train and root/val; redone only when its inputs change."""
    stamp = os.path.join(root, "converted.json")
    want = {"idx": os.path.abspath(idx_dir), "train_size": train_size, "val_size": val_size, "subset_seed": subset_seed}
    if os.path.isfile(stamp):
        with open(stamp) as f:
            have = json.load(f)
        if {k: have.get(k) for k in want} == want:
            return have
    if os.path.isdir(root):
        shutil.rmtree(root)
    tmp = root.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    counts = {}
    for split, size in (("train", train_size), ("val", val_size)):
        images, labels = load_split(idx_dir, split)
        keep = np.arange(len(labels))
        if size is not None and size < len(labels):
            keep = subsample(labels, size, subset_seed)
        for c in np.unique(labels[keep]):
            os.makedirs(os.path.join(tmp, split, f"{c}-{CLASSES[c]}"), exist_ok=True)
        for i in keep:
            c = labels[i]
            Image.fromarray(images[i], "L").convert("RGB").save(os.path.join(tmp, split, f"{c}-{CLASSES[c]}", f"{i:05d}.png"))
        counts[split] = {"images": int(len(keep)), "classes": int(len(np.unique(labels[keep]))), "of": int(len(labels))}
    have = dict(want, **counts)
    with open(os.path.join(tmp, "converted.json"), "w") as f:
        json.dump(have, f, indent=1)
    os.replace(tmp, root)
    return have


def photos(a, root):
    """scripts/fmnist_photos.py's four sets under root (it reuses an up-to-date one itself)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import fmnist_photos

    fmnist_photos.main(["--idx", a.idx, "--photos", a.photos, "--out", root, "--size", str(a.input_size),
                        "--seed", str(a.subset_seed)]
                       + (["--train-size", str(a.train_size)] if a.train_size else [])
                       + (["--val-size", str(a.val_size)] if a.val_size else []))
    with open(os.path.join(root, "photos.json")) as f:
        images = json.load(f)["images"]
    return {s: {"images": len(rows), "classes": len({r["label"] for r in rows})} for s, rows in images.items()}


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def finished(run_dir, cfg, start):
    """The pre-training already done with this very config and starting archive."""
    try:
        with open(os.path.join(run_dir, "ab-config.json")) as f:
            saved = json.load(f)
        with open(os.path.join(run_dir, "history.json")) as f:
            history = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    if saved.get("config") != cfg or saved.get("start_sha256") != start or len(history) != cfg["train"]["epochs"] \
            or not os.path.isfile(os.path.join(run_dir, "final.safetensors")):
        return None
    return saved


def pretrain(a, cfg):
    """The plain pre-training: one `groupcam finetune`; returns its history and wall time."""
    run_dir = cfg["out"]
    start = sha256(cfg["weights"])
    saved = finished(run_dir, cfg, start)
    if saved is None:
        cfg_path = os.path.join(a.work, "pretrain.yaml")
        with open(cfg_path, "w") as f:
            json.dump(cfg, f, indent=1)  # JSON is YAML
        cmd = [a.bin, "finetune", "--config", cfg_path, "--quiet"]
        if os.path.exists(run_dir):
            cmd.append("--overwrite")
        print(f"== pretrain: {' '.join(cmd)}", flush=True)
        t0 = time.time()
        proc = subprocess.run(cmd)
        if proc.returncode != 0:
            raise AbError(f"the pre-training failed (exit {proc.returncode}; config {cfg_path})")
        saved = {"config": cfg, "start_sha256": start, "wall_s": time.time() - t0}
        with open(os.path.join(run_dir, "ab-config.json"), "w") as f:
            json.dump(saved, f, indent=1)
    else:
        print(f"== pretrain: reusing {run_dir}", flush=True)
    with open(os.path.join(run_dir, "history.json")) as f:
        return json.load(f), saved["wall_s"]


def small_cnn_archive(a, work, classes):
    """scripts/ab_model.py's small CNN under <work>/model/, written once per (seed, classes, input size)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import ab_model

    size = a.input_size or 32
    path = os.path.join(work, "model", f"small-cnn-s{a.model_seed}-c{classes}-{size}.pt")
    if not os.path.isfile(path):
        macs, params, shape = ab_model.export(path, seed=a.model_seed, classes=classes, input_size=size)
        print(f"model: {path}: {macs / 1e6:.1f} M multiply-adds, {params / 1e6:.3f} M parameters, "
              f"target layer {shape[0]} x {shape[1]} x {shape[2]} at {size} px", flush=True)
    return path


def scripted_info(archive, input_size):
    """(input size, target-layer 'h x w') of a TorchScript archive."""
    import torch

    m = torch.jit.load(archive).eval()
    if input_size is None:
        try:
            input_size = int(m.input_size)
        except (AttributeError, RuntimeError):
            input_size = 224
    with torch.no_grad():
        a = m.features(torch.zeros(1, 3, input_size, input_size))
    return input_size, f"{a.shape[2]} x {a.shape[3]}"


def val_top1(m, folder, size):
    """PyTorch top-1 of a scripted model on an ImageFolder, resized as the loader does (its
    validation Resize equals the input size here, so the centre crop is the whole image)."""
    import torch

    try:
        mean, std = list(m.mean), list(m.std)
    except (AttributeError, RuntimeError):
        mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    mean, std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    files = [(os.path.join(folder, c, n), k) for k, c in enumerate(sorted(os.listdir(folder)))
             for n in sorted(os.listdir(os.path.join(folder, c)))]
    correct = 0
    with torch.no_grad():
        for i in range(0, len(files), 500):
            chunk = files[i : i + 500]
            # PIL's bilinear convolution to bytes: what the loader's fast_image_resize does.
            px = np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR)) for p, _ in chunk])
            x = torch.from_numpy(px.astype(np.float32) / 255).permute(0, 3, 1, 2)
            pred = m((x - mean) / std).argmax(1)
            correct += int((pred == torch.tensor([k for _, k in chunk])).sum())
    return correct / len(files)


def pretrained_archive(a, archive, pre_dir, history, val_dir):
    """`archive` with the pre-training's final.safetensors loaded into it (strict), saved as
    <work>/pretrained.pt; redone when final.safetensors changes; checked tensor by tensor and by
    the PyTorch val top-1 against the run's own."""
    import safetensors.torch
    import torch

    final = os.path.join(pre_dir, "final.safetensors")
    out = os.path.join(a.work, "pretrained.pt")
    stamp = out + ".json"
    digest = sha256(final)
    try:
        with open(stamp) as f:
            if json.load(f).get("final_sha256") == digest and os.path.isfile(out):
                return out
    except (OSError, json.JSONDecodeError):
        pass
    state = safetensors.torch.load_file(final)
    m = torch.jit.load(archive)
    try:
        m.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise AbError(f"{final} does not load strictly into {archive}: {e}")
    m.eval()
    m.save(out + ".tmp")
    back = torch.jit.load(out + ".tmp").eval()
    have = back.state_dict()
    if set(have) != set(state) or any(not torch.equal(have[k], state[k]) for k in state):
        raise AbError(f"{out}: the saved archive's tensors differ from {final}")
    py = val_top1(back, val_dir, a.input_size)
    rust = history[-1]["val_top1"]
    print(f"pretrained: {out}: val top-1 {100 * py:.2f}% in PyTorch, {100 * rust:.2f}% in the pre-training run", flush=True)
    n = sum(len(os.listdir(os.path.join(val_dir, c))) for c in os.listdir(val_dir))
    # Same weights, pixels and libtorch: at most float summation order may differ (one image
    # on a tiny validation set); a broken conversion (e.g. lost BatchNorm statistics) shows.
    if abs(py - rust) > max(0.02, 1.01 / n):
        raise AbError(f"{out}: val top-1 {100 * py:.2f}% in PyTorch but {100 * rust:.2f}% in the run: the conversion is wrong")
    os.replace(out + ".tmp", out)
    with open(stamp, "w") as f:
        json.dump({"final_sha256": digest, "archive": archive, "val_top1_pytorch": py, "val_top1_run": rust}, f, indent=1)
    return out


def config(a, data_root, out, epochs, lr, lr_step, weights, extra_val):
    cfg = {
        "arch": "torchscript",
        "weights": weights,
        "data": {
            "root": data_root,
            "input_size": a.input_size,
            # The validation Resize equals the input size: the centre crop is the whole image.
            "val_resize": a.input_size,
            "scale": a.scale,
            "workers": a.workers,
        },
        "train": {
            "epochs": epochs,
            "batch_size": a.batch,
            "lr": lr,
            "lr_step": lr_step,
            "lr_gamma": 0.1,
            "seed": 0,
            "device": a.device,
            "tensorboard": "off",
        },
        "augment": {"enabled": False},
        # The probe costs the same in every arm and is not what the A/B measures.
        "saliency": {"probe": 0},
        "out": out,
    }
    if extra_val:
        cfg["data"]["extra_val"] = extra_val
    if a.threads is not None:
        cfg["train"]["threads"] = a.threads
    return cfg


def plateau(curve, window, points):
    """(converged, gain in points over the last `window` epochs)."""
    if len(curve) <= window:
        return False, None
    gain = 100 * (curve[-1] - curve[-1 - window])
    return gain < points, gain


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", dest="data_set", choices=["fmnist", "photos"], required=True)
    p.add_argument("--idx", default=".venv/data/fashion-mnist", help="folder of the four IDX files (.gz or not)")
    p.add_argument("--photos", default=".venv/data/photos", help="photos for --set photos (scripts/fetch-photos.sh)")
    p.add_argument("--work", required=True)
    p.add_argument("--bin", default="target/release/groupcam")
    p.add_argument("--train-size", type=int, default=None, help="stratified training subset (default: all)")
    p.add_argument("--val-size", type=int, default=None, help="stratified subset of the test garments (default: all)")
    p.add_argument("--subset-seed", type=int, default=0)
    p.add_argument("--model-seed", type=int, default=0)
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--scale", default="0.5,1", help="RandomResizedCrop scale range")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--pretrain-epochs", type=int, default=15)
    p.add_argument("--pretrain-lr", type=float, default=0.05)
    p.add_argument("--pretrain-lr-step", type=int, default=10)
    p.add_argument("--plateau", type=float, default=0.3, help="points of val top-1 over the window below which it has converged")
    p.add_argument("--plateau-window", type=int, default=3)
    p.add_argument("--epochs", type=int, default=8, help="fine-tuning epochs of every arm")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="train.threads (default: libtorch's choice)")
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)
    a.scale = [float(v) for v in a.scale.split(",")]
    if not (os.path.isfile(a.bin) and os.access(a.bin, os.X_OK)):
        raise AbError(f"--bin {a.bin}: no such executable (cargo build --release)")
    if a.epochs < 4:
        raise AbError(f"--epochs {a.epochs}: at least 4 (x0.1 after 3/4 of them)")
    a.work = os.path.abspath(a.work)
    os.makedirs(a.work, exist_ok=True)
    data = os.path.join(a.work, "data")
    if a.data_set == "fmnist":
        counts = convert(a.idx, data, a.train_size, a.val_size, a.subset_seed)
        extra = {}
    else:
        counts = photos(a, data)
        extra = {"heldout": os.path.join(data, "val_heldout"), "shift": os.path.join(data, "val_shift")}
    archive = small_cnn_archive(a, a.work, counts["train"]["classes"])
    pre = config(a, data, os.path.join(a.work, "runs", "pretrain"), a.pretrain_epochs, a.pretrain_lr,
                 a.pretrain_lr_step, archive, extra)
    history, wall = pretrain(a, pre)
    curve = [h["val_top1"] for h in history]
    ok, gain = plateau(curve, a.plateau_window, a.plateau)
    record = {
        "set": a.data_set, "data": counts, "archive": archive, "epochs": a.pretrain_epochs, "lr": a.pretrain_lr,
        "lr_step": a.pretrain_lr_step, "wall_s": wall, "val_top1": curve,
        "extra_val_top1": {n: [h["extra_val"][n]["top1"] for h in history] for n in extra},
        "rule": f"val top-1 gained under {a.plateau:g} points over the last {a.plateau_window} epochs",
        "gain_points": gain, "converged": ok,
    }
    with open(os.path.join(a.work, "pretrain.json"), "w") as f:
        json.dump(record, f, indent=1)
    shown = " ".join(f"{100 * v:.1f}" for v in curve)
    print(f"pretrain: val top-1 per epoch {shown}; last {a.plateau_window} epochs {gain if gain is not None else float('nan'):+.2f} points", flush=True)
    if not ok:
        raise AbError(f"the pre-training has not converged ({record['rule']} is not met: "
                      f"{gain if gain is not None else 'too few epochs'}); raise --pretrain-epochs")
    start = pretrained_archive(a, archive, pre["out"], history, os.path.join(data, "val"))
    base = config(a, data, os.path.join(a.work, "runs", "base"), a.epochs, a.pretrain_lr / 100,
                  round(0.75 * a.epochs), start, extra)
    path = os.path.join(a.work, "base.yaml")
    with open(path + ".tmp", "w") as f:
        json.dump(base, f, indent=1)
    os.replace(path + ".tmp", path)
    print(f"base: {path}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except AbError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
