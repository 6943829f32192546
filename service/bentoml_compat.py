"""Every use of BentoML's internals, in one place, checked against the version they were written for.

BentoML's public API does not cover a few things this service needs; each is reached here and nowhere
else, so upgrading BentoML means reading this one module (and running tests/unit/test_bentoml_compat.py):
- the OpenAPI document's title, version and description (BentoML writes its own name, "None" and
  its stock README there).
"""

from __future__ import annotations

import logging
from typing import Any

import attr
import bentoml

from classifier import __version__

logger = logging.getLogger(__name__)

BENTOML_VERSION = "1.4.30"  # what this module was written and tested against (pinned in pyproject.toml)


def check_version(installed: str | None = None) -> None:
    """Warn once at start-up when the installed BentoML is not the one this module was written for."""
    installed = installed or bentoml.__version__
    if installed != BENTOML_VERSION:
        logger.warning("BentoML %s is installed; this service was written and tested against %s. "
                       "Install bentoml==%s or run tests/unit/test_bentoml_compat.py first",
                       installed, BENTOML_VERSION, BENTOML_VERSION)


class DescribedService(bentoml.Service):
    """A BentoML service whose OpenAPI document carries this project's title, version and description."""

    openapi_title: str = "Image classifier"
    openapi_description: str = ""

    @property
    def openapi_spec(self) -> Any:
        spec = super().openapi_spec
        info = attr.evolve(spec.info, title=self.openapi_title, version=__version__,
                           description=self.openapi_description, contact=None)
        return attr.evolve(spec, info=info)


def described_service(title: str, description: str) -> type[DescribedService]:
    """A ``service_class`` for ``bentoml.service`` that writes ``title`` and ``description`` into /docs.json."""
    return type("Described", (DescribedService,), {"openapi_title": title, "openapi_description": description})
