"""qsens image preprocessing equals the real TPU-MLIR 1.23's, bit for bit.

``tests/fixtures/preprocess/reference.npz`` holds what TPU-MLIR's own ``utils.preprocess`` produced for the
small committed images in ``tests/fixtures/preprocess/images/`` under 20 flag sets (stretch, letterbox
centre/normal with pad value 0/114/300, short-side scale, extra centre crop, bgr/rgb/gray/rgba, nchw/nhwc);
``reference.json`` lists the flags and the command that made them (``make_reference.py --check-mlir``, which
also checked each array against ``model_transform.py --test_input``, the Input-op attributes ->
``load_config`` -> ``run`` path the calibration tools use).  CI has no TPU-MLIR: the arrays are the oracle.

Equality is exact (``array_equal`` on float32): both sides decode with OpenCV, resize uint8 with the same
``cv2.resize`` (bit-identical across OpenCV 4.8 / 5.0), and normalise with the same two float32 numpy ops.
"""

from __future__ import annotations

import hashlib
import json
import types
from pathlib import Path

import numpy as np
import pytest

from qsens.data.preprocess import PRESETS, Preprocess, load_image, parse_dims, parse_floats
from qsens.errors import DatasetError
from qsens.pipeline import make_preprocess

FIX = Path(__file__).parent / "fixtures" / "preprocess"
META = json.loads((FIX / "reference.json").read_text())
CASES = META["cases"]


@pytest.fixture(scope="module")
def reference():
    with np.load(FIX / "reference.npz") as z:
        return {k: z[k] for k in z.files}


def _graph(input_shape):
    """The two attributes make_preprocess reads from a converted model."""
    return types.SimpleNamespace(inputs=["input"], input_shapes=[list(input_shape)])


def _from_flags(input_shape, flags: dict) -> Preprocess:
    """What the qsens CLI builds from the same TPU-MLIR flag strings (parsed as the CLI parses them)."""
    return make_preprocess(
        _graph(input_shape),
        resize_dims=parse_dims(flags["resize_dims"]) if "resize_dims" in flags else None,
        keep_aspect_ratio=flags.get("keep_aspect_ratio"),
        keep_ratio_mode=flags.get("keep_ratio_mode"),
        pad_type=flags.get("pad_type"),
        pad_value=flags.get("pad_value"),
        pixel_format=flags.get("pixel_format"),
        channel_format=flags.get("channel_format"),
        mean=parse_floats(flags["mean"]) if "mean" in flags else None,
        scale=parse_floats(flags["scale"]) if "scale" in flags else None,
    )


PAIRS = [(case, img) for case, c in CASES.items() for img in c["images"]]


@pytest.mark.parametrize("case,img", PAIRS, ids=[f"{c}-{i.split('.')[0]}" for c, i in PAIRS])
def test_equals_tpu_mlir(reference, case, img):
    c = CASES[case]
    pp = _from_flags(c["input_shapes"][0], c["flags"])
    assert pp.net_hw == tuple(c["net_hw"])
    ref = reference[f"{case}/{img}"]
    got = load_image(str(FIX / "images" / img), pp)
    assert got.dtype == ref.dtype == np.float32
    assert got.shape == ref.shape == pp.input_shape(1)[1:]
    np.testing.assert_array_equal(got, ref)


def test_fixture_covers_the_modes():
    assert META["tpu_mlir"] == "1.23" and META["model_transform_path_checked"] is True
    flags = [c["flags"] for c in CASES.values()]
    lb = [f for f in flags if f.get("keep_aspect_ratio") and f.get("keep_ratio_mode", "letterbox") == "letterbox"]
    assert {(f.get("pad_type", "center"), f.get("pad_value", 0)) for f in lb} >= {
        ("center", 0), ("center", 114), ("normal", 0), ("normal", 114)}
    assert any(f.get("keep_ratio_mode") == "short_side_scale" for f in flags)
    assert any(not f.get("keep_aspect_ratio") for f in flags)
    assert {f.get("pixel_format") for f in flags} == {"bgr", "rgb", "gray", "rgba"}
    assert {f.get("channel_format", "nchw") for f in flags} == {"nchw", "nhwc"}
    assert len(PAIRS) >= 80


def test_letterbox_is_the_default_keep_ratio_mode(reference):
    pp = Preprocess(resize_dims=None, keep_aspect_ratio=True, net_hw=(32, 40))
    assert (pp.keep_ratio_mode, pp.pad_type, pp.pad_value) == ("letterbox", "center", 0)
    pp2 = make_preprocess(_graph([1, 3, 32, 40]), keep_aspect_ratio=True)
    assert pp2 == pp
    # 45x77 -> s = 40/77, int(77*s) = 39 (float truncation) x int(45*s) = 23: 4 pad rows on top, 5 below,
    # no column on the left, one on the right (pad 0 -> all three channels 0)
    x = load_image(str(FIX / "images" / "a_wide.jpg"), pp)
    np.testing.assert_array_equal(x, reference["lb_center_p0/a_wide.jpg"])
    assert (x[:, :4] == 0).all() and (x[:, 27:] == 0).all() and (x[:, :, 39] == 0).all()
    assert (x[:, 4:27, :39].reshape(3, -1).max(1) > 0).all()


def test_efficientnet_lite_presets_are_tpu_mlir_flags():
    """The presets = ``--resize_dims 256,256 --keep_aspect_ratio --pixel_format rgb --mean 127,.. --scale 0.0078125,..``."""
    for name, size, resize in (("efficientnet_lite0", 224, "256,256"), ("efficientnet_lite2", 260, "297,297")):
        flags = {"resize_dims": resize, "keep_aspect_ratio": True, "pixel_format": "rgb",
                 "mean": "127,127,127", "scale": "0.0078125,0.0078125,0.0078125"}
        assert PRESETS[name] == _from_flags([1, 3, size, size], flags)
        assert PRESETS[name].keep_ratio_mode == "letterbox"
        ss = make_preprocess(_graph([1, 3, size, size]), preset=name, keep_ratio_mode="short_side_scale")
        assert ss.keep_ratio_mode == "short_side_scale" and ss.resize_dims == PRESETS[name].resize_dims


@pytest.mark.zoo
@pytest.mark.parametrize("preset", ["efficientnet_lite0", "efficientnet_lite2"])
def test_lite_presets_equal_tpu_mlir_on_zoo_images(zoo, preset):
    """Full size (224/260) on the zoo's images of various aspect ratios: sha256 of TPU-MLIR's float32 array."""
    spec = META["zoo_cases"][preset]
    assert PRESETS[preset].net_hw == tuple(spec["net_hw"])
    checked = 0
    for row in spec["images"]:
        f = Path(zoo) / "images" / row["file"]
        if not f.is_file() or hashlib.sha256(f.read_bytes()).hexdigest() != row["file_sha256"]:
            continue  # not the image the reference was made from
        x = np.ascontiguousarray(load_image(str(f), PRESETS[preset]))
        assert list(x.shape) == row["shape"]
        assert hashlib.sha256(x.tobytes()).hexdigest() == row["array_sha256"], row["file"]
        checked += 1
    assert checked >= 4, f"only {checked} of the reference images found in the zoo"


def test_rgba_letterbox_rejected_and_flag_validation():
    with pytest.raises(ValueError, match="letterbox"):
        Preprocess(None, True, (8, 8), pixel_format="rgba", mean=(0,) * 4, scale=(1,) * 4)
    Preprocess(None, True, (8, 8), pixel_format="rgba", mean=(0,) * 4, scale=(1,) * 4,
               keep_ratio_mode="short_side_scale")
    with pytest.raises(DatasetError, match="letterbox"):
        make_preprocess(_graph([1, 4, 8, 8]), keep_aspect_ratio=True, pixel_format="rgba", mean=(0,) * 4, scale=(1,) * 4)
    with pytest.raises(ValueError, match="keep_ratio_mode"):
        Preprocess(None, True, (8, 8), keep_ratio_mode="fit")
    with pytest.raises(ValueError, match="pad_type"):
        Preprocess(None, True, (8, 8), pad_type="left")
    with pytest.raises(ValueError, match="pad_value"):
        Preprocess(None, True, (8, 8), pad_value=1.5)


def test_extreme_aspect_ratio_names_the_file(tmp_path):
    import cv2

    p = tmp_path / "line.png"
    cv2.imwrite(str(p), np.full((1, 200, 3), 50, np.uint8))
    with pytest.raises(DatasetError, match="line.png: .*aspect ratio too extreme"):
        load_image(str(p), Preprocess(None, True, (24, 24)))  # letterbox height int(1*24/200) = 0
