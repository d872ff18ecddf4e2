"""The A/B of issue 13 on Fashion-MNIST: does the Group-CAM augmentation help on real data?

1. Converts the IDX files (scripts/fetch-fashion-mnist.sh fetches them) to ImageFolder PNGs:
   28 x 28 grey stored as RGB, `data.input_size` upsamples (default: a scripted model's
   input_size attribute, 32 for the small CNN; 128 for built-ins: ResNet-18's layer4 is then
   4 x 4). The training set is subsampled (stratified, seeded) when --train-size asks; the
   whole test set is the validation set.
2. Pre-trains one plain starting point (augmentation off) once: a built-in architecture
   (`--arch resnet18`, random initialisation) or a TorchScript archive (`--arch torchscript
   --archive model.pt`; `--arch small-cnn` writes scripts/ab_model.py's small CNN, seeded by
   --model-seed, into <work>/model/ first). A scripted model's final.safetensors (the module's
   own names) is loaded into the archive again (`load_state_dict(strict=True)`, checked by its
   top-1 on the validation set in PyTorch) and saved as <work>/runs/pretrain/pretrained.pt.
3. Fine-tunes every arm from that starting point (`weights:`), once per seed, with
   `train.seed` = the seed, so an arm and the control see the same data order per seed:
   control (augmentation off), faithful (the default augmentation: G = 16, every image, full
   resolution), fast (probability 0.5, scored at --fast-score-size), cached (the saliency
   cache: maps of the whole images every --cache-refresh epochs, masks cut with each crop;
   --cache-size sets their side). `--arm NAME:key=value,...` adds or replaces an arm.
4. Writes <work>/ab.md and <work>/ab.json: top-1 on the whole validation set per arm (mean +- std
   over seeds), the paired difference to the control per seed with a 95% t-interval, wall time
   per run; and `groupcam report ARM --control CONTROL` per arm and seed in <work>/reports/.

A run whose directory holds the same config and a finished history is reused, so an
interrupted A/B goes on where it stopped.

    make ab   # or: .venv/bin/python scripts/ab.py --idx .venv/data/fashion-mnist --work out/ab --arch small-cnn ...
"""
import argparse
import gzip
import hashlib
import json
import math
import os
import shutil
import statistics
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
# Two-sided 95% quantiles of Student's t, df = 1..30 (beyond: the normal's 1.96 is within 2%).
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


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


def convert(idx_dir, root, train_size, subset_seed):
    """ImageFolder PNGs (RGB, 28 px) under root/train and root/val; redone only when its inputs change."""
    stamp = os.path.join(root, "converted.json")
    want = {"idx": os.path.abspath(idx_dir), "train_size": train_size, "subset_seed": subset_seed}
    if os.path.isfile(stamp):
        with open(stamp) as f:
            have = json.load(f)
        if {k: have.get(k) for k in want} == want:
            return have
    if os.path.isdir(root):
        shutil.rmtree(root)
    counts = {}
    for split in ("train", "val"):
        images, labels = load_split(idx_dir, split)
        keep = np.arange(len(labels))
        if split == "train" and train_size is not None and train_size < len(labels):
            keep = subsample(labels, train_size, subset_seed)
        for c in np.unique(labels[keep]):
            os.makedirs(os.path.join(root, split, f"{c}-{CLASSES[c]}"), exist_ok=True)
        for i in keep:
            c = labels[i]
            Image.fromarray(images[i], "L").convert("RGB").save(os.path.join(root, split, f"{c}-{CLASSES[c]}", f"{i:05d}.png"))
        counts[split] = {"images": int(len(keep)), "classes": int(len(np.unique(labels[keep]))), "of": int(len(labels))}
    have = dict(want, **counts)
    with open(stamp + ".tmp", "w") as f:
        json.dump(have, f, indent=1)
    os.replace(stamp + ".tmp", stamp)
    return have


def base_config(a, data_root, out):
    cfg = {
        "arch": a.model_arch,
        "data": {
            "root": data_root,
            "input_size": a.input_size,
            # The validation Resize equals the input size: the centre crop is the whole garment.
            "val_resize": a.input_size,
            "scale": a.scale,
            "workers": a.workers,
        },
        "train": {
            "epochs": a.epochs,
            "batch_size": a.batch,
            "lr": a.lr,
            "lr_step": a.lr_step,
            "lr_gamma": 0.1,
            "seed": 0,
            "device": a.device,
            "tensorboard": "off",
        },
        "augment": {"enabled": False},
        # The probe costs the same in every arm and is not what the A/B measures.
        "saliency": {"probe": a.probe},
        "out": out,
    }
    if a.threads is not None:
        cfg["train"]["threads"] = a.threads
    return cfg


def with_sets(cfg, sets):
    """Applies `a.b=value` overrides (values are JSON, else strings), as `--set` would."""
    cfg = json.loads(json.dumps(cfg))
    for s in sets:
        key, _, raw = s.partition("=")
        if not _:
            raise AbError(f"'{s}': expected key=value")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return cfg


def arm_settings(a):
    arms = {
        "control": ("augmentation off", ["augment.enabled=false"]),
        "faithful": ("G = 16, every image, full-resolution scoring (the paper)", ["augment.enabled=true"]),
        "fast": (
            f"G = 16, probability {a.fast_probability:g}, scored at {a.fast_score_size} px",
            ["augment.enabled=true", f"augment.probability={a.fast_probability}", f"augment.score_size={a.fast_score_size}"],
        ),
    }
    size = f", {a.cache_size} px maps" if a.cache_size else ""
    arms["cached"] = (
        f"G = 16, maps of whole images cached, refreshed every {a.cache_refresh} epoch(s){size}",
        ["augment.enabled=true", f"augment.refresh={a.cache_refresh}"]
        + ([f"augment.cache_size={a.cache_size}"] if a.cache_size else []),
    )
    # Arms that cannot run yet are listed with the reason (none now).
    missing = {}
    for spec in a.arm:
        name, _, sets = spec.partition(":")
        arms[name] = (sets or "as the base config", ["augment.enabled=true"] + [s for s in sets.split(",") if s])
        missing.pop(name, None)
    listed = [n for n in a.arms.split(",") if n]
    order = listed + [spec.partition(":")[0] for spec in a.arm if spec.partition(":")[0] not in listed]
    for n in order:
        if n not in arms and n not in missing:
            raise AbError(f"unknown arm '{n}' (known: {', '.join(list(arms) + list(missing))}; --arm NAME:key=value adds one)")
    return {n: arms[n] for n in order if n in arms}, {n: missing[n] for n in order if n in missing}


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def finished(run_dir, cfg, start):
    """A run already done with this very config and starting weights (reused, so an
    interrupted A/B resumes; a re-made starting point reruns what starts from it)."""
    try:
        with open(os.path.join(run_dir, "ab-config.json")) as f:
            saved = json.load(f)
        with open(os.path.join(run_dir, "history.json")) as f:
            history = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    if saved.get("config") != cfg or saved.get("start_sha256") != start or len(history) != cfg["train"]["epochs"] or not os.path.isfile(os.path.join(run_dir, "final.safetensors")):
        return None
    return saved


def run(a, name, cfg):
    """One `groupcam finetune`; returns its history, wall time and directory."""
    run_dir = cfg["out"]
    start = sha256(cfg["weights"]) if cfg.get("weights") else None
    saved = finished(run_dir, cfg, start)
    if saved is None:
        os.makedirs(os.path.join(a.work, "configs"), exist_ok=True)
        cfg_path = os.path.join(a.work, "configs", name + ".yaml")
        with open(cfg_path, "w") as f:
            json.dump(cfg, f, indent=1)  # JSON is YAML
        cmd = [a.bin, "finetune", "--config", cfg_path, "--quiet"]
        if os.path.exists(run_dir):
            cmd.append("--overwrite")
        print(f"== {name}: {' '.join(cmd)}", flush=True)
        t0 = time.time()
        proc = subprocess.run(cmd, stdout=None if a.verbose else subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wall = time.time() - t0
        if proc.returncode != 0:
            tail = "" if proc.stdout is None else "\n" + "\n".join(proc.stdout.splitlines()[-20:])
            raise AbError(f"run {name} failed (exit {proc.returncode}; config {cfg_path}){tail}")
        saved = {"config": cfg, "start_sha256": start, "wall_s": wall}
        with open(os.path.join(run_dir, "ab-config.json"), "w") as f:
            json.dump(saved, f, indent=1)
    else:
        print(f"== {name}: reusing {run_dir}", flush=True)
    with open(os.path.join(run_dir, "history.json")) as f:
        history = json.load(f)
    return history, saved["wall_s"], run_dir


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


def val_top1(m, images, labels, size):
    """PyTorch top-1 of a scripted model on 28 px grey images, resized as the loader does."""
    import torch

    try:
        mean, std = list(m.mean), list(m.std)
    except (AttributeError, RuntimeError):
        mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    mean, std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    correct = 0
    with torch.no_grad():
        for i in range(0, len(labels), 500):
            # PIL's bilinear convolution to bytes: what the loader's fast_image_resize does.
            px = np.stack([np.asarray(Image.fromarray(im, "L").resize((size, size), Image.BILINEAR)) for im in images[i : i + 500]])
            x = torch.from_numpy(px.astype(np.float32) / 255).unsqueeze(1).expand(-1, 3, -1, -1)
            pred = m((x - mean) / std).argmax(1)
            correct += int((pred == torch.from_numpy(labels[i : i + 500].astype(np.int64))).sum())
    return correct / len(labels)


def scripted_start(a, archive, pre_dir, history):
    """The pre-trained archive: `archive` with the pre-training's final.safetensors loaded into it
    (strict), saved as <pre_dir>/pretrained.pt. Redone when final.safetensors changes; checked by
    comparing every tensor and the PyTorch val top-1 with the run's own."""
    import safetensors.torch
    import torch

    final = os.path.join(pre_dir, "final.safetensors")
    out = os.path.join(pre_dir, "pretrained.pt")
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
    images, labels = load_split(a.idx, "val")
    size = a.input_size
    py = val_top1(back, images, labels, size)
    rust = history[-1]["val_top1"]
    print(f"pretrained: {out}: val top-1 {100 * py:.2f}% in PyTorch, {100 * rust:.2f}% in the pre-training run", flush=True)
    # Same weights, pixels and libtorch: at most float summation order may differ (one image
    # on a tiny validation set); a broken conversion (e.g. lost BatchNorm statistics) shows.
    if abs(py - rust) > max(0.02, 1.01 / len(labels)):
        raise AbError(f"{out}: val top-1 {100 * py:.2f}% in PyTorch but {100 * rust:.2f}% in the run: the conversion is wrong")
    os.replace(out + ".tmp", out)
    with open(stamp, "w") as f:
        json.dump({"final_sha256": digest, "archive": archive, "val_top1_pytorch": py, "val_top1_run": rust}, f, indent=1)
    return out


def mean_std(v):
    return (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else None)


def t_interval(d):
    """The mean of paired differences with its two-sided 95% t-interval (None with one pair)."""
    m, sd = mean_std(d)
    if sd is None:
        return m, None
    t = T975[len(d) - 2] if len(d) - 1 <= len(T975) else 1.96
    h = t * sd / math.sqrt(len(d))
    return m, [m - h, m + h]


def pct(v):
    return f"{100 * v:.2f}"


def render(result):
    s = result["setup"]
    lines = [
        f"Fashion-MNIST, {s['train_images']} training images (of {s['train_of']}), the whole test set "
        f"({s['val_images']} images) as validation; {s['arch']} at {s['input_size']} px "
        f"({s['target_layer']} target-layer positions), batch {s['batch']}; "
        f"plain pre-training {s['pretrain_epochs']} epochs at lr {s['pretrain_lr']:g} "
        f"({s['pretrain_wall_s']:.0f} s, val top-1 {pct(s['pretrain_top1'])}%), then {s['epochs']} fine-tuning epochs at lr {s['lr']:g} "
        f"per arm and seed; seeds {', '.join(map(str, s['seeds']))}.",
        "",
        "| arm | setting | runs | val top-1 % (mean +- std) | minus control, pt (mean, 95% t-interval) | augmented | wall s per run | / control |",
        "|---|---|---|---|---|---|---|---|",
    ]
    control_wall = result["arms"].get("control", {}).get("wall_s_mean")
    for name, arm in result["arms"].items():
        sd = f" +- {pct(arm['top1_std'])}" if arm["top1_std"] is not None else ""
        diff = arm.get("diff")
        if diff is None:
            dcell = "-"
        elif diff["ci95"] is None:
            dcell = f"{100 * diff['mean']:+.2f} (one seed: no interval)"
        else:
            dcell = f"{100 * diff['mean']:+.2f} [{100 * diff['ci95'][0]:+.2f}, {100 * diff['ci95'][1]:+.2f}]"
        ratio = f"{arm['wall_s_mean'] / control_wall:.2f}" if control_wall else "-"
        lines.append(
            f"| {name} | {arm['setting']} | {len(arm['runs'])} | {pct(arm['top1_mean'])}{sd} | {dcell} | "
            f"{100 * arm['augmented_mean']:.0f}% | {arm['wall_s_mean']:.0f} | {ratio} |"
        )
    for name, why in result["missing"].items():
        lines.append(f"| {name} | missing: {why} | 0 | - | - | - | - | - |")
    names = list(result["arms"])
    lines += ["", "Per seed (val top-1 %; the difference to the control in points):", ""]
    others = [n for n in names if n != "control"]
    head = ["seed"] + names + [f"{n} - control" for n in others if "control" in names]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for seed in s["seeds"]:
        row = [str(seed)]
        by = {n: {r["seed"]: r for r in result["arms"][n]["runs"]}.get(seed) for n in names}
        row += [pct(by[n]["top1"]) if by[n] else "-" for n in names]
        if "control" in names:
            row += [f"{100 * (by[n]['top1'] - by['control']['top1']):+.2f}" if by[n] and by["control"] else "-" for n in others]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--idx", default=".venv/data/fashion-mnist", help="folder of the four IDX files (.gz or not)")
    p.add_argument("--work", default="out/ab", help="converted data, runs, reports, ab.md, ab.json")
    p.add_argument("--bin", default="target/release/groupcam")
    p.add_argument("--train-size", type=int, default=None, help="subsample the training set (stratified)")
    p.add_argument("--subset-seed", type=int, default=0)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--arms", default="control,faithful,fast,cached")
    p.add_argument("--cache-refresh", type=int, default=1, help="the cached arm's augment.refresh (epochs)")
    p.add_argument("--cache-size", type=int, default=None, help="the cached arm's augment.cache_size (default: the key's)")
    p.add_argument("--arm", action="append", default=[], help="NAME:key=value,... adds or replaces an augmented arm")
    p.add_argument("--arch", default="resnet18", help="a built-in architecture, torchscript (with --archive) or small-cnn")
    p.add_argument("--archive", default=None, help="the TorchScript archive of --arch torchscript (random weights)")
    p.add_argument("--model-seed", type=int, default=0, help="the small CNN's initialisation (--arch small-cnn)")
    p.add_argument("--input-size", type=int, default=None,
                   help="default: 128 for built-ins (ResNet-18's layer4 is 4 x 4), the archive's input_size (small-cnn: 32)")
    p.add_argument("--scale", default="0.5,1", help="RandomResizedCrop scale range")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--pretrain-epochs", type=int, default=3)
    p.add_argument("--pretrain-lr", type=float, default=0.05)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--lr-step", type=int, default=2)
    p.add_argument("--fast-probability", type=float, default=0.5)
    p.add_argument("--fast-score-size", type=int, default=None, help="default: half the input size")
    p.add_argument("--probe", type=int, default=0, help="saliency.probe (0: no saliency tracking)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="train.threads (libtorch's CPU threads; default: its choice)")
    p.add_argument("--device", default="auto")
    p.add_argument("--set", action="append", default=[], help="key=value for every run (JSON values)")
    p.add_argument("--verbose", action="store_true", help="show each run's output")
    a = p.parse_args(argv)
    a.scale = [float(v) for v in a.scale.split(",")]
    seeds = [int(v) for v in a.seeds.split(",") if v != ""]
    if not seeds:
        raise AbError("--seeds: give at least one seed")
    if not (os.path.isfile(a.bin) and os.access(a.bin, os.X_OK)):
        raise AbError(f"--bin {a.bin}: no such executable (cargo build --release)")
    arms, missing = arm_settings(a)
    work = os.path.abspath(a.work)
    a.work = work
    os.makedirs(work, exist_ok=True)
    if a.arch == "torchscript" and not (a.archive and os.path.isfile(a.archive)):
        raise AbError(f"--arch torchscript needs --archive PATH (a TorchScript archive; got {a.archive})")
    if a.archive and a.arch != "torchscript":
        raise AbError(f"--archive is for --arch torchscript, not {a.arch}")

    data = convert(a.idx, os.path.join(work, "data"), a.train_size, a.subset_seed)
    print(f"data: {data['train']['images']} training images, {data['val']['images']} validation images", flush=True)

    archive = None
    if a.arch == "small-cnn":
        archive = small_cnn_archive(a, work, data["train"]["classes"])
    elif a.arch == "torchscript":
        archive = os.path.abspath(a.archive)
    if archive:
        a.model_arch = "torchscript"
        a.input_size, target = scripted_info(archive, a.input_size)
    else:
        a.model_arch = a.arch
        a.input_size = a.input_size or 128
        target = f"{-(-a.input_size // 32)} x {-(-a.input_size // 32)}"
    a.fast_score_size = a.fast_score_size or a.input_size // 2
    arms, missing = arm_settings(a)  # again, with the fast arm's score size known

    pre = base_config(a, os.path.join(work, "data"), os.path.join(work, "runs", "pretrain"))
    pre["train"].update(epochs=a.pretrain_epochs, lr=a.pretrain_lr, lr_step=max(a.pretrain_epochs, 1))
    if archive:
        pre["weights"] = archive
    pre = with_sets(pre, a.set)
    pre_history, pre_wall, pre_dir = run(a, "pretrain", pre)
    start = scripted_start(a, archive, pre_dir, pre_history) if archive else os.path.join(pre_dir, "final.safetensors")

    results = {n: [] for n in arms}
    # Seed-major order: a drift in the machine's speed hits every arm alike.
    for seed in seeds:
        for name, (_, sets) in arms.items():
            cfg = base_config(a, os.path.join(work, "data"), os.path.join(work, "runs", f"{name}-s{seed}"))
            cfg["weights"] = start
            cfg["train"]["seed"] = seed
            cfg = with_sets(with_sets(cfg, a.set), sets)
            history, wall, run_dir = run(a, f"{name}-s{seed}", cfg)
            last = history[-1]
            if last.get("val_images") != data["val"]["images"]:
                raise AbError(
                    f"run {run_dir}: validated on {last.get('val_images')} images, not the {data['val']['images']} converted "
                    f"({last.get('val_skipped')} unreadable)"
                )
            results[name].append({
                "seed": seed, "top1": last["val_top1"], "top5": last["val_top5"], "val_images": last["val_images"],
                "augmented": statistics.fmean(r["augmented_fraction"] for r in history),
                "wall_s": wall, "train_s": sum(r["seconds"] for r in history), "run": run_dir,
            })

    os.makedirs(os.path.join(work, "reports"), exist_ok=True)
    if "control" in results:
        for name, runs in results.items():
            for r, c in zip(runs, results["control"]):
                if name == "control":
                    continue
                proc = subprocess.run([a.bin, "report", r["run"], "--control", c["run"]], capture_output=True, text=True)
                if proc.returncode != 0:
                    raise AbError(f"groupcam report {r['run']} failed: {proc.stderr.strip()}")
                with open(os.path.join(work, "reports", f"{name}-s{r['seed']}.md"), "w") as f:
                    f.write(proc.stdout)

    out = {"arms": {}, "missing": missing}
    for name, runs in results.items():
        m, sd = mean_std([r["top1"] for r in runs])
        arm = {
            "setting": arms[name][0], "sets": arms[name][1], "runs": runs, "top1_mean": m, "top1_std": sd,
            "augmented_mean": statistics.fmean(r["augmented"] for r in runs),
            "wall_s_mean": statistics.fmean(r["wall_s"] for r in runs),
        }
        if name != "control" and "control" in results:
            d = [r["top1"] - c["top1"] for r, c in zip(runs, results["control"])]
            dm, ci = t_interval(d)
            arm["diff"] = {"per_seed": d, "mean": dm, "ci95": ci}
        out["arms"][name] = arm
    out["setup"] = {
        "arch": a.arch, "archive": archive, "target_layer": target, "input_size": a.input_size, "batch": a.batch, "scale": a.scale, "seeds": seeds,
        "train_images": data["train"]["images"], "train_of": data["train"]["of"], "val_images": data["val"]["images"],
        "pretrain_epochs": a.pretrain_epochs, "pretrain_lr": a.pretrain_lr, "pretrain_wall_s": pre_wall,
        "pretrain_top1": pre_history[-1]["val_top1"],
        "epochs": a.epochs, "lr": a.lr, "lr_step": a.lr_step, "sets": a.set, "start": start,
    }
    table = render(out)
    with open(os.path.join(work, "ab.json.tmp"), "w") as f:
        json.dump(out, f, indent=1)
    os.replace(os.path.join(work, "ab.json.tmp"), os.path.join(work, "ab.json"))
    with open(os.path.join(work, "ab.md"), "w") as f:
        f.write(table)
    print(table)
    print(f"written: {os.path.join(work, 'ab.md')}, {os.path.join(work, 'ab.json')}, reports in {os.path.join(work, 'reports')}")


if __name__ == "__main__":
    try:
        main()
    except AbError as e:
        sys.exit(f"ab: {e}")
