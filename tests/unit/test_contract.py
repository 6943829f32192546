import pytest
from pydantic import ValidationError

from classifier.contract import CONTRACT_VERSION, METADATA_KEY, ContractError, ModelContract


def test_round_trip_through_metadata(contract):
    metadata = {METADATA_KEY: contract.to_metadata(), "other": 1}
    assert ModelContract.from_metadata(metadata) == contract
    assert contract.num_classes == 2


def test_is_frozen(contract):
    with pytest.raises(ValidationError, match="frozen"):
        contract.image_size = 128


@pytest.mark.parametrize(
    "change, message",
    [
        ({"resize_size": 32}, "smaller than image_size"),
        ({"class_names": ["a", "a"]}, "unique"),
        ({"class_names": ["only"]}, "at least 2"),
        ({"std": [0.2, 0.0, 0.2]}, "positive"),
        ({"contract_version": CONTRACT_VERSION + 1}, "not supported"),
        ({"surprise": 1}, "Extra inputs"),
    ],
)
def test_invalid_contracts_are_rejected_with_reason(contract, change, message):
    raw = {**contract.to_metadata(), **change}
    with pytest.raises(ContractError, match=message):
        ModelContract.from_metadata({METADATA_KEY: raw})


def test_metadata_without_contract_says_how_to_fix():
    with pytest.raises(ContractError, match="retrain"):
        ModelContract.from_metadata({"foo": "bar"})


def test_every_field_declares_whether_it_is_preprocessing(contract):
    from classifier.contract import ModelContract

    for name, field in ModelContract.model_fields.items():  # a new field must say, or the feature cache could go stale
        assert isinstance(field.json_schema_extra, dict) and "preprocessing" in field.json_schema_extra, name
    assert set(ModelContract.preprocessing_fields()) == {"image_size", "resize_size", "interpolation", "mean", "std"}
    assert contract.preprocessing()["mean"] == list(contract.mean)  # JSON-safe, for the cache key
