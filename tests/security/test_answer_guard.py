import pytest

from routing.injection_guard import SecretEchoBlocked, guard_answer
from routing.models import InjectionGuardAction


def answer(content: str, arguments: str | None = None) -> dict:
    message = {"role": "assistant", "content": content}
    if arguments is not None:
        message["tool_calls"] = [{"type": "function", "function": {"name": "f", "arguments": arguments}}]
    return {"choices": [{"index": 0, "message": message}]}


def test_an_answer_echoing_a_provider_credential_is_blocked():
    with pytest.raises(SecretEchoBlocked) as blocked:
        guard_answer(answer("the key is upstream-cred-12345"), action="block", known_secrets=["upstream-cred-12345"])
    assert blocked.value.status == 502 and blocked.value.code == "answer_contains_secret"
    assert "upstream-cred-12345" not in blocked.value.message


@pytest.mark.parametrize(
    "content",
    ["sk-abcdefghijklmnopqrstuvwxyz012345", "AKIAIOSFODNN7EXAMPLE", "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789"],
)
def test_anything_shaped_like_a_credential_is_blocked_in_content_and_tool_arguments(content):
    with pytest.raises(SecretEchoBlocked):
        guard_answer(answer(f"here: {content}"), action="block")
    with pytest.raises(SecretEchoBlocked):
        guard_answer(answer("", arguments=f'{{"token": "{content}"}}'), action="block")


def test_flag_records_without_blocking_and_none_skips():
    verdict = guard_answer(answer("AKIAIOSFODNN7EXAMPLE"), action=InjectionGuardAction.FLAG)
    assert verdict.flagged and not verdict.blocked
    assert not guard_answer(answer("AKIAIOSFODNN7EXAMPLE"), action=InjectionGuardAction.NONE).flagged


def test_ordinary_answers_and_personal_data_pass():
    verdict = guard_answer(answer("Mail support@example.com about refunds."), action="block", known_secrets=["short"])
    assert not verdict.flagged
