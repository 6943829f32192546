import pytest

from training.config import build_parser, default_cache_dir, parse_args


def test_defaults_match_the_documented_product():
    cfg = parse_args([])
    assert cfg.data is None and cfg.backbone == "resnet50" and cfg.weights == "DEFAULT"
    assert cfg.image_size == 224 and cfg.effective_resize == 256
    assert cfg.fine_tune_epochs == 0 and cfg.name == "transfer-classifier"


def test_kebab_case_flags_and_help_states_defaults():
    help_text = build_parser().format_help()
    for flag in ("--fine-tune-epochs", "--image-size", "--batch-size", "--data", "--weights", "--backbone",
                 "--epochs", "--name", "--device", "--output"):
        assert flag in help_text
    assert "(default: 10)" in help_text and "(default: resnet50)" in help_text


def test_flags_are_parsed():
    cfg = parse_args(["--data", "x", "--weights", "none", "--unfreeze", "layer3", "layer4", "--no-augment",
                      "--resize-size", "300"])
    assert str(cfg.data) == "x" and cfg.unfreeze == ("layer3", "layer4") and cfg.augment is False
    assert cfg.effective_resize == 300


@pytest.mark.parametrize("argv", [["--epochs", "0"], ["--backbone", "vgg"], ["--batch-size", "0"]])
def test_bad_values_exit_with_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TRANSFER_SERVE_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
