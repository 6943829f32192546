"""``python -m training``: train a classifier and save it to the BentoML model store."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from classifier.contract import ContractError
from classifier.engines import EngineError
from training.config import parse_args
from training.errors import TrainingError

if TYPE_CHECKING:
    from training.pipeline import RunResult


def _summary(result: RunResult) -> str:
    test = result.test_metrics
    lines = [
        "",
        f"saved model  {result.tag}",
        f"test split   accuracy {test['accuracy']:.3f}, loss {test['loss']:.3f}, macro F1 {test['macro_f1']:.3f} "
        f"on {test['count']} images",
    ]
    for name, row in test["per_class"].items():
        lines.append(f"  {name:<20} precision {row['precision']:.3f}  recall {row['recall']:.3f}  f1 {row['f1']:.3f}")
    if c := result.calibration:
        lines.append(
            f"calibration  temperature {c['temperature']:.3f}: test ECE {c['test_ece_before']:.3f} -> "
            f"{c['test_ece_after']:.3f} ({c['fitted_on']})"
        )
    if o := result.ood:
        text = f"threshold {o['threshold']:.3f} flags {o['val_flagged']:.1%} of validation"
        text += f", {o['test_flagged']:.1%} of test images"
        if other := o.get("ood_data"):
            text += f"; --ood-data: {other['flagged']:.1%} of {other['images']} flagged"
            text += f", AUROC {other['auroc']['mahalanobis']:.3f}"
        lines.append(f"ood score    {text}")
    lines += _engine_lines(result.engines)
    cache = ", ".join(f"{split} {'hit' if hit else 'miss'}" for split, hit in result.cache_hits.items())
    lines += [
        f"feature cache {cache}",
        f"report       {result.report_path}",
        *(f"plot         {p}" for p in result.plots),
        f"serve it     CLASSIFIER_MODEL_TAG={result.tag} {_bentoml_command()} serve service.service:ImageClassifier",
    ]
    return "\n".join(lines)


def _bentoml_command() -> str:
    """``bentoml`` as this interpreter's environment has it (.venv/bin/bentoml), so that the line runs as shown."""
    beside = Path(sys.executable).parent / "bentoml"
    if not beside.is_file():
        return "bentoml"
    try:
        return str(beside.relative_to(Path.cwd()))
    except ValueError:
        return str(beside)


def _engine_lines(engines: dict | None) -> list[str]:
    if not engines:
        return ["engines      torch only (--export none)"]
    lines: list[str] = []
    for name, q in engines.items():
        if not isinstance(q, dict):
            continue
        if "top1_agreement_with_fp32" in q:
            text = (
                f"{name}: accuracy {q['accuracy_change']:+.3f} vs fp32, top-1 agreement "
                f"{q['top1_agreement_with_fp32']:.3f}, {q['speedup_vs_fp32']:.1f}x fp32's speed"
            )
        else:
            text = f"{name}: top-1 agreement with torch {q['top1_agreement_with_torch']:.3f}"
        lines.append(("engines      " if not lines else "             ") + text)
    return lines


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for chatty in ("onnx_ir", "onnxscript", "torch.onnx"):  # the ONNX exporter logs each of its passes
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        from training.pipeline import run  # torch takes seconds to import: not before --help

        result = run(cfg)
    except (TrainingError, ContractError, EngineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permissions, ... : the user's to fix, not a bug
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(_summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
