"""The one module that touches BentoML's internals still finds what it relies on in the installed BentoML."""

from __future__ import annotations

import logging

import bentoml

from service import bentoml_compat


def test_installed_bentoml_is_the_one_written_for():
    assert bentoml.__version__ == bentoml_compat.BENTOML_VERSION


def test_version_check_warns_on_another_version(caplog):
    with caplog.at_level(logging.WARNING, logger=bentoml_compat.__name__):
        bentoml_compat.check_version(bentoml_compat.BENTOML_VERSION)
        assert not caplog.records
        bentoml_compat.check_version("9.9.9")
    assert "9.9.9" in caplog.text and bentoml_compat.BENTOML_VERSION in caplog.text


def test_described_service_rewrites_only_the_info():
    @bentoml.service(name="probe", service_class=bentoml_compat.described_service("Probe", "What it does."))
    class Probe:
        @bentoml.api
        def echo(self, text: str) -> str:
            return text

    spec = Probe.openapi_spec.asdict()
    assert spec["info"]["title"] == "Probe" and spec["info"]["description"] == "What it does."
    assert spec["info"]["version"] == bentoml_compat.__version__
    assert "/echo" in spec["paths"]
