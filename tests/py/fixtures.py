"""PyTorch side of the tests: fixtures and reference results the Rust code must reproduce.

Every command writes .npy / weight files into --out; nothing is downloaded.
"""
import argparse
import os
from typing import Dict

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

torch.set_grad_enabled(False)


def randomise_bn(model, gen):
    # Non-trivial running statistics, so that eval-mode BatchNorm is really tested.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
            m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)


def effnet(image_size=224, num_classes=1000):
    from efficientnet_lite_pytorch import EfficientNet
    return EfficientNet.from_name("efficientnet-lite0", image_size=image_size, num_classes=num_classes)


def build(arch, size, num_classes=1000):
    if arch == "efficientnet-lite0":
        return effnet(size, num_classes)
    return getattr(torchvision.models, arch)(num_classes=num_classes)


def features(model, arch, x):
    if arch == "efficientnet-lite0":
        return model.extract_features(x)
    if arch.startswith("vgg"):
        return model.features[:-1](x)  # up to the ReLU after the last conv
    m = model
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    return m.layer4(m.layer3(m.layer2(m.layer1(x))))


def save_npy(path, t):
    np.save(path, t.detach().cpu().numpy().astype(np.float32))


def cmd_model(a):
    gen = torch.Generator().manual_seed(a.seed)
    torch.manual_seed(a.seed)
    model = build(a.arch, a.size, a.classes).eval()
    randomise_bn(model, gen)
    x = torch.randn(a.batch, 3, a.size, a.size, generator=gen)
    os.makedirs(a.out, exist_ok=True)
    # Logits of order 10, so that the 1e-4 tolerance on them means something.
    head = model.classifier[-1] if a.arch.startswith("vgg") else model._fc if a.arch.startswith("eff") else model.fc
    scale = 10.0 / float(model(x).abs().max())
    head.weight.mul_(scale)
    head.bias.mul_(scale)
    save_npy(os.path.join(a.out, "input.npy"), x)
    save_npy(os.path.join(a.out, "features.npy"), features(model, a.arch, x))
    save_npy(os.path.join(a.out, "logits.npy"), model(x))
    torch.save(model.state_dict(), os.path.join(a.out, "weights.pth"))
    from safetensors.torch import save_file
    sd = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(sd, os.path.join(a.out, "weights.safetensors"))


def load_effnet(weights):
    model = effnet().eval()
    model.load_state_dict(torch.load(weights, map_location="cpu"))
    return model


def cmd_effnet_logits(a):
    model = load_effnet(a.weights)
    x = torch.from_numpy(np.load(a.input))
    save_npy(a.out, model(x))


def blur(x, ksize=51, sigma=50.0, border="reflect"):
    import kornia
    return kornia.filters.gaussian_blur2d(x, (ksize, ksize), (sigma, sigma), border_type=border)


def cmd_blur(a):
    x = torch.from_numpy(np.load(a.input))
    save_npy(a.out, blur(x, a.ksize, a.sigma, a.border))


def minmax(m):
    lo, hi = m.min(), m.max()
    return torch.zeros_like(m) if hi <= lo else (m - lo) / (hi - lo)


def groupcam_reference(model, x, cls, groups, denoise, variant):
    """Group-CAM as the foundation issue specifies it, one image and one group at a time."""
    head = lambda a: model._fc(model._dropout(model._avg_pooling(a).flatten(1)))
    return groupcam_split(model.extract_features, head, x, cls, groups, denoise, variant)


def groupcam_split(features, head, x, cls, groups, denoise, variant):
    """The reference on any features/head split (the model is head(features(x)))."""
    _, _, h, w = x.shape
    model = lambda x: head(features(x))
    with torch.enable_grad():
        a = features(x).detach().requires_grad_(True)
        logits = head(a)
        if cls is None:
            cls = int(logits.argmax(1))
        (grad,) = torch.autograd.grad(logits[0, cls], a)
    weights = grad.mean((2, 3), keepdim=True)
    blurred = blur(x)
    p_blur = F.softmax(model(blurred), -1)[0, cls]
    total = torch.zeros(1, 1, h, w)
    for chunk in (weights * a.detach()).chunk(groups, 1):
        m = F.relu(chunk.sum(1, keepdim=True))
        if denoise is not None:
            thr = np.percentile(m.numpy(), denoise)
            m = torch.where(m > thr, m, torch.zeros_like(m))
        up = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
        if up.max() == up.min():
            continue
        norm = (up - up.min()) / (up.max() - up.min())
        p = F.softmax(model(x * norm + blurred * (1 - norm)), -1)[0, cls]
        if variant == "official":
            total += F.relu(p - p_blur) * up
        else:
            total += (p - p_blur) * norm
    if variant == "paper":
        total = F.relu(total)
    return minmax(total)[0, 0], cls


def gradcam_reference(model, x, cls):
    _, _, h, w = x.shape
    with torch.enable_grad():
        a = model.extract_features(x).detach().requires_grad_(True)
        logits = model._fc(model._dropout(model._avg_pooling(a).flatten(1)))
        (grad,) = torch.autograd.grad(logits[0, cls], a)
    cam = F.relu((grad.mean((2, 3), keepdim=True) * a.detach()).sum(1, keepdim=True))
    return minmax(F.interpolate(cam, size=(h, w), mode="bilinear", align_corners=False))[0, 0]


def cmd_groupcam(a):
    model = load_effnet(a.weights)
    x = torch.from_numpy(np.load(a.input))
    cls = None if a.cls < 0 else a.cls
    m, cls = groupcam_reference(model, x, cls, a.groups, a.denoise, a.variant)
    save_npy(a.out, m)
    if a.gradcam_out:
        save_npy(a.gradcam_out, gradcam_reference(model, x, cls))


def score_cached_reference(model, whole, crop, cls, groups):
    """The score cache's rule, one image and one group at a time: the augmentation's scores of
    the whole image (w^c = 1, alpha_l = ReLU(p(I'_l) - p(blur)), 0 for a constant group), then
    the crop's own group maps weighed by them, S = [map >= its mean]."""
    _, _, h, w = whole.shape
    model_fn = lambda x: model(x)
    a = model.extract_features(whole)
    blurred = blur(whole)
    p_blur = F.softmax(model_fn(blurred), -1)[0, cls]
    alphas = []
    for chunk in a.chunk(groups, 1):
        m = F.relu(chunk.sum(1, keepdim=True))
        up = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
        if up.max() == up.min():
            alphas.append(0.0)
            continue
        norm = (up - up.min()) / (up.max() - up.min())
        p = F.softmax(model_fn(whole * norm + blurred * (1 - norm)), -1)[0, cls]
        alphas.append(float(F.relu(p - p_blur)))
    _, _, ch, cw = crop.shape
    total = torch.zeros(1, 1, ch, cw)
    for alpha, chunk in zip(alphas, model.extract_features(crop).chunk(groups, 1)):
        m = F.relu(chunk.sum(1, keepdim=True))
        total += alpha * F.interpolate(m, size=(ch, cw), mode="bilinear", align_corners=False)
    cam = minmax(total)[0, 0]
    return torch.tensor(alphas), (cam >= cam.mean()).float()


def cmd_score_cached(a):
    model = load_effnet(a.weights)
    whole = torch.from_numpy(np.load(a.whole))
    crops = torch.from_numpy(np.load(a.crops))
    scores, masks = [], []
    for i, c in enumerate(a.cls):
        s, m = score_cached_reference(model, whole[i : i + 1], crops[i : i + 1], c, a.groups)
        scores.append(s)
        masks.append(m)
    save_npy(a.scores_out, torch.stack(scores))
    save_npy(a.out, torch.stack(masks))


def cmd_load_final(a):
    """Loads groupcam's final.safetensors strictly into the torchvision model and runs it."""
    from safetensors.torch import load_file
    model = build(a.arch, 64, a.classes).eval()
    model.load_state_dict(load_file(a.weights), strict=True)
    x = torch.from_numpy(np.load(a.input))
    save_npy(a.out, model(x))


def cmd_legacy(a):
    model = torchvision.models.resnet18(num_classes=10)
    torch.save(model.state_dict(), a.out, _use_new_zipfile_serialization=False)


class _Marker:
    """Unpickling it calls open(path, "w"): a side effect a test can see."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def cmd_python_objects(a):
    """A torch.save archive whose state dict is a Python object, and a plain pickle of one."""
    import pickle
    torch.save({"model_state_dict": _Marker(a.marker)}, a.zip)
    with open(a.pickle, "wb") as f:
        pickle.dump({"fc.weight": _Marker(a.marker)}, f, protocol=4)


def readme_recipes(readme, out):
    """The README's TorchScript recipes (the python blocks after `<!-- recipe: ... -->`), written
    as they are to one module in `out` (TorchScript reads the source of what it compiles)."""
    import importlib.util
    text = open(readme).read()
    blocks = []
    for name in ("cnn", "vit"):
        start = text.index("```python", text.index(f"<!-- recipe: {name} -->")) + len("```python")
        blocks.append(text[start:text.index("```", start)])
    path = os.path.join(out, "readme_recipes.py")
    with open(path, "w") as f:
        f.write("\n".join(blocks))
    spec = importlib.util.spec_from_file_location("readme_recipes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return vars(module)


def scale_logits(model, x, gen):
    # Logits of order 10, so that the 1e-4 tolerance on them means something.
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    if not last.weight.any():  # torchvision's ViT starts with a zero head
        last.weight.copy_(torch.randn(last.weight.shape, generator=gen) * 0.02)
    scale = 10.0 / float(model(x).abs().max())
    last.weight.mul_(scale)
    last.bias.mul_(scale)


def randomise_norms(model, gen, size):
    """Random affine norms and BatchNorm statistics measured on random images: non-trivial
    eval-mode statistics that keep a deep random network's activations alive."""
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.LayerNorm, torchvision.models.convnext.LayerNorm2d)):
            m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    model(torch.rand(8, 3, size, size, generator=gen))
    model.eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.1


def cmd_script_models(a):
    """Exports with the README's recipes: two torchvision CNNs that are not built in, a tiny ViT
    and a ResNet-50 (also as a torchvision state dict), with inputs, logits and Group-CAM
    reference maps of the scripted modules; and archives that are wrong in known ways."""
    os.makedirs(a.out, exist_ok=True)
    ns = readme_recipes(a.readme, a.out)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    tv = torchvision.models
    vit = tv.VisionTransformer(image_size=64, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                               mlp_dim=64, num_classes=a.classes)
    models = {
        "mobilenet_v3_large": (tv.mobilenet_v3_large(num_classes=a.classes), 96),
        "convnext_tiny": (tv.convnext_tiny(num_classes=a.classes), 96),
        "vit": (vit, 64),
        "resnet50": (tv.resnet50(num_classes=a.classes), 64),
    }
    for name, (model, size) in models.items():
        randomise_norms(model, gen, size)
        x = torch.randn(2, 3, size, size, generator=gen)
        scale_logits(model, x, gen)
        path = os.path.join(a.out, f"{name}.pt")
        if name == "vit":
            ns["export_vit"](model, path)
        else:
            ns["export_cnn"](model, path, input_size=size)
        scripted = torch.jit.load(path)
        save_npy(os.path.join(a.out, f"{name}-input.npy"), x)
        save_npy(os.path.join(a.out, f"{name}-logits.npy"), scripted(x))
        # The first class whose map is not constant (random weights can leave every group
        # below the blurred baseline's score), so that the comparison means something.
        for cls in range(a.classes):
            m, _ = groupcam_split(scripted.features, scripted.head, x[:1], cls, 8, None, "official")
            if m.max() > m.min():
                break
        save_npy(os.path.join(a.out, f"{name}-map.npy"), m)
        np.save(os.path.join(a.out, f"{name}-class.npy"), np.array([cls], dtype=np.int64))
        if name == "resnet50":
            torch.save(model.state_dict(), os.path.join(a.out, "resnet50.pth"))
    # Archives that break the contract, each in one way.
    class NoFeatures(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 4)

        def forward(self, x):
            return self.fc(x.mean((2, 3)))

    class Flat(NoFeatures):
        @torch.jit.export
        def features(self, x):
            return x.mean((2, 3))

        @torch.jit.export
        def head(self, a):
            return self.fc(a)

    class BadHead(NoFeatures):
        @torch.jit.export
        def features(self, x):
            return x

        @torch.jit.export
        def head(self, a):
            return self.fc(a.mean((1, 2, 3)).unsqueeze(1).expand(-1, 3)).sum(1)

    for name, cls in (("no-features", NoFeatures), ("features-2d", Flat), ("head-1d", BadHead)):
        torch.jit.script(cls()).save(os.path.join(a.out, f"{name}.pt"))

    # For fine-tuning: an ImageNet-sized (1000-way) ResNet-18 with non-trivial BatchNorm
    # statistics, whose head the run resets to the data's class count.
    r18 = tv.resnet18(num_classes=1000)
    randomise_norms(r18, gen, 48)
    ns["export_cnn"](r18, os.path.join(a.out, "resnet18-1000.pt"), input_size=48)

    # The recipe's Split as it was with `dict(self.named_buffers())`, which TorchScript does
    # not recurse: its BatchNorm statistics are out of reach of the checkpoints.
    class FlatBuffers(ns["Split"]):
        def __init__(self, body, top):
            super().__init__(body, top)
            self.concurrent_eval = False

        @torch.jit.export
        def state_buffers(self) -> Dict[str, torch.Tensor]:
            return dict(self.named_buffers())

    small = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    top = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(1), torch.nn.Linear(4, a.classes))
    torch.jit.script(FlatBuffers(small, top)).save(os.path.join(a.out, "flat-buffers.pt"))


def cmd_export(a):
    """A torchvision classifier (random weights) exported with the README's recipe, e.g. the
    ResNet-50 archive of `groupcam bench torchscript`."""
    ns = readme_recipes(a.readme, __import__("tempfile").mkdtemp())
    model = getattr(torchvision.models, a.arch)(num_classes=a.classes)
    ns["export_cnn"](model, a.out, input_size=a.size)


def cmd_load_split(a):
    """Loads a final.safetensors strictly into the README recipe's (eager) Split of a torchvision
    model, as the README says; its eval-mode logits."""
    from safetensors.torch import load_file
    ns = readme_recipes(a.readme, __import__("tempfile").mkdtemp())
    model = getattr(torchvision.models, a.arch)(num_classes=a.classes)
    module = ns["Split"](*ns["split"](model))
    module.load_state_dict(load_file(a.weights), strict=True)
    module.eval()
    save_npy(a.out, module(torch.from_numpy(np.load(a.input))))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("model")
    s.add_argument("--arch", required=True)
    s.add_argument("--size", type=int, default=64)
    s.add_argument("--batch", type=int, default=2)
    s.add_argument("--classes", type=int, default=1000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_model)
    s = sub.add_parser("effnet-logits")
    s.add_argument("--weights", required=True)
    s.add_argument("--input", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_effnet_logits)
    s = sub.add_parser("blur")
    s.add_argument("--input", required=True)
    s.add_argument("--ksize", type=int, default=51)
    s.add_argument("--sigma", type=float, default=50.0)
    s.add_argument("--border", default="reflect", help="reflect or constant (zeros)")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_blur)
    s = sub.add_parser("groupcam")
    s.add_argument("--weights", required=True)
    s.add_argument("--input", required=True)
    s.add_argument("--cls", type=int, default=-1)
    s.add_argument("--groups", type=int, default=32)
    s.add_argument("--denoise", type=float, default=None)
    s.add_argument("--variant", default="official")
    s.add_argument("--out", required=True)
    s.add_argument("--gradcam-out", default=None)
    s.set_defaults(fn=cmd_groupcam)
    s = sub.add_parser("score-cached")
    s.add_argument("--weights", required=True)
    s.add_argument("--whole", required=True)
    s.add_argument("--crops", required=True)
    s.add_argument("--cls", type=int, nargs="+", required=True)
    s.add_argument("--groups", type=int, default=16)
    s.add_argument("--scores-out", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_score_cached)
    s = sub.add_parser("load-final")
    s.add_argument("--arch", required=True)
    s.add_argument("--classes", type=int, required=True)
    s.add_argument("--weights", required=True)
    s.add_argument("--input", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_load_final)
    s = sub.add_parser("script-models")
    s.add_argument("--readme", required=True)
    s.add_argument("--classes", type=int, default=10)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_script_models)
    s = sub.add_parser("export")
    s.add_argument("--readme", default=os.path.join(os.path.dirname(__file__), "..", "..", "README.md"))
    s.add_argument("--arch", required=True)
    s.add_argument("--classes", type=int, default=1000)
    s.add_argument("--size", type=int, default=224)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_export)
    s = sub.add_parser("load-split")
    s.add_argument("--readme", required=True)
    s.add_argument("--arch", required=True)
    s.add_argument("--classes", type=int, required=True)
    s.add_argument("--weights", required=True)
    s.add_argument("--input", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_load_split)
    s = sub.add_parser("cmyk")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=lambda a: __import__("PIL.Image").Image.new("CMYK", (40, 30), (10, 200, 30, 0)).save(a.out, "JPEG"))
    s = sub.add_parser("python-objects")
    s.add_argument("--zip", required=True)
    s.add_argument("--pickle", required=True)
    s.add_argument("--marker", required=True)
    s.set_defaults(fn=cmd_python_objects)
    s = sub.add_parser("legacy")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_legacy)
    a = p.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
