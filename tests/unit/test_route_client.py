"""The client's checks on a response before it trusts it (clients/route_client.answer_from_outputs)."""

import json

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from clients.route_client import answer_from_outputs


def _bytes(value: str) -> np.ndarray:
    return np.array([[value.encode()]], dtype=object)


def test_a_well_formed_answer_for_this_request_is_returned():
    answer = answer_from_outputs(_bytes("positive"), _bytes(json.dumps({"request_id": "r1", "tier": "t1"})), "r1")
    assert answer.output == "positive" and answer.metadata["tier"] == "t1"


def test_missing_metadata_is_a_failed_request_not_a_crash():
    with pytest.raises(InferenceServerException, match="no METADATA"):
        answer_from_outputs(_bytes("positive"), None, "r1")


def test_an_answer_naming_another_request_is_rejected():
    with pytest.raises(InferenceServerException, match="belongs to request 'r0'"):
        answer_from_outputs(_bytes("x"), _bytes(json.dumps({"request_id": "r0"})), "r1")


def test_unparseable_metadata_is_rejected():
    with pytest.raises(InferenceServerException, match="malformed response"):
        answer_from_outputs(_bytes("x"), _bytes("{not json"), "r1")


def test_without_a_request_id_any_request_id_is_accepted():
    assert answer_from_outputs(_bytes("x"), _bytes(json.dumps({"request_id": "auto-7"})), None).metadata["request_id"] == "auto-7"
