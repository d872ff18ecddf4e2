"""PyTorch side of the tests: fixtures and reference results the Rust code must reproduce.

Every command writes .npy / weight files into --out; nothing is downloaded.
"""
import argparse
import os

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
    _, _, h, w = x.shape
    with torch.enable_grad():
        a = model.extract_features(x).detach().requires_grad_(True)
        logits = model._fc(model._dropout(model._avg_pooling(a).flatten(1)))
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
    s = sub.add_parser("load-final")
    s.add_argument("--arch", required=True)
    s.add_argument("--classes", type=int, required=True)
    s.add_argument("--weights", required=True)
    s.add_argument("--input", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_load_final)
    s = sub.add_parser("cmyk")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=lambda a: __import__("PIL.Image").Image.new("CMYK", (40, 30), (10, 200, 30, 0)).save(a.out, "JPEG"))
    s = sub.add_parser("legacy")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_legacy)
    a = p.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
