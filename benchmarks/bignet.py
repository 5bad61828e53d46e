"""A larger network for speed and memory runs only: a ResNet-50-shaped ONNX export with random, BatchNorm-calibrated
weights (never for accuracy claims).

    python benchmarks/bignet.py [OUT.onnx]   # default: <qsens cache>/bench/resnet50_random.onnx

ResNet-50 v1.5 (bottleneck blocks 3-4-6-3, stride on the 3x3 conv, 224 px, 1000 classes, 25.6 M parameters,
4.1 GFLOP per image): 4.8x EfficientNet-Lite2's work per image and 4x its weights.  Weights are He-initialised
from ``torch.manual_seed(0)``; the BatchNorm statistics are then set by a forward pass in training mode over the
100 real images of ``images100`` (cumulative averages, momentum None), so activations have realistic ranges for
calibration.  Exported with torch's TorchScript exporter (opset 13, dynamic batch), checked against onnxruntime.
Needs the experiments extras (torch, onnxruntime).  Used by ``benchmarks/scaling.py --bignet``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def resnet50(torch):
    nn = torch.nn

    class Bottleneck(nn.Module):
        def __init__(self, cin, width, stride):
            super().__init__()
            cout = width * 4
            self.c1, self.b1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width, momentum=None)
            self.c2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
            self.b2 = nn.BatchNorm2d(width, momentum=None)
            self.c3, self.b3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout, momentum=None)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout, momentum=None))

        def forward(self, x):
            y = torch.relu(self.b1(self.c1(x)))
            y = torch.relu(self.b2(self.c2(y)))
            y = self.b3(self.c3(y))
            return torch.relu(y + (x if self.down is None else self.down(x)))

    class ResNet50(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64, momentum=None),
                                      nn.ReLU(), nn.MaxPool2d(3, 2, 1))
            blocks, cin = [], 64
            for width, n, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
                for k in range(n):
                    blocks.append(Bottleneck(cin, width, stride if k == 0 else 1))
                    cin = width * 4
            self.blocks = nn.Sequential(*blocks)
            self.fc = nn.Linear(2048, 1000)

        def forward(self, x):
            y = self.blocks(self.stem(x))
            return self.fc(torch.flatten(torch.mean(y, dim=(2, 3), keepdim=True), 1))

    return ResNet50()


def build(out: Path) -> Path:
    import onnx
    import onnxruntime as ort
    import torch

    from qsens.data.dataset import select_files
    from qsens.onnx import to_jax
    from qsens.pipeline import load_inputs, make_preprocess
    from qsens.zoo import zoo_path

    torch.manual_seed(0)
    net = resnet50(torch)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.onnx")
    x = torch.randn(2, 3, 224, 224)
    # BatchNorm statistics from the real images (preprocessed as qsens will for this model: ImageNet mean/std)
    torch.onnx.export(net.eval(), (x,), str(tmp), dynamo=False, opset_version=13, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    fn, _ = to_jax(str(tmp))
    pp = make_preprocess(fn.graph)
    files = select_files(dataset=str(zoo_path("images100")), data_list=None, input_num=100, seed=1684)
    imgs = torch.from_numpy(next(iter(load_inputs(files, fn.graph, pp).values())))
    net.train()
    with torch.no_grad():
        for k in range(0, len(imgs), 25):
            net(imgs[k : k + 25])
    net.eval()
    torch.onnx.export(net, (x,), str(tmp), dynamo=False, opset_version=13, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    onnx.checker.check_model(onnx.load(str(tmp)), full_check=True)
    with torch.no_grad():
        want = net(imgs[:4]).numpy()
    got = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"]).run(None, {"input": imgs[:4].numpy()})[0]
    err = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
    if err > 1e-4:
        raise SystemExit(f"{tmp}: onnxruntime differs from torch by {err:.2e} (relative)")
    tmp.replace(out)
    print(f"wrote {out} (onnxruntime vs torch: {err:.1e} relative; logits std {want.std():.2f})")
    return out


def default_path() -> Path:
    from qsens.zoo import cache_dir

    return Path(cache_dir()) / "bench" / "resnet50_random.onnx"


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else default_path())
