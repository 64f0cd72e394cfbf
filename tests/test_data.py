"""rescom.data: long-tailed splits (digits, generated CIFAR / image-folder / list trees) and transforms."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from rescom.data import (
    DatasetSplits,
    build_datasets,
    class_counts,
    create_transforms,
    list_datasets,
    longtail_counts,
)
from rescom.data.transforms import Cutout, EvalTransform, TwoViewTransform
from rescom.preprocess import resize_center_crop

DIGITS_COUNTS = [100, 71, 51, 36, 26, 18, 13, 9, 6, 5]


# --------------------------------------------------------------------------------------------- profile ----
@pytest.mark.parametrize(
    "n_max,num_classes,imbalance_factor,total",
    [
        (5000, 10, 100, 12406),
        (5000, 10, 50, 13996),
        (5000, 10, 10, 20431),
        (500, 100, 100, 10847),
        (500, 100, 50, 12608),
        (500, 100, 10, 19573),
    ],
)
def test_longtail_counts_reproduce_the_published_cifar_lt_totals(n_max, num_classes, imbalance_factor, total):
    counts = longtail_counts(n_max, num_classes, imbalance_factor)
    assert sum(counts) == total
    assert counts[0] == n_max and counts[-1] == n_max // imbalance_factor
    assert counts == sorted(counts, reverse=True)


def test_longtail_counts_reject_bad_factor():
    with pytest.raises(ValueError, match="imbalance_factor"):
        longtail_counts(100, 10, 0.5)
    assert longtail_counts(7, 4, 1) == [7, 7, 7, 7]


def test_class_counts_and_label_range():
    assert class_counts([0, 2, 2, 1, 2], 4) == [1, 1, 3, 0]
    with pytest.raises(ValueError, match="0..2"):
        class_counts([0, 3], 3)


def test_registry():
    names = list_datasets()
    for n in (
        "digits_lt",
        "cifar10_lt",
        "cifar100_lt",
        "imagefolder",
        "txt_list",
        "imagenet_lt",
        "inat2018",
        "places_lt",
    ):
        assert n in names
    with pytest.raises(ValueError, match="available: .*digits_lt"):
        build_datasets("mnist_lt", None)
    with pytest.raises(ValueError, match="allowed: .*imbalance_factor"):
        build_datasets("digits_lt", None, imbalance=3)


# ------------------------------------------------------------------------------------------- digits-LT ----
@pytest.fixture(scope="module")
def digits() -> DatasetSplits:
    return build_datasets("digits_lt", None)


def test_digits_lt_sizes_and_profile(digits):
    assert digits.class_counts == DIGITS_COUNTS == longtail_counts(100, 10, 20)
    assert class_counts(digits.train.targets, 10) == DIGITS_COUNTS
    assert len(digits.train) == 335 and len(digits.val) == 200 and len(digits.test) == 500
    assert class_counts(digits.val.targets, 10) == [20] * 10
    assert class_counts(digits.test.targets, 10) == [50] * 10
    assert digits.class_names == [str(i) for i in range(10)]
    assert (digits.resize, digits.crop, digits.default_preset, digits.name) == (32, 32, "digits", "digits_lt")


def test_digits_lt_mean_std_are_the_recorded_values(digits):
    assert digits.mean == (0.3054, 0.3054, 0.3054)
    assert digits.std == (0.323, 0.323, 0.323)


def test_digits_lt_splits_do_not_overlap(digits):
    train, val, test = (set(d.indices) for d in (digits.train, digits.val, digits.test))
    assert len(train) == 335 and len(val) == 200 and len(test) == 500
    assert not (train & val) and not (train & test) and not (val & test)


def test_digits_lt_items_are_pil_rgb(digits):
    img, label = digits.train[0]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (32, 32)
    assert label == digits.train.targets[0]


def test_digits_lt_is_deterministic_by_seed(digits):
    again = build_datasets("digits_lt", None)
    np.testing.assert_array_equal(again.train.images, digits.train.images)
    assert again.test.indices == digits.test.indices
    other = build_datasets("digits_lt", None, seed=1)
    assert other.class_counts == digits.class_counts
    assert other.train.indices != digits.train.indices


def test_digits_lt_options(digits):
    small = build_datasets(
        "digits_lt", None, imbalance_factor=10, n_max=50, val_per_class=0, test_per_class=30
    )
    assert small.val is None
    assert small.class_counts == longtail_counts(50, 10, 10)
    assert len(small.test) == 300
    with pytest.raises(ValueError, match="lower them"):
        build_datasets("digits_lt", None, n_max=150)


# ------------------------------------------------------------------------------------ generated CIFAR ----
def _write_cifar(root, num_classes: int, train_per_class: int, test_per_class: int, seed: int = 0):
    """A CIFAR 'python version' folder with the real file names and keys; R channel encodes the label."""
    rng = np.random.default_rng(seed)

    def make(n_per_class):
        labels = np.repeat(np.arange(num_classes), n_per_class)
        rng.shuffle(labels)
        data = rng.integers(0, 256, size=(len(labels), 3, 32, 32), dtype=np.uint8)
        data[:, 0] = labels[:, None, None]  # red plane = label, to check the channel layout
        return data.reshape(len(labels), 3072), labels.tolist()

    def dump(path, obj):
        with open(path, "wb") as fh:
            pickle.dump(obj, fh)

    if num_classes == 10:
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        data, labels = make(train_per_class)
        for i, part in enumerate(np.array_split(np.arange(len(labels)), 5), 1):
            dump(folder / f"data_batch_{i}", {b"data": data[part], b"labels": [labels[j] for j in part]})
        data, labels = make(test_per_class)
        dump(folder / "test_batch", {b"data": data, b"labels": labels})
        dump(folder / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        data, labels = make(train_per_class)
        dump(folder / "train", {b"data": data, b"fine_labels": labels, b"coarse_labels": [0] * len(labels)})
        data, labels = make(test_per_class)
        dump(folder / "test", {b"data": data, b"fine_labels": labels, b"coarse_labels": [0] * len(labels)})
        dump(folder / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(num_classes)]})
    return folder


def test_cifar10_lt_from_generated_pickles(tmp_path):
    _write_cifar(tmp_path, 10, train_per_class=60, test_per_class=4)
    splits = build_datasets("cifar10_lt", str(tmp_path), imbalance_factor=10, val_per_class=0)
    assert splits.class_counts == longtail_counts(60, 10, 10)
    assert len(splits.test) == 40 and class_counts(splits.test.targets, 10) == [4] * 10
    assert splits.val is None
    assert splits.class_names == [f"c{i}" for i in range(10)]
    assert splits.mean == (0.4914, 0.4822, 0.4465) and splits.std == (0.2023, 0.1994, 0.2010)
    assert (splits.resize, splits.crop, splits.default_preset) == (32, 32, "cifar")
    for i in (0, len(splits.train) - 1):
        img, label = splits.train[i]
        assert (
            img.size == (32, 32) and np.asarray(img)[..., 0].max() == np.asarray(img)[..., 0].min() == label
        )


def test_cifar_lt_selection_matches_the_ldam_procedure(tmp_path):
    folder = _write_cifar(tmp_path, 10, train_per_class=60, test_per_class=2)
    labels = np.concatenate(
        [pickle.load(open(folder / f"data_batch_{i}", "rb"))[b"labels"] for i in range(1, 6)]
    )
    counts = longtail_counts(60, 10, 10)
    np.random.seed(0)  # LDAM-DRW / ResCom: global seed, per-class shuffle in class order, keep the first n_c
    expected = []
    for c in range(10):
        idx = np.where(labels == c)[0]
        np.random.shuffle(idx)
        expected.extend(idx[: counts[c]].tolist())
    splits = build_datasets(
        "cifar10_lt", str(tmp_path / "cifar-10-batches-py"), imbalance_factor=10, val_per_class=0
    )
    assert splits.train.indices == expected


def test_cifar100_lt_val_split_is_balanced_and_unused(tmp_path):
    _write_cifar(tmp_path, 100, train_per_class=12, test_per_class=1)
    splits = build_datasets("cifar100_lt", str(tmp_path), imbalance_factor=4, val_per_class=2)
    formula = longtail_counts(12, 100, 4)
    assert splits.class_counts == [min(n, 12 - 2) for n in formula]  # head classes give up 2 images for val
    assert splits.class_counts[-1] == formula[-1] == 3
    assert class_counts(splits.val.targets, 100) == [2] * 100
    assert not set(splits.val.indices) & set(splits.train.indices)
    assert splits.class_names[:2] == ["f0", "f1"] and len(splits.test) == 100
    again = build_datasets("cifar100_lt", str(tmp_path), imbalance_factor=4, val_per_class=2)
    assert again.train.indices == splits.train.indices and again.val.indices == splits.val.indices


def test_cifar_missing_folder_says_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        build_datasets("cifar100_lt", str(tmp_path))


# ------------------------------------------------------------------------------------- image folder ----
def _save(path, size=(40, 30), mode="RGB", value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode != "RGB" else (value, value // 2, 255 - value)).save(path)


def test_image_folder_tree(tmp_path):
    for cls, n in (("ant", 6), ("bee", 4), ("cat", 2)):
        for i in range(n):
            _save(tmp_path / "train" / cls / f"{i}.png", value=10 * i)
        _save(tmp_path / "val" / cls / "v.jpg")
    _save(tmp_path / "train" / "cat" / "sub" / "gray.png", mode="L")  # nested, grayscale
    _save(tmp_path / "train" / "cat" / "rgba.png", mode="RGBA", value=(1, 2, 3, 0))
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match="test is missing"):
        splits = build_datasets("imagefolder", str(tmp_path))
    assert splits.class_names == ["ant", "bee", "cat"]
    assert splits.class_counts == [6, 4, 4]
    assert len(splits.val) == len(splits.test) == 3 and splits.test is not splits.val
    assert (splits.resize, splits.crop, splits.default_preset) == (256, 224, "large_scale")
    assert splits.mean == (0.485, 0.456, 0.406)
    imgs = [splits.train[i][0] for i in range(len(splits.train))]
    assert all(img.mode == "RGB" for img in imgs)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lt = build_datasets("imagefolder", str(tmp_path), imbalance_factor=4, resize=36, crop=32)
    # ranks by count: ant 6, bee 4, cat 4 -> targets floor(6 * 4^(-r/2)) = 6, 3, 1
    assert lt.class_counts == [6, 3, 1] and (lt.resize, lt.crop) == (36, 32)


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train"):
        build_datasets("imagefolder", str(tmp_path))
    _save(tmp_path / "train" / "a" / "0.png")
    with pytest.raises(FileNotFoundError, match="neither val/ nor test/"):
        build_datasets("imagefolder", str(tmp_path))
    _save(tmp_path / "test" / "zebra" / "0.png")
    with pytest.raises(ValueError, match="not in train"):
        build_datasets("imagefolder", str(tmp_path))


# ---------------------------------------------------------------------------------------- txt lists ----
def _txt_tree(root):
    lines = {"train": [], "val": [], "test": []}
    for split, per_class in (("train", (3, 2, 1)), ("val", (1, 1, 1)), ("test", (2, 2, 2))):
        for label, (name, n) in enumerate(zip(("n001", "n002", "n003"), per_class, strict=True)):
            for i in range(n):
                rel = f"{split}/{name}/img {i}.jpg"  # a space inside the path
                _save(root / rel, size=(50, 40), value=20 * label)
                lines[split].append(f"{rel} {label}")
    for split, entries in lines.items():
        (root / f"my_{split}.txt").write_text("# comment\n" + "\n".join(entries) + "\n\n")


def test_txt_list(tmp_path):
    _txt_tree(tmp_path)
    splits = build_datasets(
        "txt_list",
        str(tmp_path),
        train_list="my_train.txt",
        val_list="my_val.txt",
        test_list=str(tmp_path / "my_test.txt"),
        resize=40,
        crop=32,
    )
    assert splits.class_names == ["n001", "n002", "n003"]
    assert splits.class_counts == [3, 2, 1]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 3, 6)
    img, label = splits.test[0]
    assert img.mode == "RGB" and img.size == (50, 40) and label == 0
    assert (splits.resize, splits.crop) == (40, 32)

    (tmp_path / "names.txt").write_text("ant\nbee\ncat\n")
    named = build_datasets(
        "txt_list",
        str(tmp_path),
        train_list="my_train.txt",
        test_list="my_test.txt",
        names_file="names.txt",
        num_classes=3,
    )
    assert named.class_names == ["ant", "bee", "cat"] and named.val is None


def test_txt_list_errors(tmp_path):
    _txt_tree(tmp_path)
    (tmp_path / "bad.txt").write_text("train/n001/img 0.jpg 0\ntrain/n001/x.jpg zero\n")
    with pytest.raises(ValueError, match="bad.txt:2"):
        build_datasets("txt_list", str(tmp_path), train_list="bad.txt", test_list="my_test.txt")
    with pytest.raises(ValueError, match="num_classes"):
        build_datasets(
            "txt_list", str(tmp_path), train_list="my_train.txt", test_list="my_test.txt", num_classes=2
        )
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        build_datasets("txt_list", str(tmp_path), train_list="missing.txt", test_list="my_test.txt")


def test_txt_list_aliases_use_default_list_names(tmp_path):
    _txt_tree(tmp_path)
    (tmp_path / "iNaturalist18_train.txt").write_text((tmp_path / "my_train.txt").read_text())
    (tmp_path / "iNaturalist18_val.txt").write_text((tmp_path / "my_val.txt").read_text())
    splits = build_datasets("inat2018", str(tmp_path), num_classes=3)
    assert splits.val is None and len(splits.test) == 3  # the official iNat val list is the test split
    assert splits.mean == (0.466, 0.471, 0.380) and splits.std == (0.195, 0.194, 0.192)
    assert splits.name == "inat2018" and splits.class_counts == [3, 2, 1]
    with pytest.raises(FileNotFoundError, match="ImageNet_LT_train.txt"):
        build_datasets("imagenet_lt", str(tmp_path))


# --------------------------------------------------------------------------------------- transforms ----
@pytest.mark.parametrize("preset,size", [("cifar", 32), ("digits", 32), ("large_scale", 48)])
def test_train_presets_produce_normalised_tensors(preset, size):
    tf = create_transforms(preset, True, resize=size, crop=size, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size + 8, size + 8, 3), dtype=np.uint8))
    if preset != "large_scale":
        img = img.resize((size, size))
    x = tf(img)
    assert isinstance(x, torch.Tensor) and x.shape == (3, size, size) and x.dtype == torch.float32
    assert torch.isfinite(x).all()


def test_digits_preset_never_flips():
    tf = create_transforms("digits", True, 32, 32, (0.5,) * 3, (0.5,) * 3)
    assert not any("Flip" in type(t).__name__ for t in tf.transforms)


def test_eval_transform_equals_the_serving_preprocessing():
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    for preset in ("cifar", "large_scale", "digits"):
        tf = create_transforms(preset, False, resize=40, crop=32, mean=mean, std=std)
        assert isinstance(tf, EvalTransform)
        x = tf(img)
        arr = resize_center_crop(img, 40, 32).astype(np.float32) / 255.0
        ref = (arr - np.array(mean, np.float32)) / np.array(std, np.float32)
        np.testing.assert_allclose(x.numpy(), ref.transpose(2, 0, 1), rtol=0, atol=1e-6)
        torch.testing.assert_close(tf(img), x)  # deterministic


def test_two_views_differ_and_cutout_zeroes_a_square():
    tf = TwoViewTransform(create_transforms("cifar", True, 32, 32, (0.5,) * 3, (0.5,) * 3))
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    views = tf(img)
    assert isinstance(views, list) and len(views) == 2
    assert views[0].shape == views[1].shape == (3, 32, 32)
    assert not torch.equal(views[0], views[1])
    out = Cutout(n_holes=1, length=16)(torch.ones(3, 32, 32))
    zeros = int((out[0] == 0).sum())
    assert 0 < zeros <= 16 * 16 and torch.equal(out[0] == 0, out[2] == 0)
    with pytest.raises(ValueError, match="unknown transform preset"):
        create_transforms("imagenet", True, 32, 32, (0.5,) * 3, (0.5,) * 3)


def test_dataloader_collates_two_views(digits):
    from torch.utils.data import DataLoader

    digits.train.transform = TwoViewTransform(
        create_transforms(digits.default_preset, True, digits.resize, digits.crop, digits.mean, digits.std)
    )
    try:
        (v1, v2), labels = next(iter(DataLoader(digits.train, batch_size=8, shuffle=False)))
    finally:
        digits.train.transform = None
    assert v1.shape == v2.shape == (8, 3, 32, 32) and labels.shape == (8,)
