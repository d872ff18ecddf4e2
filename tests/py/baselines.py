"""PyTorch references for the baselines (Grad-CAM, Grad-CAM++, Score-CAM, RISE) on
EfficientNet-Lite0, written from the papers and the widely used implementations
(pytorch-grad-cam for Grad-CAM/Grad-CAM++, the authors' code for Score-CAM and RISE),
one image and one mask at a time. Usage: baselines.py METHOD --weights W --input X.npy --out M.npy
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixtures import gradcam_reference, load_effnet, minmax, save_npy  # noqa: E402

torch.set_grad_enabled(False)


def head(model, a):
    return model._fc(model._dropout(model._avg_pooling(a).flatten(1)))


def acts_grad(model, x, cls):
    with torch.enable_grad():
        a = model.extract_features(x).detach().requires_grad_(True)
        logits = head(model, a)
        if cls is None:
            cls = int(logits.argmax(1))
        (grad,) = torch.autograd.grad(logits[0, cls], a)
    return a.detach(), grad, cls


def up(m, h, w):
    return F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)


def gradcampp(model, x, cls):
    # pytorch-grad-cam GradCAMPlusPlus.get_cam_weights, in torch.
    _, _, h, w = x.shape
    a, grads, cls = acts_grad(model, x, cls)
    g2 = grads ** 2
    g3 = g2 * grads
    sum_a = a.sum((2, 3), keepdim=True)
    aij = g2 / (2 * g2 + sum_a * g3 + 1e-6)
    aij = torch.where(grads != 0, aij, torch.zeros_like(aij))
    weights = (torch.clamp(grads, min=0) * aij).sum((2, 3), keepdim=True)
    cam = F.relu((weights * a).sum(1, keepdim=True))
    return minmax(up(cam, h, w))[0, 0]


def scorecam(model, x, cls):
    # haofanwang/Score-CAM cam/scorecam.py, one channel at a time.
    _, _, h, w = x.shape
    a = model.extract_features(x)
    if cls is None:
        cls = int(head(model, a).argmax(1))
    total = torch.zeros(1, 1, h, w)
    for i in range(a.shape[1]):
        m = up(a[:, i:i + 1], h, w)
        if m.max() == m.min():
            continue
        norm = (m - m.min()) / (m.max() - m.min())
        score = F.softmax(model(x * norm), -1)[0, cls]
        total += score * m
    return minmax(F.relu(total))[0, 0]


def rise(model, x, cls, masks, p1):
    # eclique/RISE explanations.py forward, with the masks given, one mask at a time.
    if cls is None:
        cls = int(model(x).argmax(1))
    n = masks.shape[0]
    sal = torch.zeros(x.shape[2:])
    for i in range(n):
        p = F.softmax(model(x * masks[i:i + 1]), -1)[0, cls]
        sal += p * masks[i, 0]
    return minmax(sal / n / p1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("method", choices=["gradcam", "gradcampp", "scorecam", "rise"])
    p.add_argument("--weights", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--cls", type=int, default=-1)
    p.add_argument("--masks", default=None)
    p.add_argument("--keep", type=float, default=0.5)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    model = load_effnet(a.weights)
    x = torch.from_numpy(np.load(a.input))
    cls = None if a.cls < 0 else a.cls
    if a.method == "gradcam":
        if cls is None:
            cls = int(model(x).argmax(1))
        m = gradcam_reference(model, x, cls)
    elif a.method == "gradcampp":
        m = gradcampp(model, x, cls)
    elif a.method == "scorecam":
        m = scorecam(model, x, cls)
    else:
        m = rise(model, x, cls, torch.from_numpy(np.load(a.masks)), a.keep)
    save_npy(a.out, m)


if __name__ == "__main__":
    main()
