"""The test console: how a request would be routed under a policy's draft and under its live version."""

from routing.catalog import build_model_catalog
from routing.injection_guard import inspect_messages
from routing.models import RoutingPolicy
from routing.policy.document import CompiledPolicy, RegexError, compile_policy
from routing.policy.drafts import policy_draft_document
from routing.policy.engine import RouteDecision, route_request, route_request_from_body
from routing.policy.errors import RoutingRefusal
from routing.tokens import count_chat_tokens, count_definition_tokens


def _decision_view(policy: CompiledPolicy, features, catalog, messages: list[dict]) -> dict:
    try:
        decision: RouteDecision = route_request(policy, features, catalog, trace=True)
    except RoutingRefusal as refusal:
        return {"refused": {"status": refusal.status, "code": refusal.code, "message": refusal.message}}
    cap = decision.outcome.prompt_token_cap
    guard = inspect_messages(messages, action=policy.injection_guard_action)
    return {
        **decision.as_json(),
        "auto_threshold": policy.auto_threshold,
        "prompt_over_cap": cap is not None and features.prompt_tokens > cap,
        "guard": {"action": policy.injection_guard_action, "reasons": list(guard.reasons)},
    }


def routing_simulation(*, policy: RoutingPolicy, body: dict, headers: dict[str, str], team_slug: str = "") -> dict:
    """Route `body` (an OpenAI chat request) under the draft and the live version, explaining each step."""
    catalog = build_model_catalog(tenant_id=policy.tenant_id)
    messages = body.get("messages") or []
    requested = str(body.get("model") or "")
    encoding_model = catalog.prompt_counting_model(policy.tenant_id, requested)
    # Counted as live routing counts it (routing.tokens.count_prompt_tokens_async, in the same encoding): the
    # messages, and the definitions billed as prompt beside them.
    prompt_tokens = count_chat_tokens(messages, model=encoding_model) + count_definition_tokens(
        body, model=encoding_model
    )
    features = route_request_from_body(
        body,
        headers={name.lower(): value for name, value in headers.items()},
        tenant_id=policy.tenant_id,
        team_slug=team_slug,
        prompt_tokens=prompt_tokens,
    )
    try:
        draft = _decision_view(compile_policy(policy_draft_document(policy=policy)), features, catalog, messages)
    except RegexError as error:
        draft = {"invalid": f"the draft does not compile: {error}"}
    live_version = policy.live_version
    live = (
        _decision_view(compile_policy(live_version.document, version=live_version.number), features, catalog, messages)
        if live_version
        else None
    )
    return {
        "tenant": policy.tenant.slug,
        "request": {
            "model": requested,
            "prompt_tokens": prompt_tokens,
            "task_type": features.task_type,
            "user_tier": features.user_tier,
            "team": features.team_slug,
            "has_tools": features.has_tools,
            "has_images": features.has_images,
            "requested_max_tokens": features.requested_max_tokens,
        },
        "live_version": live_version.number if live_version else None,
        "draft": draft,
        "live": live,
    }
