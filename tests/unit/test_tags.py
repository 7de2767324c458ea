"""A request's tags (the x-llmops-tags header) and the tag groups of usage reports: every tag set the gateway admits
has a label of its own, so no two groups of a `group_by=tag` report share one."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.ledger.columns import GROUPINGS
from llmops.gateway.chat.planning import TAGS_HEADER, request_tags
from llmops.gateway.errors import GatewayError

tag_label = GROUPINGS["tag"].label


@pytest.mark.parametrize(
    ("header", "tags"),
    [
        ("", []),
        ("checkout, eu, checkout", ["checkout", "eu"]),
        (" batch:batch_0a1b ", ["batch:batch_0a1b"]),
        ("untagged, (untagged)-eu, team=search", ["(untagged)-eu", "team=search", "untagged"]),
    ],
)
def test_tags_are_sorted_and_unique(header, tags):
    assert request_tags({TAGS_HEADER: header}) == tags


@pytest.mark.parametrize("header", ["a+b", "checkout, eu+us", "+", "(untagged)", "eu, (untagged) "])
def test_a_tag_holding_the_label_joiner_or_named_untagged_is_an_openai_shaped_400(header):
    with pytest.raises(GatewayError) as refused:
        request_tags({TAGS_HEADER: header})

    assert refused.value.status_code == 400
    assert (refused.value.param, refused.value.code, refused.value.error_type) == (
        TAGS_HEADER,
        "invalid_value",
        "invalid_request_error",
    )
    assert "`+`" in refused.value.message and "`(untagged)`" in refused.value.message


def admitted_tags(header: str) -> list[str] | None:
    try:
        return request_tags({TAGS_HEADER: header})
    except GatewayError:
        return None


headers = st.text(alphabet="ab+,() untged", max_size=24) | st.sampled_from(["a+b", "a,b", "(untagged)", ""])


@settings(max_examples=300, deadline=None)
@given(first=headers, second=headers)
def test_two_admitted_tag_sets_have_the_same_label_only_when_they_are_the_same(first, second):
    first_tags, second_tags = admitted_tags(first), admitted_tags(second)
    if first_tags is None or second_tags is None:
        return

    assert (tag_label(first_tags) == tag_label(second_tags)) == (first_tags == second_tags)
