"""The small CNN of the A/B (scripts/ab.py --arch small-cnn), as a TorchScript archive.

Fashion-MNIST's 28 px grey images (stored as RGB) at 32 px: five conv-BN-ReLU blocks
(3->32 @32, 32->64 stride 2 @16, 64->64 @16, 64->128 stride 2 @8, 128->128 @8), whose 8 x 8 x 128
output is the layer Group-CAM explains, then average pooling and a 10-way linear layer. About
29 M multiply-adds (58 MFLOPs) and 0.29 M parameters per 32 px image. Random weights, seeded
(torchvision's ResNet initialisation: Kaiming-normal convolutions, BatchNorm weight 1 bias 0,
nn.Linear's default). Written in the README's `Split` recipe form ("Any model through
TorchScript"): features(x) -> the target layer, head(a) -> logits, state_buffers(),
mean/std/input_size/sanity_layers/concurrent_eval attributes.

    .venv/bin/python scripts/ab_model.py --out small-cnn.pt [--seed 0] [--classes 10]
"""
import argparse
import os
from typing import Dict, List

import torch
from torch import nn

# Fashion-MNIST's training set: pixel mean and std of the 60,000 images, in [0, 1].
MEAN = (0.2860, 0.2860, 0.2860)
STD = (0.3530, 0.3530, 0.3530)
WIDTHS = [(3, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1)]


class Split(nn.Module):
    """A classifier as groupcam takes it: features(x) -> the target layer, head(a) -> logits."""

    mean: List[float]
    std: List[float]
    input_size: int
    sanity_layers: List[str]
    concurrent_eval: bool

    def __init__(self, body, top, input_size=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
        super().__init__()
        self.body, self.top = body, top
        self.mean, self.std, self.input_size = list(mean), list(std), input_size
        # features and head in eval mode write no attribute: groupcam may score on several threads.
        self.concurrent_eval = True
        # The units the sanity checks randomise, input to output: the children with parameters.
        self.sanity_layers = [
            n for n, m in self.named_modules() if n.count(".") == 1 and len(list(m.parameters())) > 0
        ]

    @torch.jit.export
    def features(self, x):
        return self.body(x)

    @torch.jit.export
    def head(self, a):
        return self.top(a)

    @torch.jit.export
    def state_buffers(self) -> Dict[str, torch.Tensor]:
        # BatchNorm statistics, so that checkpoints hold them. In TorchScript named_buffers()
        # is not recursive: gather them module by module.
        out: Dict[str, torch.Tensor] = {}
        for prefix, m in self.named_modules():
            for name, b in m.named_buffers():
                out[prefix + "." + name if prefix != "" else name] = b
        return out

    def forward(self, x):
        return self.head(self.features(x))


def small_cnn(classes=10, seed=0, input_size=32):
    """The eager Split module, random weights drawn from `seed`."""
    g = torch.Generator().manual_seed(seed)
    blocks = []
    for cin, cout, stride in WIDTHS:
        conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        with torch.no_grad():
            std = (2.0 / (cout * 9)) ** 0.5  # kaiming_normal_(mode="fan_out", nonlinearity="relu")
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * std)
        blocks.append(nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True)))
    fc = nn.Linear(WIDTHS[-1][1], classes)
    with torch.no_grad():
        bound = 1.0 / WIDTHS[-1][1] ** 0.5  # nn.Linear's default: U(+-1/sqrt(fan_in)) for both
        fc.weight.copy_((torch.rand(fc.weight.shape, generator=g) * 2 - 1) * bound)
        fc.bias.copy_((torch.rand(fc.bias.shape, generator=g) * 2 - 1) * bound)
    top = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), fc)
    return Split(nn.Sequential(*blocks), top, input_size=input_size, mean=MEAN, std=STD).eval()


def cost(model, size):
    """(multiply-adds, parameters, target-layer shape) of one size x size image."""
    macs = 0
    x = torch.zeros(1, 3, size, size)

    def hook(m, inp, out):
        nonlocal macs
        if isinstance(m, nn.Conv2d):
            macs += out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            macs += m.in_features * m.out_features

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        a = model.features(x)
        model.head(a)
    for h in hs:
        h.remove()
    return macs, sum(p.numel() for p in model.parameters()), tuple(a.shape[1:])


def export(path, seed=0, classes=10, input_size=32):
    """Writes the scripted model to `path` (through a temporary file); returns its cost."""
    model = small_cnn(classes, seed, input_size)
    info = cost(model, input_size)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        x = torch.randn(4, 3, input_size, input_size, generator=torch.Generator().manual_seed(1))
        assert torch.allclose(scripted(x), model(x), atol=1e-5), "scripted and eager logits differ"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    scripted.save(tmp)
    os.replace(tmp, path)
    return info


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--input-size", type=int, default=32)
    a = p.parse_args()
    macs, params, shape = export(a.out, a.seed, a.classes, a.input_size)
    print(f"{a.out}: small CNN, {macs / 1e6:.1f} M multiply-adds, {params / 1e6:.3f} M parameters, "
          f"target layer {shape[0]} x {shape[1]} x {shape[2]} at {a.input_size} px (seed {a.seed})")


if __name__ == "__main__":
    main()
