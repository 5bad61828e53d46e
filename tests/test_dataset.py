"""Sample selection like TPU-MLIR's DataSelector; npz loading checks."""

import pathlib
import random

import numpy as np
import pytest

from qsens.data import file_kind, load_npz_sample, select_files
from qsens.errors import DatasetError


def _touch(root: pathlib.Path, names):
    for n in names:
        p = root / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def test_recursive_sorted_then_seeded_shuffle(tmp_path):
    names = [f"img{i:02d}.jpg" for i in range(12)] + ["sub/a.PNG", "sub/deeper/b.JpEg", "c.bmp", "d.jfif"]
    _touch(tmp_path, names + ["notes.txt", "sub/readme.md"])
    expect = sorted(str(tmp_path / n) for n in names)
    random.seed(1684)
    random.shuffle(expect)
    assert select_files(str(tmp_path)) == expect
    assert select_files(str(tmp_path), input_num=5) == expect[:5]
    # the search's inference samples are a prefix of the calibration samples
    assert select_files(str(tmp_path), input_num=3) == select_files(str(tmp_path), input_num=10)[:3]


def test_other_seed_changes_order(tmp_path):
    _touch(tmp_path, [f"{i}.npy" for i in range(20)])
    a = select_files(str(tmp_path))
    b = select_files(str(tmp_path), seed=7)
    assert sorted(a) == sorted(b) and a != b
    expect = sorted(str(tmp_path / f"{i}.npy") for i in range(20))
    random.seed(7)
    random.shuffle(expect)
    assert b == expect


def test_input_num_larger_than_available_warns_and_uses_all(tmp_path):
    _touch(tmp_path, ["a.jpg", "b.jpg", "c.jpg"])
    with pytest.warns(UserWarning, match="asked for 10 samples but only 3 found"):
        got = select_files(str(tmp_path), input_num=10)
    assert len(got) == 3


def test_mixed_kinds_error_names_both(tmp_path):
    _touch(tmp_path, ["a.jpg", "b.npz"])
    with pytest.raises(DatasetError, match=r"mixes (image|npz) files .* and (npz|image) files"):
        select_files(str(tmp_path))


def test_empty_or_missing_dataset(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        select_files(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    _touch(tmp_path / "empty", ["readme.txt"])
    with pytest.raises(DatasetError, match="no image .* found"):
        select_files(str(tmp_path / "empty"))
    with pytest.raises(DatasetError, match="--dataset DIR or --data_list FILE"):
        select_files()
    f = tmp_path / "file.jpg"
    f.write_bytes(b"x")
    with pytest.raises(DatasetError, match="must be a directory"):
        select_files(str(f))


def test_data_list(tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text("z.jpg\n  a.jpg  \n\nm.png\n")
    assert select_files(data_list=str(lst)) == ["z.jpg", "a.jpg", "m.png"]  # file order, no shuffle
    assert select_files(data_list=str(lst), input_num=2) == ["z.jpg", "a.jpg"]
    assert select_files(str(tmp_path / "ignored"), data_list=str(lst), input_num=0) == [
        "z.jpg",
        "a.jpg",
        "m.png",
    ]
    multi = tmp_path / "multi.txt"
    multi.write_text("a.npy,b.npy\nc.npy, d.npy\n")
    assert select_files(data_list=str(multi)) == ["a.npy,b.npy", "c.npy, d.npy"]
    bad = tmp_path / "bad.txt"
    bad.write_text("a.jpg\nb.npy\n")
    with pytest.raises(DatasetError, match="bad.txt: mixes image files"):
        select_files(data_list=str(bad))
    bad.write_text("a.gif\n")
    with pytest.raises(DatasetError, match="'a.gif' is not an image"):
        select_files(data_list=str(bad))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DatasetError, match="empty"):
        select_files(data_list=str(empty))
    with pytest.raises(DatasetError, match="not found"):
        select_files(data_list=str(tmp_path / "missing.txt"))


def test_file_kind():
    assert file_kind(["a.JPG", "b.png"]) == "image"
    assert file_kind(["a.npz"]) == "npz"
    assert file_kind(["a.npy,b.npy"]) == "npy"


def test_load_npz_sample(tmp_path):
    p = tmp_path / "s.npz"
    x = np.arange(12, dtype=np.float32).reshape(1, 3, 2, 2)
    np.savez(p, whatever=x)
    got = load_npz_sample(str(p), ["input"], [[1, 3, 2, 2]])
    assert list(got) == ["input"] and np.array_equal(got["input"], x)
    # one sample of a batch-4 input
    got = load_npz_sample(str(p), ["input"], [[4, 3, 2, 2]])
    assert got["input"].shape == (1, 3, 2, 2)
    with pytest.raises(DatasetError, match=r"'input' has shape \[1, 3, 2, 2\], expected \[1, 3, 4, 4\]"):
        load_npz_sample(str(p), ["input"], [[1, 3, 4, 4]])

    q = tmp_path / "m.npz"
    np.savez(q, a=np.zeros((1, 2), np.float32), c=np.zeros((1, 5), np.float32))
    with pytest.raises(DatasetError) as ei:
        load_npz_sample(str(q), ["a", "b"], {"a": [1, 2], "b": [1, 3]})
    msg = str(ei.value)
    assert "expected a[1, 2], b[1, 3], found a[1, 2], c[1, 5]" in msg
    np.savez(q, a=np.ones((1, 2), np.float32), b=np.ones((1, 3), np.float32))
    got = load_npz_sample(str(q), ["b", "a"], {"a": [1, 2], "b": [1, 3]})
    assert list(got) == ["b", "a"] and got["b"].shape == (1, 3)

    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="bad.npz: cannot read as .npz"):
        load_npz_sample(str(bad), ["a"], [[1]])
