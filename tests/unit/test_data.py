import logging
import os
import re
import shutil

import pytest

from tests.conftest import ODD_IMAGES
from tests.support.synthetic import make_dataset
from training.data import load_splits
from training.errors import TrainingError


def _load(root, **kw):
    return load_splits(
        root,
        val_ratio=kw.pop("val_ratio", 0.25),
        test_ratio=kw.pop("test_ratio", 0.2),
        seed=kw.pop("seed", 0),
        workers=2,
    )


def test_train_validation_layout_and_test_share(tmp_path):
    make_dataset(tmp_path, per_class=6, val_per_class=10)
    s = _load(tmp_path)
    assert s.layout == "train/ + validation/"
    assert s.class_names == ("cats", "dogs")
    assert s.counts() == {
        "train": {"cats": 6, "dogs": 6},
        "val": {"cats": 8, "dogs": 8},
        "test": {"cats": 2, "dogs": 2},
    }
    assert not {x.path for x in s.val} & {x.path for x in s.test}


def test_val_folder_name_variants(tmp_path):
    make_dataset(tmp_path, per_class=3, val_per_class=5)
    (tmp_path / "validation").rename(tmp_path / "val")
    assert _load(tmp_path).layout == "train/ + val/"


def test_a_test_folder_is_the_test_split_and_validation_comes_from_train(tmp_path):
    make_dataset(tmp_path, per_class=8, val_per_class=3)
    (tmp_path / "validation").rename(tmp_path / "test")  # the Kaggle-style train/ + test/
    s = _load(tmp_path)
    assert s.layout == "train/ + test/" and s.class_names == ("cats", "dogs")
    assert s.counts() == {
        "train": {"cats": 6, "dogs": 6},
        "val": {"cats": 2, "dogs": 2},
        "test": {"cats": 3, "dogs": 3},
    }
    assert {x.path.parent.parent.name for x in s.test} == {"test"}
    assert {x.path.parent.parent.name for x in s.val} == {"train"}


def test_train_val_and_test_folders_are_taken_as_given(tmp_path):
    make_dataset(tmp_path, per_class=4, val_per_class=5)
    make_dataset(tmp_path / "tmp", per_class=4, val_per_class=3, seed=1)
    (tmp_path / "tmp" / "validation").rename(tmp_path / "test")
    s = _load(tmp_path)
    assert s.layout == "train/ + validation/ + test/"
    assert s.counts() == {
        "train": {"cats": 4, "dogs": 4},
        "val": {"cats": 5, "dogs": 5},
        "test": {"cats": 3, "dogs": 3},
    }


def test_a_test_folder_with_other_classes_is_refused(tmp_path):
    make_dataset(tmp_path, per_class=3, val_per_class=3)
    (tmp_path / "validation").rename(tmp_path / "test")
    (tmp_path / "test" / "dogs").rename(tmp_path / "test" / "wolves")
    with pytest.raises(TrainingError, match="train/ and test/ .* different classes"):
        _load(tmp_path)


def test_a_file_name_that_is_not_utf8_is_read_like_any_other(tmp_path):
    make_dataset(tmp_path, per_class=6)
    name = os.fsdecode(b"caf\xe9.jpg")  # Latin-1 bytes, as in archives made on older systems
    try:
        shutil.copy(tmp_path / "cats" / "cats.0.jpg", tmp_path / "cats" / name)
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    s = _load(tmp_path)
    assert sum(s.counts()["train"].values()) + sum(s.counts()["val"].values()) + sum(s.counts()["test"].values()) == 13
    assert _load(tmp_path).fingerprint == s.fingerprint


def test_single_folder_is_split_by_seeded_ratio(tmp_path):
    make_dataset(tmp_path, classes=("b", "a", "c"), per_class=20)
    s = _load(tmp_path)
    assert s.layout == "single folder" and s.class_names == ("a", "b", "c")
    assert s.counts()["train"] == {"a": 15, "b": 15, "c": 15}
    assert sum(s.counts()["val"].values()) + sum(s.counts()["test"].values()) == 15
    again, other = _load(tmp_path), _load(tmp_path, seed=1)
    assert again.test == s.test and again.train == s.train
    assert other.test != s.test


def test_junk_is_skipped_and_named(tmp_path, caplog):
    make_dataset(tmp_path, per_class=8)
    (tmp_path / "cats" / "notes.txt").write_text("not an image")
    shutil.copy(ODD_IMAGES / "truncated_jpeg.jpg", tmp_path / "cats" / "cut.jpg")
    for name in ("pil_sample_cmyk.jpg", "16bit.cropped.tif", "uncompressed_la.png", "hopper_orientation_6.jpg"):
        shutil.copy(ODD_IMAGES / name, tmp_path / "dogs" / f"odd {name}")  # spaces in names too
    (tmp_path / "dogs" / ".DS_Store").write_bytes(b"\0\0")
    with caplog.at_level(logging.WARNING):
        s = _load(tmp_path)
    assert sorted(p.name for p, _ in s.skipped) == ["cut.jpg", "notes.txt"]
    assert "skipped 2 file(s)" in caplog.text and "notes.txt" in caplog.text and "cut.jpg" in caplog.text
    every = {x.path.name for x in s.train + s.val + s.test}
    assert "odd pil_sample_cmyk.jpg" in every and "odd 16bit.cropped.tif" in every and ".DS_Store" not in every


def test_duplicates_are_reported(tmp_path, caplog):
    make_dataset(tmp_path, per_class=8)
    shutil.copy(tmp_path / "cats" / "cats.0.jpg", tmp_path / "dogs" / "copy.jpg")
    with caplog.at_level(logging.WARNING):
        s = _load(tmp_path)
    assert len(s.duplicates) == 1 and "identical files" in caplog.text


def test_fingerprint_tracks_content(tmp_path):
    make_dataset(tmp_path, per_class=8)
    first = _load(tmp_path).fingerprint
    assert _load(tmp_path).fingerprint == first
    shutil.copy(tmp_path / "dogs" / "dogs.0.jpg", tmp_path / "cats" / "cats.0.jpg")
    assert _load(tmp_path).fingerprint != first


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: p, "at least 2 class sub-folders \\(found none\\)"),
        (lambda p: (make_dataset(p, classes=("only",), per_class=4), p)[1], "found only"),
        (lambda p: ((p / "f.txt").write_text("x"), p / "f.txt")[1], "is a file"),
    ],
    ids=["missing", "empty", "one-class", "file"],
)
def test_unusable_folders_raise_one_line_errors(tmp_path, setup, message):
    with pytest.raises(TrainingError, match=message) as info:
        _load(setup(tmp_path))
    assert "\n" not in str(info.value)


def test_mismatched_split_classes(tmp_path):
    make_dataset(tmp_path, per_class=3, val_per_class=3)
    (tmp_path / "validation" / "dogs").rename(tmp_path / "validation" / "wolves")
    with pytest.raises(TrainingError, match="different classes"):
        _load(tmp_path)


def test_a_class_folder_without_usable_images_is_named(tmp_path):
    make_dataset(tmp_path, per_class=8)
    (tmp_path / "birds").mkdir()
    (tmp_path / "birds" / "x.txt").write_text("no")
    with pytest.raises(TrainingError, match="class folder\\(s\\) birds .* add images or remove the folder"):
        _load(tmp_path)


def test_a_class_too_small_to_split_names_the_split_and_the_ratios(tmp_path):
    make_dataset(tmp_path, per_class=8)
    make_dataset(tmp_path, classes=("birds",), per_class=1)
    with pytest.raises(TrainingError, match="val split has no usable images of class\\(es\\) birds.*--val-ratio"):
        _load(tmp_path)


def _extra_load(base, extra):
    return load_splits(base, val_ratio=0.25, test_ratio=0.2, seed=0, workers=2, extra=extra)


def test_extra_data_joins_the_training_split_only(tmp_path):
    base = make_dataset(tmp_path / "base", per_class=8)
    extra = make_dataset(tmp_path / "feedback", per_class=3, seed=7)
    (extra / "cats" / "notes.txt").write_text("not an image")
    plain, added = _load(base), _extra_load(base, extra)
    assert added.val == plain.val and added.test == plain.test  # test figures stay comparable
    assert set(added.train) - set(plain.train) == set(added.extra.samples)
    assert added.extra.counts == {"cats": 3, "dogs": 3} and not added.extra.dropped
    assert added.counts()["train"] == {"cats": 9, "dogs": 9}
    assert added.fingerprint != plain.fingerprint


def test_extra_images_identical_to_the_datasets_are_dropped(tmp_path, caplog):
    base = make_dataset(tmp_path / "base", per_class=8)
    test_image = _load(base).test[0]
    extra = tmp_path / "feedback"
    name = ("cats", "dogs")[test_image.label]
    (extra / name).mkdir(parents=True)
    shutil.copy(test_image.path, extra / name / "copy.jpg")
    with caplog.at_level(logging.WARNING):
        splits = _extra_load(base, extra)
    assert splits.extra.dropped == (extra / name / "copy.jpg",) and not splits.extra.samples
    assert "identical to images of --data" in caplog.text


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda base, extra: (extra / "wolves").mkdir(parents=True), "holds class(es) wolves that --data has not"),
        (lambda base, extra: None, "is not a folder"),
    ],
)
def test_unusable_extra_folders_fail_before_reading_images(tmp_path, setup, message):
    base = make_dataset(tmp_path / "base", per_class=4)
    setup(base, tmp_path / "feedback")
    with pytest.raises(TrainingError, match=re.escape(message)):
        _extra_load(base, tmp_path / "feedback")


def test_extra_folder_inside_the_dataset_is_refused(tmp_path):
    base = make_dataset(tmp_path / "base", per_class=4)
    with pytest.raises(TrainingError, match="inside --data"):
        _extra_load(base, base / "cats")


def test_an_unlabelled_test_folder_is_named_as_such(tmp_path):
    make_dataset(tmp_path / "train", per_class=6)
    (tmp_path / "test").mkdir()
    shutil.copy(tmp_path / "train" / "cats" / "cats.0.jpg", tmp_path / "test" / "0001.jpg")  # Kaggle's unlabelled test
    with pytest.raises(TrainingError, match="test has no class sub-folders \\(unlabelled images\\?\\)"):
        _load(tmp_path)


def test_a_class_missing_from_a_given_test_folder_asks_for_images_there(tmp_path):
    make_dataset(tmp_path, per_class=8, val_per_class=3)
    (tmp_path / "validation").rename(tmp_path / "test")
    for image in (tmp_path / "test" / "dogs").iterdir():
        image.unlink()
    with pytest.raises(
        TrainingError, match="test split has no usable images of class\\(es\\) dogs.*add images to its folder"
    ):
        _load(tmp_path)
