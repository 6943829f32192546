"""The baseline for the benchmark: a plain BentoML service in the shape of BentoML's public ResNet example.

    REFERENCE_MODEL_TAG=transfer-classifier:latest bentoml serve loadtests.reference_service:ReferenceClassifier

One service; a batchable API taking PIL images; torchvision transforms per image inside the batch;
eager PyTorch in float32. It serves the same trained network, with the same preprocessing sizes and
the same batching limits as ours, so the benchmark compares the serving stacks and nothing else.
Not part of the product.
"""

from __future__ import annotations

import os

import bentoml
import torch
from PIL.Image import Image
from torchvision import transforms

from classifier.store import load_model

MAX_BATCH_SIZE = int(os.environ.get("CLASSIFIER_MAX_BATCH_SIZE", "16"))
MAX_LATENCY_MS = int(os.environ.get("CLASSIFIER_MAX_LATENCY_MS", "10000"))


@bentoml.service(name="reference_classifier", workers=1, traffic={"timeout": 120})
class ReferenceClassifier:
    def __init__(self) -> None:
        loaded = load_model(os.environ.get("REFERENCE_MODEL_TAG", "transfer-classifier:latest"))
        c = loaded.contract
        self.classes = c.class_names
        self.model = loaded.network.eval()
        self.transform = transforms.Compose(
            [
                transforms.Resize(c.resize_size),
                transforms.CenterCrop(c.image_size),
                transforms.ToTensor(),
                transforms.Normalize(c.mean, c.std),
            ]
        )

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def classify(self, images: list[Image]) -> list[dict]:
        batch = torch.stack([self.transform(img.convert("RGB")) for img in images])
        with torch.inference_mode():
            probs = self.model(batch).softmax(dim=1)
        best = probs.max(dim=1)
        return [
            {"label": self.classes[i], "probability": float(p)} for p, i in zip(best.values, best.indices, strict=True)
        ]
