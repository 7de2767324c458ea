"""Admin for quality SLOs (changed through billing.quality.services), their alerts and the shadow evaluations, all
scoped per tenant: a member sees the tenant's rows, owners and admins change its SLOs."""

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db.models.constants import LOOKUP_SEP
from django.utils import timezone

from billing.budgets.admin import AlertDeliveryInline
from billing.models import QualityAlert, QualitySlo, ShadowEvaluation
from billing.quality.services import (
    SLO_FIELDS,
    live_rule_names,
    quality_slo_create,
    quality_slo_update,
    quality_slo_validate,
    slo_agreement,
)
from tenants.admin import ReadOnlyScopedAdmin, TenantListFilter, TenantScopedAdmin, request_access
from tenants.permissions import Action

REASON_FIELD = "reason"


class QualitySloForm(forms.ModelForm):
    class Meta:
        model = QualitySlo
        fields = ("tenant", *SLO_FIELDS)
        help_texts = {
            "min_agreement": "Between 0 and 1: breached when the lower bound of the agreement's 95% interval over the "
            "window falls below it.",
            "min_samples": "No verdict on fewer evaluations than this in the window.",
            "action": "What happens, besides the alert to the tenant's active channels, when the SLO is breached: each "
            "action fits one lever (routing: the rule's requests to the alias's large model; semantic cache: exact "
            "hits only; compression: refuse over the cap). Published as a new routing policy version.",
        }

    def clean(self):
        data = super().clean()
        tenant = data.get("tenant") or getattr(self.instance, "tenant", None)
        if tenant is not None and not self.errors:
            rule = data.get("rule", "")
            quality_slo_validate(
                tenant=tenant,
                lever=data.get("lever"),
                rule=rule,
                action=data.get("action"),
                min_agreement=data.get("min_agreement"),
                # The stored rule, until the form is saved: an edit keeping it may switch off an SLO whose rule is gone.
                check_rule=self.instance.pk is None or rule != self.instance.rule,
            )
            # On the change page the tenant is read-only, so the form's own check leaves out the one SLO per tenant,
            # lever and rule.
            others = QualitySlo.objects.for_tenant(tenant).exclude(pk=self.instance.pk)
            if others.filter(lever=data.get("lever"), rule=rule).exists():
                raise ValidationError("A quality SLO for this lever and rule already exists for this tenant.")
        return data


@admin.register(QualitySlo)
class QualitySloAdmin(TenantScopedAdmin):
    form = QualitySloForm
    list_display = (
        "__str__",
        "tenant",
        "lever",
        "rule",
        "min_agreement",
        "min_samples",
        "window_days",
        "action",
        "is_active",
        "now",
        "breached_at",
    )
    list_filter = (("tenant", TenantListFilter), "lever", "action", "is_active")
    list_select_related = ("tenant",)
    add_fields = QualitySloForm.Meta.fields
    fields = (*QualitySloForm.Meta.fields, "now", "live_rules", "breached_at", "created_at")
    readonly_fields = ("tenant", "now", "live_rules", "breached_at", "created_at")

    @admin.display(description="agreement now")
    def now(self, slo: QualitySlo) -> str:
        """Over the window up to now, as the next check will count it."""
        if slo.pk is None:
            return "–"
        return slo_agreement(slo=slo, now=timezone.now()).describe()

    @admin.display(description="rules of the live policy")
    def live_rules(self, slo: QualitySlo) -> str:
        return ", ".join(live_rule_names(tenant=slo.tenant)) or "– (no live routing policy)"

    def create_with_service(self, request, form) -> QualitySlo:
        return quality_slo_create(**self.added(form))

    def save_model(self, request, obj, form, change):
        if not change:
            super().save_model(request, obj, form, change)
            return
        self.ensure_tenant_editable(request, obj)
        quality_slo_update(slo=obj, **{name: form.cleaned_data[name] for name in SLO_FIELDS})


@admin.register(QualityAlert)
class QualityAlertAdmin(ReadOnlyScopedAdmin):
    list_display = (
        "created_at",
        "slo",
        "samples",
        "agreement",
        "lower_bound",
        "upper_bound",
        "action_taken",
        "action_detail",
    )
    list_filter = ("action_taken", "slo__lever")
    list_select_related = ("slo__tenant",)
    date_hierarchy = "created_at"
    inlines = (AlertDeliveryInline,)


@admin.register(ShadowEvaluation)
class ShadowEvaluationAdmin(ReadOnlyScopedAdmin):
    """Each sampled request's answer judged against its reference's. The judge's reason may quote the answers: only
    the tenant's owners and admins, who may read its cached answers, see it."""

    list_display = (
        "created_at",
        "tenant",
        "request_id",
        "lever",
        "rule",
        "served_model",
        "reference_model",
        "task_type",
        "method",
        "agrees",
        "verdict",
        "similarity",
        "cost_usd",
    )
    list_filter = (("tenant", TenantListFilter), "lever", "agrees", "method", "served_model")
    list_select_related = ("tenant",)
    # Not the reason: a search answers for every row listed, those of tenants where the user may not read it too.
    search_fields = ("request_id", "rule")
    date_hierarchy = "created_at"
    # The ledger's evaluations grow with traffic; skip the second, unfiltered count on every page.
    show_full_result_count = False
    fields = (
        "tenant",
        "request_id",
        "created_at",
        "lever",
        "rule",
        "served_model",
        "reference_model",
        "task_type",
        "method",
        "agrees",
        "verdict",
        "similarity",
        "reason",
        "cost_usd",
    )
    readonly_fields = fields

    def may_read_reasons(self, request) -> bool:
        """Whether every row the changelist may list is one whose reason the user may read: only then may the list be
        filtered by reason, since which rows match a fragment would tell the reason one guess at a time."""
        access = request_access(request)
        return access.is_superuser or all(access.allows(Action.VIEW_ANSWERS, tenant_id) for tenant_id in access.roles)

    def lookup_allowed(self, lookup, value, request):
        # `reason` and its sealed column `reason_encrypted`, whose ciphertext's length follows the reason's.
        if lookup.split(LOOKUP_SEP, 1)[0].startswith(REASON_FIELD) and not self.may_read_reasons(request):
            return False
        return super().lookup_allowed(lookup, value, request)

    def get_fields(self, request, obj=None):
        fields = super().get_fields(request, obj)
        if obj is not None and request_access(request).allows(Action.VIEW_ANSWERS, obj.tenant_id):
            return fields
        return [name for name in fields if name != "reason"]
