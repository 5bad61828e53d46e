"""Image preprocessing equals TPU-MLIR's (OpenCV decode, uint8 INTER_LINEAR resize, crop, (x-mean)*scale)."""

import types

import cv2
import numpy as np
import pytest
from PIL import Image

from qsens.data import (
    PRESETS,
    ParseError,
    Preprocess,
    iter_batches,
    load_batch,
    load_image,
    parse_dims,
    parse_floats,
    parse_input_shapes,
)
from qsens.errors import DatasetError


def _img(tmp_path, h, w, name="x.png", seed=0):
    rng = np.random.default_rng(seed)
    # smooth-ish content so interpolation matters, plus noise
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), (xx + yy) % 256], -1)
    img = np.clip(base + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)  # BGR as cv2 stores
    p = tmp_path / name
    assert cv2.imwrite(str(p), img)
    return str(p), img


def _tpu_mlir_reference(path, pp: Preprocess):
    """Transcription of TPU-MLIR preprocess.run (batch 1; bgr/rgb/gray, pad_value 0..255).

    (tests/test_preprocess_tpu_mlir.py compares with arrays made by the real TPU-MLIR.)"""
    c = 1 if pp.pixel_format == "gray" else 3
    image = cv2.imread(path, cv2.IMREAD_GRAYSCALE if c == 1 else cv2.IMREAD_COLOR)
    net = list(pp.net_hw)
    resize = [max(x, y) for x, y in zip(pp.resize_dims or net, net)]
    h, w = resize
    if pp.keep_aspect_ratio and pp.keep_ratio_mode == "letterbox":
        ih, iw = image.shape[:2]
        scale = min(float(w) / iw, float(h) / ih)
        rescale_w, rescale_h = int(iw * scale), int(ih * scale)
        r = cv2.resize(image, (rescale_w, rescale_h))
        paste_w, paste_h = ((w - rescale_w) // 2, (h - rescale_h) // 2) if pp.pad_type == "center" else (0, 0)
        image = np.full((h, w) + r.shape[2:], pp.pad_value, dtype=r.dtype)
        image[paste_h : paste_h + rescale_h, paste_w : paste_w + rescale_w] = r
    elif pp.keep_aspect_ratio:
        ih, iw = image.shape[:2]
        scale = max(float(w) / iw, float(h) / ih)
        rescale_w = int(iw * scale) if iw * scale >= w else w
        rescale_h = int(ih * scale) if ih * scale >= h else h
        r = cv2.resize(image, (rescale_w, rescale_h))
        sh = (rescale_h - h) // 2 if rescale_h - h > 0 else 0
        sw = (rescale_w - w) // 2 if rescale_w - w > 0 else 0
        image = r[sh : sh + h, sw : sw + w]
    else:
        image = cv2.resize(image, (w, h))
    image = np.expand_dims(image, 0) if c == 1 else np.transpose(image, (2, 0, 1))
    x = image[None]
    if resize != net:
        H, W = x.shape[2:]
        start_h = H // 2 - net[0] // 2
        start_w = W // 2 - net[1] // 2
        x = x[:, :, start_h : start_h + net[0], start_w : start_w + net[1]]
    x = x.astype(np.float32)
    mean = np.array(pp.mean, np.float32)[None, :, None, None][:, :c]
    scale = np.array(pp.scale, np.float32)[None, :, None, None][:, :c]
    if pp.pixel_format == "rgb":
        x = x[:, [2, 1, 0], :, :]
    x = (x - mean) * scale
    if pp.channel_format == "nhwc":
        x = np.transpose(x, (0, 2, 3, 1))
    return x[0]


@pytest.mark.parametrize("src_hw", [(375, 500), (500, 375), (224, 224), (97, 131), (300, 256), (256, 300)])
@pytest.mark.parametrize("preset", ["efficientnet_lite0", "efficientnet_lite2", "mtcnn_rnet"])
def test_presets_match_tpu_mlir_transcription(tmp_path, src_hw, preset):
    path, _ = _img(tmp_path, *src_hw)
    pp = PRESETS[preset]
    got = load_image(path, pp)
    ref = _tpu_mlir_reference(path, pp)
    assert got.dtype == np.float32 and got.shape == (3, *pp.net_hw)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("dst_hw", [(12, 12), (24, 37), (48, 48), (100, 60), (513, 257)])
def test_stretch_resize_equals_cv2_inter_linear(tmp_path, dst_hw):
    path, bgr = _img(tmp_path, 131, 97)
    pp = Preprocess(
        resize_dims=None,
        keep_aspect_ratio=False,
        net_hw=dst_hw,
        pixel_format="bgr",
        mean=(0, 0, 0),
        scale=(1, 1, 1),
    )
    got = load_image(path, pp)
    expect = cv2.resize(bgr, (dst_hw[1], dst_hw[0]), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(got, np.transpose(expect, (2, 0, 1)).astype(np.float32))


def test_rgb_mean_scale_hand_values(tmp_path):
    # 2x2 image, no resize: pure channel swap + (x - mean) * scale
    bgr = np.array([[[10, 20, 30], [40, 50, 60]], [[70, 80, 90], [100, 110, 120]]], np.uint8)
    p = tmp_path / "t.png"
    cv2.imwrite(str(p), bgr)
    pp = Preprocess(
        resize_dims=None,
        keep_aspect_ratio=False,
        net_hw=(2, 2),
        pixel_format="rgb",
        mean=(127.0, 127.0, 127.0),
        scale=(1 / 128,) * 3,
    )
    x = load_image(str(p), pp)
    assert x.shape == (3, 2, 2)
    assert x[0, 0, 0] == (30 - 127) / 128  # R of pixel (0,0)
    assert x[2, 0, 0] == (10 - 127) / 128  # B
    assert x[0, 1, 1] == (120 - 127) / 128
    pp_bgr = Preprocess(
        resize_dims=None,
        keep_aspect_ratio=False,
        net_hw=(2, 2),
        pixel_format="bgr",
        channel_format="nhwc",
        mean=(1, 2, 3),
        scale=(0.5, 1, 2),
    )
    y = load_image(str(p), pp_bgr)
    assert y.shape == (2, 2, 3)
    np.testing.assert_array_equal(y[0, 1], [(40 - 1) * 0.5, (50 - 2) * 1, (60 - 3) * 2])


def test_keep_aspect_short_side_geometry(tmp_path):
    # 375x500 -> short side 256: 341x256, centre 256x256 crop at x=(341-256)//2=42, then 224 crop at 16
    # (keep_ratio_mode given explicitly: TPU-MLIR's and now qsens's default for keep_aspect_ratio is letterbox)
    path, bgr = _img(tmp_path, 375, 500)
    pp = Preprocess(resize_dims=(256, 256), keep_aspect_ratio=True, net_hw=(224, 224), pixel_format="bgr",
                    keep_ratio_mode="short_side_scale")
    got = load_image(path, pp)
    r = cv2.resize(bgr, (341, 256), interpolation=cv2.INTER_LINEAR)
    expect = r[0:256, 42:298][16:240, 16:240]
    np.testing.assert_array_equal(got, np.transpose(expect, (2, 0, 1)).astype(np.float32))


@pytest.mark.parametrize("pad_type,pad_value", [("center", 0), ("center", 114), ("normal", 0), ("normal", 114)])
def test_keep_aspect_letterbox_geometry(tmp_path, pad_type, pad_value):
    # 375x500 -> long side 256: s = 256/500, 256x192 (int(375*s) = 192); centre: pad rows 32 above, 32 below;
    # normal: 64 rows below; then the 224 centre crop at 16
    path, bgr = _img(tmp_path, 375, 500)
    pp = Preprocess(resize_dims=(256, 256), keep_aspect_ratio=True, net_hw=(224, 224), pixel_format="bgr",
                    pad_type=pad_type, pad_value=pad_value)
    assert pp.keep_ratio_mode == "letterbox"
    got = load_image(path, pp)
    canvas = np.full((256, 256, 3), pad_value, np.uint8)
    top = 32 if pad_type == "center" else 0
    canvas[top : top + 192] = cv2.resize(bgr, (256, 192), interpolation=cv2.INTER_LINEAR)
    expect = canvas[16:240, 16:240]
    np.testing.assert_array_equal(got, np.transpose(expect, (2, 0, 1)).astype(np.float32))


def test_gray_and_nhwc(tmp_path):
    path, _ = _img(tmp_path, 50, 70)
    pp = Preprocess(
        resize_dims=(40, 40),
        keep_aspect_ratio=False,
        net_hw=(32, 32),
        pixel_format="gray",
        channel_format="nhwc",
        mean=(127.5, 0, 0),
        scale=(1 / 128, 1, 1),
    )
    got = load_image(path, pp)
    assert got.shape == (32, 32, 1)
    np.testing.assert_array_equal(got, _tpu_mlir_reference(path, pp))
    g = cv2.resize(cv2.imread(path, cv2.IMREAD_GRAYSCALE), (40, 40))[4:36, 4:36]
    np.testing.assert_array_equal(got[..., 0], (g.astype(np.float32) - 127.5) * np.float32(1 / 128))


def test_jpeg_and_other_formats(tmp_path):
    rng = np.random.default_rng(5)
    arr = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    for ext in ("jpg", "bmp", "png"):
        p = tmp_path / f"pil.{ext}"
        Image.fromarray(arr).save(p)
        pp = PRESETS["mtcnn_onet"]
        np.testing.assert_array_equal(load_image(str(p), pp), _tpu_mlir_reference(str(p), pp))


def test_resize_smaller_than_net_is_raised_to_net(tmp_path):
    path, _ = _img(tmp_path, 30, 30)
    pp = Preprocess(resize_dims=(10, 100), keep_aspect_ratio=False, net_hw=(20, 20))
    assert pp.effective_resize == (20, 100)
    got = load_image(path, pp)
    assert got.shape == (3, 20, 20)
    np.testing.assert_array_equal(got, _tpu_mlir_reference(path, pp))


def test_corrupt_and_missing_images(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8garbage")
    pp = PRESETS["efficientnet_lite0"]
    with pytest.raises(DatasetError, match="broken.jpg: cannot decode image"):
        load_image(str(bad), pp)
    with pytest.raises(DatasetError, match="nothere.png: image file not found"):
        load_image(str(tmp_path / "nothere.png"), pp)


def test_presets():
    l0, l2 = PRESETS["efficientnet_lite0"], PRESETS["efficientnet_lite2"]
    assert (l0.resize_dims, l0.net_hw, l0.keep_aspect_ratio, l0.pixel_format) == (
        (256, 256),
        (224, 224),
        True,
        "rgb",
    )
    assert (l2.resize_dims, l2.net_hw) == ((297, 297), (260, 260))
    # TPU-MLIR's default keep_ratio_mode with --keep_aspect_ratio (letterbox, centred, pad 0)
    assert (l0.keep_ratio_mode, l0.pad_type, l0.pad_value) == ("letterbox", "center", 0)
    assert l2.keep_ratio_mode == "letterbox"
    assert l0.mean == (127.0,) * 3 and l0.scale == (0.0078125,) * 3
    for name, size in [("mtcnn_pnet", 12), ("mtcnn_rnet", 24), ("mtcnn_onet", 48)]:
        p = PRESETS[name]
        assert p.net_hw == (size, size) and p.mean == (127.5,) * 3 and p.scale == (0.0078125,) * 3
        assert p.pixel_format == "rgb" and not p.keep_aspect_ratio
    assert PRESETS["mtcnn_pnet"].with_net_hw((120, 90)).net_hw == (120, 90)
    assert l0.input_shape(4) == (4, 3, 224, 224)


def test_preprocess_validation():
    with pytest.raises(ValueError, match="pixel_format"):
        Preprocess(None, False, (2, 2), pixel_format="yuv")
    with pytest.raises(ValueError, match="mean needs 3 values"):
        Preprocess(None, False, (2, 2), mean=(1, 2))
    assert Preprocess(None, False, (2, 2), mean=(5,)).mean == (5.0, 5.0, 5.0)


def test_load_batch_and_iter_batches(tmp_path):
    files = [_img(tmp_path, 30 + i, 40, name=f"{i}.png", seed=i)[0] for i in range(5)]
    pp = PRESETS["mtcnn_rnet"]
    batch = load_batch(files, pp)
    assert batch.shape == (5, 3, 24, 24) and batch.dtype == np.float32
    for i, f in enumerate(files):
        np.testing.assert_array_equal(batch[i], load_image(f, pp))
    it = iter_batches(files, pp, 2)
    assert isinstance(it, types.GeneratorType)
    shapes = [b.shape[0] for b in it]
    assert shapes == [2, 2, 1]
    padded = list(iter_batches(files, pp, 2, pad_last=True))
    assert [b.shape[0] for b in padded] == [2, 2, 2]
    np.testing.assert_array_equal(padded[-1][1], batch[4])
    np.testing.assert_array_equal(np.concatenate(list(iter_batches(files, pp, 3))), batch)


def test_iter_batches_is_lazy(tmp_path):
    good = _img(tmp_path, 30, 30)[0]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    it = iter_batches([good, good, str(bad)], PRESETS["mtcnn_pnet"], 2)
    assert next(it).shape == (2, 3, 12, 12)
    with pytest.raises(DatasetError, match="bad.png"):
        next(it)


def test_parse_helpers():
    assert parse_floats("0.5,1,2") == (0.5, 1.0, 2.0)
    assert parse_floats("127.5") == (127.5,)
    assert parse_floats("[0.0078125, 0.0078125,0.0078125]") == (0.0078125,) * 3
    assert parse_dims("256,256") == (256, 256)
    assert parse_input_shapes("[[1,3,224,224]]") == [[1, 3, 224, 224]]
    assert parse_input_shapes("[1,3,12,12]") == [[1, 3, 12, 12]]
    assert parse_input_shapes("[[1,3,24,24],[1,10]]") == [[1, 3, 24, 24], [1, 10]]
    assert parse_input_shapes("[]") == []
    for bad in ("a,b", "", "1,,2"):
        with pytest.raises(ParseError):
            parse_floats(bad)
    for bad in ("256,x", "0,5", "2.5,3"):
        with pytest.raises(ParseError, match="positive integers"):
            parse_dims(bad)
    for bad in ("[[1,3,-1,224]]", "foo", "[[1,3],[a]]", "[[1.5]]", "{1: 2}"):
        with pytest.raises(ParseError):
            parse_input_shapes(bad)
    assert issubclass(ParseError, ValueError)
