#!/usr/bin/env python3
"""Three torch-built test networks with the ops TPU-MLIR lowers to INT8 beyond Conv/Add/Pool (issue 12).

    python reference/tpu_mlir/torch_nets.py OUT_DIR [--images DIR]

Random weights (seeded), BatchNorm statistics calibrated on real images (train-mode forward passes over the
first 32 images of ``--images``, default the zoo's ``images100``), then exported with the TorchScript ONNX
exporter at opset 13.  Each takes a 1x3x64x64 image (``--resize_dims 64,64 --mean 127.5,127.5,127.5 --scale
0.0078125,0.0078125,0.0078125``, RGB).

* ``mbv3s``: MobileNetV3-small-style blocks: Conv-BN-HardSwish stem (``nn.Hardswish``, which opset 13 exports
  as HardSigmoid + Mul), inverted residuals with squeeze-and-excitation (GlobalAveragePool, 1x1 Conv, ReLU,
  1x1 Conv, hard-sigmoid gate written out as ``relu6(x + 3) / 6`` = Add/Clip/Div, SE ``Mul``), one HardSwish
  written out as ``x * relu6(x + 3) / 6`` (Add/Clip/Mul/Div, as the text detector of issue 12 has it), a
  residual Add, a constant ``Sub`` and ``Mul`` (input normalisation inside the model), a GAP + Linear head.
* ``yolo5n``: a YOLOv5-n-style backbone + neck: Conv-BN-SiLU (``nn.SiLU``: Sigmoid + Mul), C3 blocks with
  bottlenecks, SPPF (MaxPool 5x5 three times, Concat), nearest ``Upsample`` x2, Concat, and a Detect head
  (1x1 Convs, Reshape, Permute, Sigmoid).
* ``fpn``: a small FPN: Conv-BN-ReLU backbone, lateral 1x1 Convs, bilinear ``Resize`` (align_corners False)
  plus Add, a nearest Resize to a fixed size, ConvTranspose 2x2 stride 2 and 4x4 stride 2 heads, Pad,
  LeakyRelu, a Tanh and a Mish-like ``x * tanh(softplus(x))``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

SIZE = 64
PRE = dict(resize_dims=f"{SIZE},{SIZE}", mean="127.5,127.5,127.5", scale="0.0078125,0.0078125,0.0078125",
           pixel_format="rgb")


def _nets():
    import torch
    import torch.nn.functional as F
    from torch import nn

    def cbn(cin, cout, k=3, s=1, g=1, act=None):
        layers = [nn.Conv2d(cin, cout, k, s, (k - 1) // 2, groups=g, bias=False), nn.BatchNorm2d(cout)]
        if act is not None:
            layers.append(act)
        return nn.Sequential(*layers)

    class HSwishExplicit(nn.Module):  # x * relu6(x + 3) / 6, as many detectors write it
        def forward(self, x):
            return x * F.relu6(x + 3.0) / 6.0

    class HSigmoidExplicit(nn.Module):  # relu6(x + 3) / 6
        def forward(self, x):
            return F.relu6(x + 3.0) / 6.0

    class SE(nn.Module):
        def __init__(self, c, r=4):
            super().__init__()
            self.fc1 = nn.Conv2d(c, c // r, 1)
            self.fc2 = nn.Conv2d(c // r, c, 1)
            self.gate = HSigmoidExplicit()

        def forward(self, x):
            s = F.adaptive_avg_pool2d(x, 1)
            s = self.gate(self.fc2(F.relu(self.fc1(s))))
            return x * s

    class IR(nn.Module):
        def __init__(self, cin, cexp, cout, k, s, se, act):
            super().__init__()
            self.use_res = s == 1 and cin == cout
            self.exp = cbn(cin, cexp, 1, act=act()) if cexp != cin else nn.Identity()
            self.dw = cbn(cexp, cexp, k, s, g=cexp, act=act())
            self.se = SE(cexp) if se else nn.Identity()
            self.proj = cbn(cexp, cout, 1)

        def forward(self, x):
            y = self.proj(self.se(self.dw(self.exp(x))))
            return x + y if self.use_res else y

    class MBV3S(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = cbn(3, 16, 3, 2, act=nn.Hardswish())
            self.blocks = nn.Sequential(
                IR(16, 16, 16, 3, 2, True, nn.ReLU),
                IR(16, 72, 24, 3, 2, False, nn.ReLU),
                IR(24, 88, 24, 3, 1, False, nn.ReLU),
                IR(24, 96, 40, 5, 2, True, HSwishExplicit),
                IR(40, 120, 40, 5, 1, True, nn.Hardswish),
            )
            self.last = cbn(40, 96, 1, act=HSwishExplicit())
            self.fc = nn.Linear(96, 10)

        def forward(self, x):
            x = (x - 0.25) * 1.5  # constant Sub and Mul in the model
            x = self.last(self.blocks(self.stem(x)))
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    class CBS(nn.Module):  # Conv-BN-SiLU
        def __init__(self, cin, cout, k=1, s=1):
            super().__init__()
            self.m = cbn(cin, cout, k, s, act=nn.SiLU())

        def forward(self, x):
            return self.m(x)

    class Bottleneck(nn.Module):
        def __init__(self, c, shortcut=True):
            super().__init__()
            self.cv1, self.cv2, self.add = CBS(c, c, 1), CBS(c, c, 3), shortcut

        def forward(self, x):
            y = self.cv2(self.cv1(x))
            return x + y if self.add else y

    class C3(nn.Module):
        def __init__(self, cin, cout, n=1, shortcut=True):
            super().__init__()
            h = cout // 2
            self.cv1, self.cv2, self.cv3 = CBS(cin, h), CBS(cin, h), CBS(2 * h, cout)
            self.m = nn.Sequential(*[Bottleneck(h, shortcut) for _ in range(n)])

        def forward(self, x):
            return self.cv3(torch.cat([self.m(self.cv1(x)), self.cv2(x)], 1))

    class SPPF(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            h = cin // 2
            self.cv1, self.cv2 = CBS(cin, h), CBS(4 * h, cout)
            self.mp = nn.MaxPool2d(5, 1, 2)

        def forward(self, x):
            x = self.cv1(x)
            y1 = self.mp(x)
            y2 = self.mp(y1)
            return self.cv2(torch.cat([x, y1, y2, self.mp(y2)], 1))

    class Yolo5n(nn.Module):
        def __init__(self, nc=3, na=3):
            super().__init__()
            self.no, self.na = nc + 5, na
            self.b0 = CBS(3, 16, 6, 2)  # 32
            self.b1 = CBS(16, 32, 3, 2)  # 16
            self.b2 = C3(32, 32)
            self.b3 = CBS(32, 64, 3, 2)  # 8
            self.b4 = C3(64, 64)
            self.b5 = CBS(64, 96, 3, 2)  # 4
            self.b6 = SPPF(96, 96)
            self.h0 = CBS(96, 64, 1)
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.h1 = C3(128, 64, shortcut=False)
            self.h2 = CBS(64, 32, 1)
            self.h3 = C3(64, 32, shortcut=False)  # 16x16
            self.d0 = nn.Conv2d(32, na * self.no, 1)
            self.d1 = nn.Conv2d(64, na * self.no, 1)

        def forward(self, x):
            x2 = self.b2(self.b1(self.b0(x)))
            x4 = self.b4(self.b3(x2))
            x6 = self.b6(self.b5(x4))
            p5 = self.h0(x6)
            p4 = self.h1(torch.cat([self.up(p5), x4], 1))
            q4 = self.h2(p4)
            p3 = self.h3(torch.cat([self.up(q4), x2], 1))
            outs = []
            for d, p in ((self.d0, p3), (self.d1, p4)):
                y = d(p)
                b, _, h, w = y.shape
                y = y.view(b, self.na, self.no, h, w).permute(0, 1, 3, 4, 2)
                outs.append(y.sigmoid())
            return tuple(outs)

    class FPN(nn.Module):
        def __init__(self):
            super().__init__()
            r = nn.ReLU
            self.c1 = cbn(3, 16, 3, 2, act=r())  # 32
            self.c2 = cbn(16, 32, 3, 2, act=r())  # 16
            self.c3 = cbn(32, 48, 3, 2, act=r())  # 8
            self.l1, self.l2, self.l3 = nn.Conv2d(16, 24, 1), nn.Conv2d(32, 24, 1), nn.Conv2d(48, 24, 1)
            self.s2 = cbn(24, 24, 3, act=nn.LeakyReLU(0.1))
            self.up = nn.ConvTranspose2d(24, 16, 2, 2)
            self.up4 = nn.ConvTranspose2d(24, 8, 4, 2, 1, bias=False)
            self.head = nn.Conv2d(24, 4, 3, padding=0)

        def forward(self, x):
            f1 = self.c1(x)
            f2 = self.c2(f1)
            f3 = self.c3(f2)
            p3 = self.l3(f3)
            p2 = self.l2(f2) + F.interpolate(p3, scale_factor=2.0, mode="bilinear", align_corners=False)
            p2 = self.s2(p2)
            p1 = self.l1(f1) + F.interpolate(p2, size=(32, 32), mode="nearest")
            a = self.up(p2)  # 32x32, 16 ch
            b = self.up4(p1)  # 64x64, 8 ch
            m = p1 * torch.tanh(F.softplus(p1))  # Mish written out
            h = self.head(F.pad(m, (1, 1, 1, 1)))
            return torch.tanh(a), b, h

    return {"mbv3s": MBV3S, "yolo5n": Yolo5n, "fpn": FPN}


def _images(folder: Path, n: int):
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]
    xs = []
    for f in files:
        im = Image.open(f).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
        xs.append((np.asarray(im, np.float32) - 127.5) * 0.0078125)
    return np.stack(xs).transpose(0, 3, 1, 2).copy()


def build(name: str, images: Path, seed: int = 12):
    """The torch module ``name``, its BatchNorm statistics calibrated on the first 32 images."""
    import torch

    torch.manual_seed(seed + sum(map(ord, name)))
    net = _nets()[name]()
    x = torch.from_numpy(_images(images, 32))
    net.train()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None  # cumulative average over the passes
                # random but non-trivial affine parameters
                m.weight.uniform_(0.6, 1.4)
                m.bias.uniform_(-0.2, 0.2)
        for i in range(0, 32, 8):
            net(x[i : i + 8])
    net.eval()
    return net


def export(name: str, out: Path, images: Path) -> Path:
    import torch

    net = build(name, images)
    path = out / f"{name}.onnx"
    dummy = torch.zeros(1, 3, SIZE, SIZE)
    torch.onnx.export(net, (dummy,), str(path), opset_version=13, input_names=["input"], dynamo=False,
                      do_constant_folding=True)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--images", type=Path, default=Path.home() / ".cache/qsens/zoo/images100")
    ap.add_argument("--nets", default="mbv3s,yolo5n,fpn")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    for n in a.nets.split(","):
        print(export(n, a.out, a.images))


if __name__ == "__main__":
    sys.exit(main())
