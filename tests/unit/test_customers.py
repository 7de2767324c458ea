"""Which end customer a request names: the x-llmops-customer header, else the OpenAI `user` field; a bad id is a 400
that names where it came from."""

import pytest

from llmops.gateway.chat.planning import CUSTOMER_HEADER, request_customer
from llmops.gateway.chat.validation import validate_chat_request
from llmops.gateway.errors import GatewayError

HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("headers", "user", "customer"),
    [
        ({}, None, ""),
        ({}, "", ""),
        ({}, "alice", "alice"),
        ({}, "  alice  ", "alice"),
        ({CUSTOMER_HEADER: "bob"}, None, "bob"),
        ({CUSTOMER_HEADER: "bob"}, "alice", "bob"),
        ({CUSTOMER_HEADER: "   "}, "alice", "alice"),
        ({CUSTOMER_HEADER: ""}, "", ""),
        ({}, "ünïcødé 客户", "ünïcødé 客户"),
        ({}, "x" * 256, "x" * 256),
    ],
)
def test_the_header_wins_over_the_user_field_and_empty_is_no_customer(headers, user, customer):
    assert request_customer(headers, user) == customer


@pytest.mark.parametrize(
    ("headers", "user", "param"),
    [
        ({}, "x" * 257, "user"),
        ({}, "nul\x00inside", "user"),
        ({}, "line\nbreak", "user"),
        ({}, 42, "user"),
        ({CUSTOMER_HEADER: "y" * 257}, "alice", CUSTOMER_HEADER),
        ({CUSTOMER_HEADER: "tab\there"}, None, CUSTOMER_HEADER),
    ],
)
def test_a_bad_customer_id_is_an_openai_shaped_400(headers, user, param):
    with pytest.raises(GatewayError) as refused:
        request_customer(headers, user)
    assert refused.value.status_code == 400
    assert (refused.value.param, refused.value.code, refused.value.error_type) == (
        param,
        "invalid_value" if not isinstance(user, int) else "invalid_type",
        "invalid_request_error",
    )


def test_a_chat_body_with_a_bad_user_field_is_refused_by_validation():
    with pytest.raises(GatewayError) as refused:
        validate_chat_request({"model": "m", "messages": HI, "user": "a\x00b"})
    assert refused.value.param == "user"
    assert "at most 256 printable characters" in refused.value.message
    assert validate_chat_request({"model": "m", "messages": HI, "user": "alice"})["user"] == "alice"


def test_other_endpoints_pass_their_own_field():
    """/v1/messages names its customer in metadata.user_id: the same helper, its own parameter in the error."""
    assert request_customer({}, "carol", param="metadata.user_id") == "carol"
    with pytest.raises(GatewayError) as refused:
        request_customer({}, "\x07", param="metadata.user_id")
    assert refused.value.param == "metadata.user_id"
