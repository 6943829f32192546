import pytest

from classifier.cache import default_cache_dir
from training.config import build_parser, parse_args


def test_defaults_match_the_documented_product():
    cfg = parse_args([])
    assert cfg.data is None and cfg.backbone == "resnet50" and cfg.weights == "DEFAULT"
    assert cfg.image_size == 224 and cfg.effective_resize == 256
    assert cfg.fine_tune_epochs == 0 and cfg.name == "transfer-classifier"


def test_kebab_case_flags_and_help_states_defaults():
    help_text = build_parser().format_help()
    for flag in (
        "--fine-tune-epochs",
        "--image-size",
        "--batch-size",
        "--data",
        "--weights",
        "--backbone",
        "--epochs",
        "--name",
        "--device",
        "--output",
    ):
        assert flag in help_text
    assert "(default: 10)" in help_text and "(default: resnet50)" in help_text


def test_flags_are_parsed():
    cfg = parse_args(
        ["--data", "x", "--weights", "none", "--unfreeze", "layer3", "layer4", "--no-augment", "--resize-size", "300"]
    )
    assert str(cfg.data) == "x" and cfg.unfreeze == ("layer3", "layer4") and cfg.augment is False
    assert cfg.effective_resize == 300


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "0"], "--epochs: 0 is outside [1, inf)"),
        (["--backbone", "vgg"], "invalid choice: 'vgg'"),
        (["--batch-size", "0"], "--batch-size: 0 is outside"),
        (["--lr", "-1"], "--lr: -1.0 is outside (0, inf)"),
        (["--dropout", "1"], "--dropout: 1.0 is outside [0, 1)"),
        (["--image-size", "2000"], "--image-size: 2000 is outside [32, 1024]"),
        (["--image-size", "64", "--resize-size", "40"], "--resize-size 40 is smaller than --image-size 64"),
        (["--val-ratio", "1"], "--val-ratio: 1.0 is outside (0, 1)"),
        (["--workers", "x"], "'x' is not an integer"),
        (["--name", "Bad Name"], "not a valid BentoML tag"),
        (["--name", "model:v1"], "without ':version'"),
    ],
)
def test_bad_values_fail_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TRANSFER_SERVE_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path


def test_a_wrong_unfreeze_block_fails_before_the_weights_and_the_data_are_read(tmp_path):
    from training.errors import TrainingError
    from training.pipeline import run

    argv = ["--data", str(tmp_path / "absent"), "--weights", "none", "--backbone", "resnet18"]
    argv += ["--output", str(tmp_path)]
    missing_weights = ["--weights", str(tmp_path / "absent.pth")]  # would fail first, were they read first
    with pytest.raises(TrainingError, match="'layer9' names no backbone block"):
        run(parse_args([*argv, *missing_weights, "--fine-tune-epochs", "1", "--unfreeze", "layer9"]))
    with pytest.raises(TrainingError, match="does not exist"):  # ignored without fine-tuning: on to the data
        run(parse_args([*argv, "--unfreeze", "layer9"]))


def test_the_serve_hint_names_the_bentoml_of_this_environment(tmp_path, monkeypatch):
    import sys

    from training.__main__ import _bentoml_command

    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.chdir(tmp_path)
    assert _bentoml_command() == "bentoml"  # none beside the interpreter: the one on PATH
    (bin_dir / "bentoml").write_text("#!/bin/sh\n")
    assert _bentoml_command() == ".venv/bin/bentoml"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert _bentoml_command() == str(bin_dir / "bentoml")
