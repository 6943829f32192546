"""End to end: `python -m training` as a user runs it, into a temporary BentoML store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from classifier.network import ServingNet
from classifier.preprocessing import prepare_image
from classifier.store import describe_model, load_model, load_reference
from tests.conftest import SHARED_DATA
from tests.support.cli import saved_tag, train
from tests.support.synthetic import make_dataset
from training.data import load_splits

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("synthetic"), per_class=30, val_per_class=30)


COMMON = ["--weights", "none", "--image-size", "64", "--epochs", "6", "--batch-size", "16", "--workers", "0"]
NO_ONNX = ["--export", "none"]


@pytest.mark.slow
def test_train_save_and_reuse_cache(synthetic, tmp_path):
    out1, out2 = tmp_path / "run1", tmp_path / "run2"
    tag1 = saved_tag(train("--data", str(synthetic), "--name", "e2e", "--output", str(out1), *COMMON, *NO_ONNX))
    report1 = json.loads((out1 / "metrics.json").read_text())
    assert report1["feature_cache_hits"] == {"train": False, "val": False, "test": False}
    test = report1["metrics"]["test"]
    assert test["count"] == 12 and test["accuracy"] >= 0.8  # chance is 0.5
    assert test["loss"] < 1.0  # calibrated, not overconfident on unseen images
    assert report1["metrics"]["baseline"]["count"] == 48 and "after_head" in report1["metrics"]
    assert len(report1["history"]) == 6
    for name in ("learning_curves.png", "confusion_matrix.png", "test_predictions.png", "reliability.png"):
        assert (out1 / name).read_bytes().startswith(PNG)
    calibration = report1["calibration"]  # fitted on the 48 validation images, judged on the 12 test images
    assert calibration["fitted_on"] == "48 validation images"
    assert calibration["test_ece_after"] < calibration["test_ece_before"]

    loaded = load_model(tag1)
    contract = loaded.contract
    assert contract.class_names == ("cats", "dogs") and contract.backbone == "resnet50"
    assert (contract.image_size, contract.resize_size, contract.weights) == (64, 73, "none")
    meta = loaded.metadata
    assert contract.temperature == calibration["temperature"] == meta["calibration"]["temperature"] != 1.0
    assert meta["test_metrics"]["accuracy"] == test["accuracy"]
    assert meta["training_args"]["epochs"] == 6 and meta["training_args"]["weights"] == "none"
    assert meta["dataset"]["fingerprint"] == report1["dataset"]["fingerprint"]
    assert meta["dataset"]["counts"]["test"] == {"cats": 6, "dogs": 6}

    # The saved network, fed by the service's preprocessing, reproduces the reported test accuracy.
    splits = load_splits(synthetic, val_ratio=0.2, test_ratio=0.2, seed=0, workers=2)
    batch = torch.from_numpy(np.stack([prepare_image(s.path.read_bytes(), contract) for s in splits.test]))
    with torch.inference_mode():
        preds = ServingNet(loaded.network, contract)(batch)[:, : contract.num_classes].argmax(1)
    labels = torch.tensor([s.label for s in splits.test])
    assert float((preds == labels).float().mean()) == pytest.approx(test["accuracy"], abs=1e-4)

    tag2 = saved_tag(train("--data", str(synthetic), "--name", "e2e", "--output", str(out2), *COMMON, *NO_ONNX))
    report2 = json.loads((out2 / "metrics.json").read_text())
    assert report2["feature_cache_hits"] == {"train": True, "val": True, "test": True}
    assert report2["metrics"]["test"] == test  # seeded: same features, same head, same result
    assert tag2 != tag1 and load_model("e2e:latest").tag == tag2
    assert describe_model(tag2).engines == ("torch",)  # --export none


@pytest.mark.slow
def test_onnx_engines_are_saved_with_the_model(synthetic, tmp_path):
    """The default run stores fp32 and INT8 graphs beside the weights, and they agree with PyTorch."""
    out = tmp_path / "run"
    result = train(
        "--data",
        str(synthetic),
        "--name",
        "e2e-onnx",
        "--output",
        str(out),
        *COMMON,
        "--epochs",
        "2",
        "--calibration-images",
        "16",
    )
    model = describe_model(saved_tag(result))
    assert model.engines == ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8")  # OpenVINO runs the graphs
    assert load_reference(model).images.shape == (12, 3, 64, 64)  # the test split, for auto's check at start-up
    engines = model.metadata["engines"]
    assert engines["images"] == 12
    assert engines["onnx"]["top1_agreement_with_torch"] == 1.0
    assert engines["onnx"]["max_abs_probability_diff"] < 1e-3
    assert engines["onnx-int8"]["top1_agreement_with_fp32"] >= 0.75  # random-init backbone, 12 images
    assert engines["onnx-int8"]["speedup_vs_fp32"] > 0
    assert "onnx-int8: accuracy" in result.stdout
    assert "16 calibration images" in result.stderr


@pytest.mark.slow
def test_fine_tuning_phase(synthetic, tmp_path):
    out = tmp_path / "run"
    tag = saved_tag(
        train(
            "--data",
            str(synthetic),
            "--name",
            "e2e-ft",
            "--output",
            str(out),
            *COMMON,
            "--epochs",
            "2",
            "--fine-tune-epochs",
            "1",
            "--unfreeze",
            "layer4",
            *NO_ONNX,
        )
    )
    report = json.loads((out / "metrics.json").read_text())
    assert [row["phase"] for row in report["history"]] == ["head", "head", "fine-tune"]
    assert "after_fine_tune" in report["metrics"] and report["metrics"]["test"]["count"] == 12
    assert report["ood"]["fitted_on"] == "60 training features"  # recomputed by the fine-tuned backbone
    assert load_model(tag).metadata["training_args"]["fine_tune_epochs"] == 1


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "hymenoptera_data").is_dir(), reason="../shared/data/hymenoptera_data is absent")
def test_real_photos_with_traps(tmp_path):
    out = tmp_path / "run"
    result = train(
        "--data",
        str(SHARED_DATA / "hymenoptera_data"),
        "--name",
        "e2e-ants",
        "--output",
        str(out),
        "--weights",
        "none",
        "--image-size",
        "64",
        "--epochs",
        "2",
        "--aug-views",
        "1",
        "--workers",
        "2",
        *NO_ONNX,
    )
    saved_tag(result)
    dataset = json.loads((out / "metrics.json").read_text())["dataset"]
    # The placeholder GIF and the file name with a space are real, decodable images: kept.
    assert dataset["counts"]["train"] == {"ants": 124, "bees": 121}
    assert sum(dataset["counts"]["val"].values()) + sum(dataset["counts"]["test"].values()) == 153
    assert dataset["skipped"] == []
    assert "train   245 images" in result.stderr


def _no_images(folder: Path) -> str:
    folder.mkdir()
    (folder / "readme.txt").write_text("not an image")
    return str(folder)


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda p: ["--data", str(p / "missing")], "does not exist"),
        (lambda p: ["--data", str(p)], "at least 2 class sub-folders"),
        (lambda p: ["--data", str(make_dataset(p, classes=("cats",), per_class=3))], "found cats"),
        (
            lambda p: ["--dataset-url", "http://127.0.0.1:9/cats_and_dogs_filtered.zip", "--cache-dir", str(p)],
            "could not download the default dataset",
        ),
        (
            lambda p: ["--data", str(make_dataset(p / "d", per_class=5)), "--ood-data", str(p / "nowhere")],
            "nowhere is not a folder",
        ),
        (
            lambda p: ["--data", str(make_dataset(p / "d", per_class=5)), "--ood-data", _no_images(p / "notes")],
            "holds no image",
        ),
    ],
    ids=["missing", "empty", "one-class", "download-failure", "ood-data-missing", "ood-data-without-images"],
)
def test_user_errors_are_one_line_without_traceback(tmp_path, make_args, message):
    result = train(*make_args(tmp_path), "--weights", "none", timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]
