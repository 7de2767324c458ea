"""Management API for routing policies: the test console (`POST /api/routing/simulate`)."""

from django.http import Http404
from drf_spectacular.utils import extend_schema, extend_schema_field, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from routing.max_tokens import MAX_TOKENS_FIELDS
from routing.models import RoutingPolicy
from routing.policy.simulation import routing_simulation
from tenants.permissions import Action

MESSAGE_ROLES = ("system", "developer", "user", "assistant", "tool", "function")


class ContentPartSerializer(serializers.Serializer):
    type = serializers.CharField(max_length=64)
    text = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    image_url = serializers.JSONField(required=False)
    refusal = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string"},
            {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "type": {"type": "string"},
                        "text": {"type": "string"},
                        "image_url": {},
                        "refusal": {"type": "string"},
                    },
                    "required": ["type"],
                },
            },
        ],
        "nullable": True,
    }
)
class MessageContentField(serializers.Field):
    """A message's content as OpenAI takes it: text, a list of typed parts, or null (an assistant's tool call)."""

    def to_internal_value(self, data):
        if data is None or isinstance(data, str):
            return data
        if isinstance(data, list):
            parts = ContentPartSerializer(data=data, many=True)
            parts.is_valid(raise_exception=True)
            return [dict(part) for part in parts.validated_data]
        raise serializers.ValidationError("Must be a string, a list of content parts, or null.")

    def to_representation(self, value):
        return value


class SimulatedMessageSerializer(serializers.Serializer):
    """A message with every field the prompt's count reads (routing.tokens), kept as sent."""

    role = serializers.ChoiceField(choices=MESSAGE_ROLES)
    content = MessageContentField(required=False, allow_null=True)
    name = serializers.CharField(required=False, max_length=256, trim_whitespace=False)
    refusal = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    tool_calls = serializers.ListField(child=serializers.DictField(), required=False)
    function_call = serializers.DictField(required=False)


class SimulatedRequestSerializer(serializers.Serializer):
    """The parts of an OpenAI chat request that routing reads, its prompt's count included; other fields are
    ignored."""

    model = serializers.CharField(max_length=256)
    messages = SimulatedMessageSerializer(many=True, allow_empty=False)
    metadata = serializers.DictField(child=serializers.CharField(allow_blank=True, max_length=512), required=False)
    tools = serializers.ListField(child=serializers.DictField(), required=False)
    functions = serializers.ListField(child=serializers.DictField(), required=False)
    response_format = serializers.DictField(required=False)

    def get_fields(self):
        caps = {
            name: serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=2**31 - 1)
            for name in MAX_TOKENS_FIELDS
        }
        return {**super().get_fields(), **caps}


class SimulateSerializer(serializers.Serializer):
    tenant = serializers.SlugField(max_length=64)
    request = SimulatedRequestSerializer()
    headers = serializers.DictField(
        child=serializers.CharField(allow_blank=True, max_length=1024), required=False, default=dict
    )
    team = serializers.SlugField(required=False, default="", allow_blank=True, max_length=64)


SimulationSerializer = inline_serializer(
    "RoutingSimulation",
    fields={
        "tenant": serializers.CharField(),
        "request": serializers.DictField(help_text="The routing features read from the request."),
        "live_version": serializers.IntegerField(allow_null=True),
        "draft": serializers.DictField(help_text="The draft's decision, refusal, or why it does not compile."),
        "live": serializers.DictField(allow_null=True, help_text="The live version's decision, if one is live."),
    },
)


def policy_for_editor(*, user, tenant_slug: str) -> RoutingPolicy:
    """The tenant's policy if the user may edit it; another tenant's answers like a missing one."""
    policies = RoutingPolicy.objects.restrict(user, Action.EDIT).select_related("tenant", "live_version")
    policy = policies.filter(tenant__slug=tenant_slug).first()
    if policy is None:
        raise Http404("no routing policy")
    return policy


class RoutingSimulateView(APIView):
    @extend_schema(request=SimulateSerializer, responses=SimulationSerializer)
    def post(self, request: Request) -> Response:
        serializer = SimulateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        policy = policy_for_editor(user=request.user, tenant_slug=data["tenant"])
        return Response(
            routing_simulation(policy=policy, body=data["request"], headers=data["headers"], team_slug=data["team"])
        )
