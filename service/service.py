"""The BentoML service: endpoints only; decoding, preprocessing and inference live in their modules.

A first cut (issue #2 needs something to serve); issue #3 adds adaptive batching, the
multi-image and raw-body endpoints, limits, metrics and packaging.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import bentoml
from bentoml.exceptions import InvalidArgument
from bentoml.validators import ContentType

from service.contract import DEFAULT_MODEL_NAME
from service.engine import TorchEngine, pick_device, top_classes
from service.imaging import DEFAULT_MAX_PIXELS, InputError
from service.model_store import load_model
from service.preprocessing import prepare_image
from service.schemas import Prediction

logger = logging.getLogger(__name__)


@bentoml.service(traffic={"timeout": 60})
class ImageClassifier:
    def __init__(self) -> None:
        tag = os.environ.get("MODEL_TAG", f"{DEFAULT_MODEL_NAME}:latest")
        self.max_pixels = int(os.environ.get("MAX_PIXELS", DEFAULT_MAX_PIXELS))
        loaded = load_model(tag)
        self.tag = loaded.tag
        self.engine = TorchEngine(loaded, pick_device())
        self.engine.warm_up()  # /readyz turns ready only after this
        logger.info("serving %s on %s", self.tag, self.engine.device)

    @bentoml.api(route="/predict")
    def predict(self, image: Annotated[Path, ContentType("image/*")], top_k: int = 5) -> Prediction:
        """Classify one uploaded image (multipart field ``image``)."""
        if top_k < 1:
            raise InvalidArgument("top_k must be at least 1")
        try:
            tensor = prepare_image(image.read_bytes(), self.engine.contract, max_pixels=self.max_pixels)
        except InputError as exc:
            raise InvalidArgument(f"{exc.reason}: {exc.message}") from exc
        probs = self.engine.predict(tensor.unsqueeze(0))[0]
        return Prediction(model=self.tag, top_k=top_classes(probs, self.engine.contract.class_names, top_k))
