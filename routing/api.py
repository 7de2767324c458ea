"""Management API for routing policies: the test console (`POST /api/routing/simulate`)."""

from django.http import Http404
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from routing.models import RoutingPolicy
from routing.policy.simulation import routing_simulation
from tenants.selectors import tenant_ids_editable_by


class ChatRequestField(serializers.DictField):
    def to_internal_value(self, data):
        data = super().to_internal_value(data)
        if not isinstance(data.get("model"), str) or not data["model"]:
            raise serializers.ValidationError("needs a `model` string")
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise serializers.ValidationError("needs `messages`, a non-empty list of message objects")
        return data


class SimulateSerializer(serializers.Serializer):
    tenant = serializers.SlugField()
    request = ChatRequestField()
    headers = serializers.DictField(child=serializers.CharField(allow_blank=True), required=False, default=dict)
    team = serializers.SlugField(required=False, default="", allow_blank=True)


def policy_for_editor(*, user, tenant_slug: str) -> RoutingPolicy:
    """The tenant's policy if the user may edit it; another tenant's answers like a missing one."""
    policies = RoutingPolicy.objects.select_related("tenant", "live_version")
    if not user.is_superuser:
        policies = policies.filter(tenant_id__in=tenant_ids_editable_by(user=user))
    policy = policies.filter(tenant__slug=tenant_slug).first()
    if policy is None:
        raise Http404("no routing policy")
    return policy


class RoutingSimulateView(APIView):
    def post(self, request: Request) -> Response:
        serializer = SimulateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        policy = policy_for_editor(user=request.user, tenant_slug=data["tenant"])
        return Response(
            routing_simulation(policy=policy, body=data["request"], headers=data["headers"], team_slug=data["team"])
        )
