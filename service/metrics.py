"""The project's own Prometheus metrics, defined once.

They are served at ``/metrics`` beside BentoML's own request and adaptive-batching metrics.
Created on first use (at start-up), after BentoML has set up prometheus_client's
multiprocess mode for the worker, never at import time.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from prometheus_client import Counter, Gauge, Histogram

PREFIX = "image_classifier"
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SHED_REASONS = ("queue_full", "queue_timeout", "body_budget", "batching_budget")
FEEDBACK_OUTCOMES = ("correct", "wrong", "image")  # by request id: was the answer right; or an uploaded image
_CONFIDENCE = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
# OOD scores: about 1 for a typical training image; thresholds fall around 1.5-3.
_OOD = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0, 100.0)


@dataclass(frozen=True)
class ServiceMetrics:
    predictions: Counter
    confidence: Histogram
    ood_score: Histogram
    ood_threshold: Gauge
    unknown: Counter
    drift_psi: Gauge
    training_share: Gauge
    rejected: Counter
    preprocess_seconds: Histogram
    inference_seconds: Histogram
    inference_cpu_seconds: Counter
    batch_images: Histogram
    model_info: Gauge
    shed: Counter
    admitted_images: Gauge
    queued_requests: Gauge
    held_body_bytes: Gauge
    explain_seconds: Histogram
    explain_cpu_seconds: Counter
    explain_shed: Counter
    feedback: Counter
    feedback_folder_images: Gauge
    feedback_folder_fill: Gauge
    training_accuracy: Gauge
    training_class_recall: Gauge


@lru_cache(maxsize=1)
def metrics() -> ServiceMetrics:
    """The process's metric objects (created once)."""
    created = ServiceMetrics(
        predictions=Counter(f"{PREFIX}_predictions", "Images classified, by predicted (top-1) class.", ["class_name"]),
        confidence=Histogram(
            f"{PREFIX}_prediction_confidence",
            "Probability of the top-1 class of each classified image.",
            buckets=_CONFIDENCE,
        ),
        ood_score=Histogram(
            f"{PREFIX}_ood_score",
            "Out-of-distribution score of each classified image (about 1 for a typical training image).",
            buckets=_OOD,
        ),
        ood_threshold=Gauge(
            f"{PREFIX}_ood_threshold",
            "The served model's OOD threshold: images scoring above it are answered as not known.",
            multiprocess_mode="livemax",
        ),
        unknown=Counter(
            f"{PREFIX}_unknown_predictions",
            "Images answered known=false (OOD score above the threshold), whether flagged or abstained.",
        ),
        drift_psi=Gauge(
            f"{PREFIX}_drift_psi",
            "Population stability index of the predicted classes over the last CLASSIFIER_DRIFT_WINDOW answers "
            "against the training split's class shares (above 0.25: a shift worth a look).",
            multiprocess_mode="livemax",
        ),
        training_share=Gauge(
            f"{PREFIX}_training_class_share",
            "Each class's share of the served model's training split (the drift figure's reference).",
            ["class_name"],
            multiprocess_mode="livemax",
        ),
        rejected=Counter(
            f"{PREFIX}_rejected_inputs",
            "Requests or images refused before inference, by reason (e.g. not_an_image, too_many_pixels, "
            "body_too_large, unsupported_media_type).",
            ["reason"],
        ),
        preprocess_seconds=Histogram(
            f"{PREFIX}_preprocess_duration_seconds", "Time to decode, resize and crop one image.", buckets=_SECONDS
        ),
        inference_seconds=Histogram(
            f"{PREFIX}_inference_duration_seconds",
            "Time the model service spends on one batch: the forward "
            "pass (and, for JPEGs sent undecoded, their decoding).",
            buckets=_SECONDS,
        ),
        inference_cpu_seconds=Counter(
            f"{PREFIX}_inference_cpu_seconds",
            "CPU time of the model service while its batch calls run, on every thread but its event loop's: the "
            "engine (with any /v1/explain running meanwhile). The rest of the server's CPU, from the processes' own "
            "counters, is the serving stack's: HTTP, decoding, batching.",
        ),
        batch_images=Histogram(
            f"{PREFIX}_inference_batch_images",
            "Images in each batch the model ran (BentoML's adaptive "
            "batch size metric counts requests; this counts images).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        ),
        model_info=Gauge(
            f"{PREFIX}_model_info",
            "The model being served (value 1): its tag, backbone, device and engine.",
            ["tag", "backbone", "device", "engine"],
            multiprocess_mode="livemax",
        ),
        shed=Counter(
            f"{PREFIX}_shed_requests",
            "Requests refused with 503 because the server was at capacity, by reason "
            "(queue_full, queue_timeout, body_budget, batching_budget).",
            ["reason"],
        ),
        admitted_images=Gauge(
            f"{PREFIX}_admitted_images",
            "Images past the admission gate (decoding, batching or inference).",
            multiprocess_mode="livesum",
        ),
        queued_requests=Gauge(
            f"{PREFIX}_queued_requests",
            "Requests waiting for admission.",
            multiprocess_mode="livesum",
        ),
        held_body_bytes=Gauge(
            f"{PREFIX}_held_body_bytes",
            "Bytes of request bodies held by the front, from before each is read until it is answered.",
            multiprocess_mode="livesum",
        ),
        explain_seconds=Histogram(
            f"{PREFIX}_explain_duration_seconds",
            "Time to answer one /v1/explain request: the wait for the explain thread, the prediction, Grad-CAM and "
            "the overlay.",
            buckets=_SECONDS + (30.0, 60.0),
        ),
        explain_cpu_seconds=Counter(
            f"{PREFIX}_explain_cpu_seconds",
            "CPU time spent by the explain thread (its share of the cores is what explain takes from predictions).",
        ),
        explain_shed=Counter(
            f"{PREFIX}_explain_shed_requests",
            "Explain requests refused with 503: the explain thread was busy and its queue full, or the wait too long.",
        ),
        feedback=Counter(
            f"{PREFIX}_feedback",
            "Feedback received, by true class and outcome: correct or wrong (feedback on a request id: was the "
            "served answer right), image (an uploaded image with its label, counted once however often it is sent).",
            ["class_name", "outcome"],
        ),
        feedback_folder_images=Gauge(
            f"{PREFIX}_feedback_folder_images",
            "Images in the feedback folder (CLASSIFIER_FEEDBACK_DIR).",
            multiprocess_mode="livemax",
        ),
        feedback_folder_fill=Gauge(
            f"{PREFIX}_feedback_folder_fill",
            "How full the feedback folder is: the larger of its image and byte shares of "
            "CLASSIFIER_FEEDBACK_MAX_IMAGES and _MAX_BYTES (1: full, feedback refused).",
            multiprocess_mode="livemax",
        ),
        training_accuracy=Gauge(
            f"{PREFIX}_training_accuracy",
            "The served model's top-1 accuracy on its test split at training time (live accuracy's reference).",
            multiprocess_mode="livemax",
        ),
        training_class_recall=Gauge(
            f"{PREFIX}_training_class_recall",
            "The served model's top-1 accuracy on each class of its test split at training time.",
            ["class_name"],
            multiprocess_mode="livemax",
        ),
    )
    for reason in SHED_REASONS:  # a series from the start, so rates and alerts see 0 rather than nothing
        created.shed.labels(reason)
    return created
