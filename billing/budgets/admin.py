"""Admin for budgets, alert channels, alerts and their deliveries, rate limits and anomalies, scoped per tenant.

Rows are created and changed through billing's services, as the API and `manage.py budget_set` do.
"""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models.constants import LOOKUP_SEP
from django.utils import timezone

from billing.alerts.channels import target_masked
from billing.alerts.services import (
    alert_channel_create,
    alert_channel_update,
    alert_channel_validate,
    alert_delivery_reopen,
)
from billing.alerts.tasks import alert_deliveries_send
from billing.budgets.selectors import budget_status
from billing.budgets.services import budget_counters_rebuild, budget_create, budget_update, budget_validate
from billing.ledger.costs import format_money
from billing.models import AlertChannel, AlertDelivery, Anomaly, Budget, BudgetAlert, RateLimit, RateLimitScope
from billing.ratelimits import rate_limit_create, rate_limit_validate
from tenants.admin import (
    ReadOnlyScopedAdmin,
    TenantListFilter,
    TenantScopedAdmin,
    TenantScopedInline,
    adopt_saved_row,
    request_access,
)
from tenants.permissions import Action


class ThresholdsField(forms.CharField):
    """Percentages typed as "50,80,100"."""

    def prepare_value(self, value):
        return ",".join(str(percent) for percent in value) if isinstance(value, list | tuple) else value

    def to_python(self, value):
        text = super().to_python(value)
        try:
            return [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise ValidationError("Enter whole percentages separated by commas, e.g. 50,80,100.") from None


class BudgetForm(forms.ModelForm):
    thresholds = ThresholdsField(initial="50,80,100", help_text="Percentages of the limit that alert, in order.")

    class Meta:
        model = Budget
        fields = (
            "tenant",
            "scope",
            "team",
            "api_key",
            "model_name",
            "customer",
            "period",
            "limit_usd",
            "thresholds",
            "action",
            "channels",
            "is_active",
        )

    def clean(self):
        data = super().clean()
        tenant = data.get("tenant") or getattr(self.instance, "tenant", None)
        if tenant is None or self.errors:
            return data
        budget_validate(
            tenant=tenant,
            scope=data.get("scope"),
            team=data.get("team"),
            api_key=data.get("api_key"),
            model_name=data.get("model_name", ""),
            period=data.get("period"),
            limit_usd=data.get("limit_usd"),
            thresholds=data.get("thresholds"),
            action=data.get("action"),
            customer=data.get("customer", ""),
        )
        if any(channel.tenant_id != tenant.pk for channel in data.get("channels") or []):
            raise ValidationError({"channels": "No such alert channel in this tenant."})
        return data


@admin.register(Budget)
class BudgetAdmin(TenantScopedAdmin):
    form = BudgetForm
    list_display = ("__str__", "tenant", "scope", "period", "limit_usd", "this_period", "action", "is_active")
    list_filter = (("tenant", TenantListFilter), "scope", "period", "action", "is_active")
    search_fields = ("=customer",)
    list_select_related = ("tenant", "team__tenant", "api_key__team")
    filter_horizontal = ("channels",)
    actions = ("rebuild_counters",)
    add_fields = BudgetForm.Meta.fields
    fields = (*BudgetForm.Meta.fields, "this_period", "created_at", "updated_at")
    readonly_fields = ("tenant", "this_period", "created_at", "updated_at")

    @admin.display(description="This period")
    def this_period(self, budget: Budget) -> str:
        """Spent (the ledger), reserved (requests in flight) and what remains of the limit, in the current period."""
        if budget.pk is None:
            return "–"
        if budget.holds_each_customer:
            return "Each customer has its own spend this period: group usage by customer to see it."
        status = budget_status(budget=budget, now=timezone.now())
        return (
            f"{status.window.key}: spent {format_money(status.spent_usd)}, "
            f"reserved {format_money(status.reserved_usd)}, remaining {format_money(status.remaining_usd)}"
        )

    def save_model(self, request, obj, form, change):
        self.ensure_tenant_editable(request, obj)
        data = {field: form.cleaned_data[field] for field in BudgetForm.Meta.fields if field in form.cleaned_data}
        data.pop("tenant", None)
        channels = data.pop("channels", None)
        if change:
            budget_update(budget=obj, channels=channels, **data)
        else:
            adopt_saved_row(target=obj, source=budget_create(tenant=form.cleaned_data["tenant"], **data))

    def save_related(self, request, form, formsets, change):
        # Channels were set by the service in save_model.
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)

    @admin.action(description="Rebuild this period's counters from the ledger", permissions=["change"])
    def rebuild_counters(self, request, queryset):
        budgets = list(queryset.select_related("tenant"))
        if not all(self.has_change_permission(request, budget) for budget in budgets):
            raise PermissionDenied
        for budget in budgets:
            spent = budget_counters_rebuild(budget=budget)
            self.message_user(
                request, f"{budget}: counter set to the ledger's {format_money(spent)}.", messages.SUCCESS
            )


class AlertChannelForm(forms.ModelForm):
    signing_secret = forms.CharField(
        required=False,
        widget=forms.PasswordInput,
        help_text="For signed webhooks (Standard Webhooks): a whsec_… secret, or any text, whose bytes are then the "
        "key. Stored encrypted and never shown; leave empty to keep the current one.",
    )

    class Meta:
        model = AlertChannel
        fields = ("tenant", "name", "kind", "target", "is_active")

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        kind = data.get("kind") or self.instance.kind
        has_secret = bool(data.get("signing_secret") or self.instance.signing_secret_encrypted)
        alert_channel_validate(
            tenant=data.get("tenant") or self.instance.tenant,
            kind=kind,
            target=data.get("target", ""),
            has_signing_secret=has_secret,
            signing_secret=data.get("signing_secret", ""),
        )
        return data


@admin.register(AlertChannel)
class AlertChannelAdmin(TenantScopedAdmin):
    """A channel's target is shown, searched and filtered on only for those who may edit the channel (owners and
    admins): a Slack webhook URL is a secret (CREDENTIAL_TARGET_KINDS); finance and viewer members see it masked."""

    form = AlertChannelForm
    list_display = ("name", "tenant", "kind", "target", "is_active", "created_at")
    list_filter = (("tenant", TenantListFilter), "kind", "is_active")
    list_select_related = ("tenant",)
    search_fields = ("name", "target")
    add_fields = ("tenant", "name", "kind", "target", "signing_secret", "is_active")
    fields = ("tenant", "name", "kind", "target", "signing_secret", "is_active", "created_at")
    readonly_fields = ("tenant", "kind", "created_at", "shown_target")

    def may_see_every_target(self, request) -> bool:
        """Whether the user may edit every channel the changelist may list: only then may it be searched or filtered
        by target, since which rows match a fragment would tell a secret one guess at a time."""
        access = request_access(request)
        return access.is_superuser or all(access.allows(self.edit_action, tenant_id) for tenant_id in access.roles)

    def get_list_display(self, request):
        if self.may_see_every_target(request):
            return self.list_display

        @admin.display(description="target")
        def target(channel: AlertChannel) -> str:
            return channel.target if self.allows(request, self.edit_action, channel) else target_masked(channel)

        return tuple(target if name == "target" else name for name in self.list_display)

    def get_search_fields(self, request):
        if self.may_see_every_target(request):
            return self.search_fields
        return tuple(name for name in self.search_fields if name != "target")

    def lookup_allowed(self, lookup, value, request):
        if lookup.split(LOOKUP_SEP, 1)[0] == "target" and not self.may_see_every_target(request):
            return False
        return super().lookup_allowed(lookup, value, request)

    def get_fields(self, request, obj=None):
        fields = super().get_fields(request, obj)
        if obj is None or self.allows(request, self.edit_action, obj):
            return fields
        return [("shown_target" if name == "target" else name) for name in fields]

    @admin.display(description="target")
    def shown_target(self, channel: AlertChannel) -> str:
        return target_masked(channel)

    def save_model(self, request, obj, form, change):
        self.ensure_tenant_editable(request, obj)
        secret = form.cleaned_data.get("signing_secret", "")
        if change:
            alert_channel_update(
                channel=obj,
                name=form.cleaned_data["name"],
                target=form.cleaned_data["target"],
                is_active=form.cleaned_data["is_active"],
                signing_secret=secret,
            )
        else:
            channel = alert_channel_create(
                tenant=form.cleaned_data["tenant"],
                name=form.cleaned_data["name"],
                kind=form.cleaned_data["kind"],
                target=form.cleaned_data["target"],
                signing_secret=secret,
                is_active=form.cleaned_data["is_active"],
            )
            adopt_saved_row(target=obj, source=channel)


class AlertDeliveryInline(TenantScopedInline, admin.TabularInline):
    model = AlertDelivery
    fields = ("channel", "status", "attempts", "last_error", "sent_at")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(BudgetAlert)
class BudgetAlertAdmin(ReadOnlyScopedAdmin):
    list_display = ("budget", "period_key", "threshold", "refused", "customer", "spent_usd", "limit_usd", "created_at")
    list_filter = ("threshold", "refused")
    list_select_related = ("budget__tenant", "budget__team", "budget__api_key")
    inlines = (AlertDeliveryInline,)


@admin.register(AlertDelivery)
class AlertDeliveryAdmin(ReadOnlyScopedAdmin):
    list_display = ("__str__", "status", "attempts", "last_error", "created_at", "sent_at")
    list_filter = ("status", "channel__kind")
    list_select_related = (
        "channel__tenant",
        "budget_alert__budget__tenant",
        "anomaly__tenant",
        "anomaly__team",
        "quality_alert__slo__tenant",
    )
    actions = ("retry_deliveries",)

    @admin.action(description="Retry the selected deliveries")
    def retry_deliveries(self, request, queryset):
        deliveries = list(queryset.select_related("channel"))
        if not all(self.allows(request, Action.EDIT, delivery) for delivery in deliveries):
            raise PermissionDenied
        alert_deliveries_send([delivery for delivery in deliveries if alert_delivery_reopen(delivery=delivery)])
        self.message_user(request, f"Queued {len(deliveries)} deliveries again.", messages.SUCCESS)


@admin.register(Anomaly)
class AnomalyAdmin(ReadOnlyScopedAdmin):
    list_display = (
        "__str__",
        "metric",
        "window",
        "direction",
        "observed",
        "baseline_median",
        "baseline_mad",
        "score",
        "detected_at",
    )
    list_filter = (("tenant", TenantListFilter), "metric", "window", "direction")
    list_select_related = ("tenant", "team")
    date_hierarchy = "detected_at"
    inlines = (AlertDeliveryInline,)


class RateLimitForm(forms.ModelForm):
    scope = forms.ChoiceField(
        choices=[("", "From the target (the team or API key)"), *RateLimitScope.choices],
        required=False,
        help_text="Each customer: every end customer of the tenant held to this limit on its own (leave team and key "
        "empty; name a customer to make this that customer's own limit).",
    )

    class Meta:
        model = RateLimit
        fields = (
            "tenant",
            "scope",
            "team",
            "api_key",
            "customer",
            "requests_per_minute",
            "tokens_per_minute",
            "is_active",
        )

    def clean(self):
        data = super().clean()
        tenant = data.get("tenant") or getattr(self.instance, "tenant", None)
        if tenant is not None and not self.errors:

            def value(name: str):
                """The form's value, or the row's where the change form shows the field read-only."""
                return data[name] if name in data else getattr(self.instance, name)

            rate_limit_validate(
                tenant=tenant,
                team=value("team"),
                api_key=value("api_key"),
                requests_per_minute=data.get("requests_per_minute"),
                tokens_per_minute=data.get("tokens_per_minute"),
                scope=value("scope"),
                customer=value("customer"),
            )
        return data


@admin.register(RateLimit)
class RateLimitAdmin(TenantScopedAdmin):
    form = RateLimitForm
    list_display = ("__str__", "tenant", "scope", "requests_per_minute", "tokens_per_minute", "is_active")
    list_filter = (("tenant", TenantListFilter), "scope", "is_active")
    list_select_related = ("tenant", "team", "api_key")
    search_fields = ("=customer",)
    add_fields = RateLimitForm.Meta.fields
    fields = RateLimitForm.Meta.fields
    readonly_fields = ("tenant", "scope", "team", "api_key", "customer")

    def create_with_service(self, request, form) -> RateLimit:
        return rate_limit_create(**self.added(form))
