"""`/api/budgets/` for tenant owners and admins (session auth).

Budgets of tenants where the caller is not an owner or admin answer 404, exactly like missing ones.
A new budget goes to the tenant named by `?tenant=<slug>`, or to the caller's only such tenant.
"""

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.exceptions import ValidationError as ApiValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.budgets.selectors import budget_status
from billing.budgets.services import budget_create, budget_delete, budget_update
from billing.ledger.costs import format_cost
from billing.models import CUSTOMER_MAX_LENGTH, AlertChannel, Budget, BudgetAction, BudgetPeriod, BudgetScope
from core.api import TenantSlugField
from tenants.models import ApiKey, Team, Tenant
from tenants.permissions import Action
from tenants.selectors import tenant_named


class BudgetInputSerializer(serializers.Serializer):
    """Shapes only; budget_validate decides what makes sense. Team by slug, key by prefix, channels by id."""

    scope = serializers.ChoiceField(choices=BudgetScope.choices, default=BudgetScope.TENANT)
    team = serializers.CharField(required=False, allow_blank=True, default="", max_length=64)
    api_key = serializers.CharField(required=False, allow_blank=True, default="", max_length=16)
    model_name = serializers.CharField(required=False, allow_blank=True, default="", max_length=128)
    customer = serializers.CharField(
        required=False,
        allow_blank=True,
        default="",
        trim_whitespace=False,
        max_length=CUSTOMER_MAX_LENGTH,
        help_text="Customer scope: empty holds every customer to the limit each; an id makes it that customer's own.",
    )
    period = serializers.ChoiceField(choices=BudgetPeriod.choices, default=BudgetPeriod.MONTH)
    limit_usd = serializers.DecimalField(max_digits=20, decimal_places=10)
    thresholds = serializers.ListField(child=serializers.IntegerField(min_value=1, max_value=1000), required=False)
    action = serializers.ChoiceField(choices=BudgetAction.choices, default=BudgetAction.BLOCK)
    is_active = serializers.BooleanField(default=True)
    channels = serializers.ListField(child=serializers.IntegerField(min_value=1, max_value=2**63 - 1), required=False)


class TenantQuerySerializer(serializers.Serializer):
    tenant = TenantSlugField(help_text="Tenant slug; optional when you may edit exactly one tenant.")


class CustomerQuerySerializer(serializers.Serializer):
    customer = serializers.CharField(
        required=False,
        max_length=CUSTOMER_MAX_LENGTH,
        help_text="For a budget that holds each customer: the customer whose current period to show.",
    )


def _money() -> serializers.CharField:
    return serializers.CharField(help_text="USD, a decimal string at the ledger's 10 places.")


class BudgetPeriodStatusSerializer(serializers.Serializer):
    key = serializers.CharField()
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    spent_usd = _money()
    reserved_usd = _money()
    remaining_usd = _money()


class BudgetSerializer(serializers.Serializer):
    """A budget as the API answers it (budget_output); documentation only."""

    id = serializers.IntegerField()
    tenant = serializers.CharField()
    scope = serializers.ChoiceField(choices=BudgetScope.choices)
    team = serializers.CharField(allow_null=True)
    api_key = serializers.CharField(allow_null=True)
    model_name = serializers.CharField(allow_blank=True)
    customer = serializers.CharField(allow_blank=True)
    period = serializers.ChoiceField(choices=BudgetPeriod.choices)
    limit_usd = _money()
    thresholds = serializers.ListField(child=serializers.IntegerField())
    action = serializers.ChoiceField(choices=BudgetAction.choices)
    is_active = serializers.BooleanField()
    channels = serializers.ListField(child=serializers.IntegerField())
    current_period = BudgetPeriodStatusSerializer(
        allow_null=True,
        help_text="Null for a budget that holds each customer, unless ?customer= names the customer to show.",
    )


def budget_output(budget: Budget, *, customer: str = "") -> dict:
    return {
        "id": budget.pk,
        "tenant": budget.tenant.slug,
        "scope": budget.scope,
        "team": budget.team.slug if budget.team_id else None,
        "api_key": budget.api_key.prefix if budget.api_key_id else None,
        "model_name": budget.model_name,
        "customer": budget.customer,
        "period": budget.period,
        "limit_usd": format_cost(budget.limit_usd),
        "thresholds": budget.thresholds,
        "action": budget.action,
        "is_active": budget.is_active,
        "channels": sorted(channel.pk for channel in budget.channels.all()),
        "current_period": _current_period(budget, customer=customer),
    }


def _current_period(budget: Budget, *, customer: str) -> dict | None:
    if budget.holds_each_customer and not customer:
        return None
    current = budget_status(budget=budget, now=timezone.now(), customer=customer)
    return {
        "key": current.window.key,
        "start": current.window.start.isoformat(),
        "end": current.window.end.isoformat(),
        "spent_usd": format_cost(current.spent_usd),
        "reserved_usd": format_cost(current.reserved_usd),
        "remaining_usd": format_cost(current.remaining_usd),
    }


def _tenant_slug(request: Request) -> str:
    query = TenantQuerySerializer(data=request.query_params.dict())
    query.is_valid(raise_exception=True)
    return query.validated_data.get("tenant", "")


def _editable_tenant(request: Request) -> Tenant:
    tenants = Tenant.objects.restrict(request.user, Action.EDIT)
    if slug := _tenant_slug(request):
        return tenant_named(tenants=tenants, slug=slug)
    only = list(tenants[:2])
    if len(only) != 1:
        raise ApiValidationError({"tenant": "Name the tenant with ?tenant=<slug>."})
    return only[0]


def _editable_budgets(request: Request):
    return (
        Budget.objects.restrict(request.user, Action.EDIT)
        .select_related("tenant", "team", "api_key")
        .prefetch_related("channels")
    )


# A body field naming a team or key, how it is found in the tenant, and what is said when it is not.
_TARGET_LOOKUPS = (
    ("team", Team, "slug", "No team '{}' in this tenant."),
    ("api_key", ApiKey, "prefix", "No API key with prefix '{}' in this tenant."),
)


def _targets(tenant: Tenant, data: dict) -> dict:
    """Team, key and channels named in the body, looked up in the tenant only."""
    targets = {}
    for field, model, lookup, missing in _TARGET_LOOKUPS:
        if data.get(field):
            targets[field] = model.objects.for_tenant(tenant).filter(**{lookup: data[field]}).first()
            if targets[field] is None:
                raise ApiValidationError({field: missing.format(data[field])})
        elif field in data:
            targets[field] = None
    if "channels" in data:
        channels = list(AlertChannel.objects.for_tenant(tenant).filter(pk__in=data["channels"]))
        if len(channels) != len(set(data["channels"])):
            raise ApiValidationError({"channels": "No such alert channel in this tenant."})
        targets["channels"] = channels
    return targets


def _as_api_error(error: ValidationError) -> ApiValidationError:
    return ApiValidationError(error.message_dict if hasattr(error, "error_dict") else error.messages)


class BudgetListView(APIView):
    @extend_schema(
        operation_id="api_budgets_list", parameters=[TenantQuerySerializer], responses=BudgetSerializer(many=True)
    )
    def get(self, request: Request) -> Response:
        budgets = _editable_budgets(request)
        if _tenant_slug(request):
            budgets = budgets.filter(tenant=_editable_tenant(request))
        return Response([budget_output(budget) for budget in budgets])

    @extend_schema(parameters=[TenantQuerySerializer], request=BudgetInputSerializer, responses={201: BudgetSerializer})
    def post(self, request: Request) -> Response:
        tenant = _editable_tenant(request)
        serializer = BudgetInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = {**serializer.validated_data, **_targets(tenant, serializer.validated_data)}
        try:
            budget = budget_create(tenant=tenant, **data)
        except ValidationError as error:
            raise _as_api_error(error) from error
        return Response(budget_output(budget), status=status.HTTP_201_CREATED)


class BudgetDetailView(APIView):
    def budget(self, request: Request, budget_id: int) -> Budget:
        budget = _editable_budgets(request).filter(pk=budget_id).first()
        if budget is None:
            raise NotFound("No such budget.")
        return budget

    @extend_schema(parameters=[CustomerQuerySerializer], responses=BudgetSerializer)
    def get(self, request: Request, budget_id: int) -> Response:
        query = CustomerQuerySerializer(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        customer = query.validated_data.get("customer", "")
        return Response(budget_output(self.budget(request, budget_id), customer=customer))

    @extend_schema(request=BudgetInputSerializer, responses=BudgetSerializer)
    def patch(self, request: Request, budget_id: int) -> Response:
        budget = self.budget(request, budget_id)
        serializer = BudgetInputSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        given = {field: value for field, value in serializer.validated_data.items() if field in request.data}
        changes = {**given, **_targets(budget.tenant, given)}
        try:
            with transaction.atomic():
                budget = budget_update(budget=budget, **changes)
        except ValidationError as error:
            raise _as_api_error(error) from error
        return Response(budget_output(budget))

    @extend_schema(responses={204: None})
    def delete(self, request: Request, budget_id: int) -> Response:
        budget_delete(budget=self.budget(request, budget_id))
        return Response(status=status.HTTP_204_NO_CONTENT)
