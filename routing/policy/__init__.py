"""Routing policies: the published document, its compiled form, and the pure evaluation the request path runs."""

from routing.policy.document import CompiledPolicy, compile_policy
from routing.policy.engine import (
    RouteDecision,
    RouteRequest,
    route_request,
    route_request_from_body,
    route_request_from_embeddings,
)
from routing.policy.errors import RoutingRefusal
from routing.policy.live import build_live_policies

__all__ = [
    "CompiledPolicy",
    "RouteDecision",
    "RouteRequest",
    "RoutingRefusal",
    "build_live_policies",
    "compile_policy",
    "route_request",
    "route_request_from_body",
    "route_request_from_embeddings",
]
