"""Admin for a tenant's shadow-evaluation settings, scoped per tenant like its payload-log settings."""

from django import forms
from django.contrib import admin

from billing.evaluation.services import JUDGE_MODEL_REFUSED, evaluation_settings_set, judge_model_usable
from billing.models import EvaluationSettings
from routing.models import Model, ModelKind
from tenants.admin import TenantScopedAdmin
from tenants.models import Tenant

EDITABLE_FIELDS = (
    "enabled",
    "monthly_budget_usd",
    "routing_sample_rate",
    "semantic_cache_sample_rate",
    "compression_sample_rate",
    "budget_downgrade_sample_rate",
    "judge_model",
    "exact_task_types",
    "similarity_threshold",
)


class EvaluationSettingsForm(forms.ModelForm):
    class Meta:
        model = EvaluationSettings
        fields = ("tenant", *EDITABLE_FIELDS)

    def clean(self):
        cleaned = super().clean()
        # The tenant is read-only once the settings exist.
        tenant_id = self.instance.tenant_id or getattr(cleaned.get("tenant"), "pk", None)
        judge = cleaned.get("judge_model")
        if tenant_id is not None and judge is not None and not judge_model_usable(tenant_id=tenant_id, model=judge):
            self.add_error("judge_model", JUDGE_MODEL_REFUSED)
        return cleaned

    def save(self, commit=True):
        # As evaluation_settings_set: saving lets sampling paused for a spent month start again.
        self.instance.exhausted_until = None
        return super().save(commit)


@admin.register(EvaluationSettings)
class EvaluationSettingsAdmin(TenantScopedAdmin):
    form = EvaluationSettingsForm
    list_display = ("tenant", "enabled", "monthly_budget_usd", "judge_model", "updated_at")
    list_filter = ("enabled",)
    list_select_related = ("tenant", "judge_model")
    add_fields = ("tenant", *EDITABLE_FIELDS)
    fields = ("tenant", *EDITABLE_FIELDS, "exhausted_until", "updated_at")
    readonly_fields = ("tenant", "exhausted_until", "updated_at")

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "judge_model":
            # The chat models of the tenants the user may edit; the form checks the one picked is the tenant's.
            tenants = Tenant.objects.restrict(request.user, self.edit_action)
            kwargs["queryset"] = (
                Model.objects.filter(allowed_for__tenant__in=tenants, is_active=True, kind=ModelKind.CHAT)
                .distinct()
                .order_by("name")
            )
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def create_with_service(self, request, form) -> EvaluationSettings:
        return evaluation_settings_set(**self.added(form))
