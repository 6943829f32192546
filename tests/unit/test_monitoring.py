"""Prometheus rules (checked and unit-tested by promtool), the example config, and the Grafana dashboard."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.promql import metric_names

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "rules.yml"
DASHBOARD = DEPLOY / "grafana" / "image-classifier.json"
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool is absent: apt-get install prometheus (.ci/run does)"
)


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], cwd=RULES.parent, capture_output=True, text=True, timeout=120)


@needs_promtool
def test_rules_are_valid():
    result = promtool("check", "rules", "rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 22 rules found" in result.stdout


@needs_promtool
def test_rules_unit_tests_pass():
    result = promtool("test", "rules", "rules_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
@pytest.mark.parametrize(
    ("rule", "loosened", "alert"),
    [
        ("image_classifier:error_ratio:rate5m > 0.01", "image_classifier:error_ratio:rate5m > 0.5", "HighErrorRate"),
        ("image_classifier:drift_psi:max > 0.25", "image_classifier:drift_psi:max > 5", "ClassDrift"),
        (
            "image_classifier:unknown_ratio:rate15m > 0.2",
            "image_classifier:unknown_ratio:rate15m > 0.6",
            "UnknownRising",
        ),
        (
            "(max by (job) (image_classifier_training_accuracy) - 0.1)",
            "(max by (job) (image_classifier_training_accuracy) - 0.5)",
            "LiveAccuracyLow",
        ),
        (
            "max by (job) (image_classifier_feedback_folder_fill) >= 0.95",
            "max by (job) (image_classifier_feedback_folder_fill) >= 1.5",
            "FeedbackFolderFull",
        ),
        (
            "image_classifier:feedback_scored:increase6h >= 30",
            "image_classifier:feedback_scored:increase6h >= 1",
            "LiveAccuracyLow",
        ),
    ],
)
def test_rules_unit_tests_can_fail(tmp_path, rule, loosened, alert):
    """The promtool tests are real: with an alert's threshold loosened they fail."""
    shutil.copy(RULES.parent / "rules_test.yml", tmp_path)
    assert rule in RULES.read_text()
    (tmp_path / "rules.yml").write_text(RULES.read_text().replace(rule, loosened))
    result = subprocess.run(
        ["promtool", "test", "rules", "rules_test.yml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode != 0 and f"ImageClassifier{alert}" in result.stdout + result.stderr


@needs_promtool
def test_example_config_is_valid():
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def rule_groups() -> list[dict]:
    return yaml.safe_load(RULES.read_text())["groups"]


def recorded_names() -> set[str]:
    return {rule["record"] for group in rule_groups() for rule in group["rules"] if "record" in rule}


def dashboard_exprs() -> list[str]:
    return [t["expr"] for panel in json.loads(DASHBOARD.read_text())["panels"] for t in panel["targets"]]


def test_alerts_cover_the_failure_modes():
    alerts = {rule["alert"]: rule for group in rule_groups() for rule in group["rules"] if "alert" in rule}
    assert set(alerts) == {
        "ImageClassifierHighErrorRate",
        "ImageClassifierLatencyOverBudget",
        "ImageClassifierNotReady",
        "ImageClassifierSheddingLoad",
        "ImageClassifierBatchingCollapsed",
        "ImageClassifierClassDrift",
        "ImageClassifierUnknownRising",
        "ImageClassifierLiveAccuracyLow",
        "ImageClassifierFeedbackFolderFull",
    }
    for rule in alerts.values():
        assert rule["labels"]["severity"] in {"page", "ticket"} and rule["annotations"]["summary"]


def test_dashboard_is_importable_and_shows_what_operators_need():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "image-classifier" and dashboard["title"]
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "job"}
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert {
        "Throughput",
        "Latency percentiles",
        "Images per forward pass",
        "Rejected inputs by reason",
        "Predictions by class",
        "Top-1 confidence",
        "Unknown answers and class drift",
        "OOD score",
        "Predicted class shares vs training",
        "Live accuracy on feedback",
        "Feedback and explain",
    } <= titles
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["targets"] and all(
            t["expr"] and t["datasource"]["uid"] == "${datasource}" for t in panel["targets"]
        )


@pytest.mark.parametrize(
    "expr, names",
    [
        ('sum by (le) (rate(a_bucket{job=~"$job", x="y{z}"}[$__rate_interval]))', {"a_bucket"}),
        (
            "image_classifier:batch_images:avg5m < 1.5 and on (job) sum by (job) (b_total) > 5",
            {"image_classifier:batch_images:avg5m", "b_total"},
        ),
        ('up{job=~".*"} == 0 or absent(info == 1)', {"up", "info"}),
        ("histogram_quantile(0.99, sum without (pod) (rate(c[5m])))", {"c"}),
    ],
)
def test_metric_names_of_promql(expr, names):
    assert metric_names(expr) == names
