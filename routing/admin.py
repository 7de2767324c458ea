"""Admin for the platform's model catalog (superusers change it) and each tenant's model access (scoped)."""

import json
from datetime import timedelta

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.admin.widgets import AdminSplitDateTime
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models
from django.db.models.constants import LOOKUP_SEP
from django.db.models.functions import Coalesce, Greatest
from django.http import Http404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from core.outbound import outbound_url_errors
from core.redaction import redact, redact_value
from routing.cache.sealed import open_answer, open_prompt
from routing.cache.store import CachePurgeIncomplete, cache_entries_delete, cache_entries_purge
from routing.models import (
    PRICE_FIELDS,
    CacheEntry,
    Model,
    Provider,
    RoutingAlias,
    RoutingPolicy,
    RoutingPolicyAudit,
    RoutingPolicyVersion,
    RoutingRule,
    TenantModelAccess,
)
from routing.policy.simulation import routing_simulation
from routing.prices import (
    model_price_set,
    model_prices_confirm,
    price_age_days,
    price_changes,
    price_conflict_errors,
    price_is_stale,
    price_version_errors,
)
from routing.providers.kinds import CONNECTION_FIELDS, PROVIDER_KINDS
from routing.services import (
    model_create,
    provider_create,
    provider_credential_set,
    routing_policy_create,
    routing_policy_ensure_default,
    routing_policy_publish,
    routing_policy_rollback,
    tenant_model_access_set,
)
from tenants.admin import (
    ReadOnlyScopedAdmin,
    ServiceCreateAdmin,
    TenantListFilter,
    TenantScopedAdmin,
    TenantScopedInline,
    adopt_saved_row,
    request_access,
)
from tenants.models import Tenant
from tenants.permissions import Action

PRICE_FORM_FIELD = {"max_digits": 12, "decimal_places": 6, "min_value": 0}


class SuperuserOnlyAdmin(ServiceCreateAdmin):
    """The catalog belongs to the platform, not to a tenant: only superusers see or change it."""

    def has_module_permission(self, request):
        return request.user.is_superuser

    def has_view_permission(self, request, obj=None):
        return request.user.is_superuser

    def has_add_permission(self, request):
        return request.user.is_superuser

    def has_change_permission(self, request, obj=None):
        return request.user.is_superuser

    def has_delete_permission(self, request, obj=None):
        return request.user.is_superuser


def _connection_help(field: str) -> str:
    """What a connection field holds for each kind of provider that reads it (routing.providers.kinds)."""
    parts = [
        f"{spec.label}: {'required' if field in spec.required else 'optional'}, {spec.notes[field]}"
        for spec in PROVIDER_KINDS
        if spec.reads(field) and field in spec.notes
    ]
    return ". ".join(parts) + "." if parts else ""


class ProviderForm(forms.ModelForm):
    credential = forms.CharField(required=False, widget=forms.PasswordInput(render_value=False))
    write_only = "Write-only: stored encrypted and never shown. Leave blank to keep the stored credential."

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The kinds' notes replace the model's generic help; the credential's says what becomes of it too.
        for name in CONNECTION_FIELDS:
            if name in self.fields and (kinds_help := _connection_help(name)):
                self.fields[name].help_text = f"{kinds_help} {self.write_only}" if name == "credential" else kinds_help

    def clean_base_url(self):
        base_url = self.cleaned_data["base_url"]
        if base_url and (errors := outbound_url_errors(base_url)):
            raise ValidationError(errors)
        return base_url


@admin.register(Provider)
class ProviderAdmin(SuperuserOnlyAdmin):
    form = ProviderForm
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    list_display = ("name", "kind", "base_url", "credential_env_var", "credential_stored", "is_active")
    list_filter = ("kind", "is_active")
    search_fields = ("name", "base_url")
    # The connection fields are every field any kind reads, so each kind can be added here.
    add_fields = ("name", "kind", *CONNECTION_FIELDS, "timeout_seconds")
    readonly_fields = ("credential_stored", "created_at")

    @admin.display(boolean=True, description="credential stored")
    def credential_stored(self, provider: Provider) -> bool:
        return bool(provider.credential_encrypted)

    def get_fieldsets(self, request, obj=None):
        fields = self.get_fields(request, obj)
        connection = tuple(name for name in CONNECTION_FIELDS if name in fields)
        needs = format_html_join(
            "", "<li>{}: {}</li>", ((spec.label, ", ".join(spec.required)) for spec in PROVIDER_KINDS)
        )
        return (
            (None, {"fields": [name for name in fields if name not in connection]}),
            ("Connection", {"fields": connection, "description": format_html("Each kind needs:<ul>{}</ul>", needs)}),
        )

    def create_with_service(self, request, form) -> Provider:
        return provider_create(**self.added(form))

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if change and form.cleaned_data["credential"]:
            provider_credential_set(provider=obj, credential=form.cleaned_data["credential"])


PRICE_LABELS = {
    "input_price_per_million": "input price",
    "cached_input_price_per_million": "cached input price",
    "output_price_per_million": "output price",
    "cache_write_price_per_million": "cache write price",
}
LIST_PRICE_FIELDS = PRICE_FIELDS[:3]


class PriceSaveRefused(Exception):
    """The price service refused a save the form had accepted; CatalogModelAdmin shows why on the form."""

    def __init__(self, error: ValidationError):
        super().__init__(error)
        self.error = error


class CatalogModelForm(forms.ModelForm):
    """The model's fields, and its prices: a change of price is saved as a new version (routing.prices)."""

    input_price_per_million = forms.DecimalField(**PRICE_FORM_FIELD)
    cached_input_price_per_million = forms.DecimalField(
        **PRICE_FORM_FIELD, help_text="Prompt tokens read from the provider's cache (cache reads)."
    )
    output_price_per_million = forms.DecimalField(**PRICE_FORM_FIELD)
    cache_write_price_per_million = forms.DecimalField(
        **PRICE_FORM_FIELD,
        required=False,
        help_text="Prompt tokens written to the provider's prompt cache. Left blank, a Claude model's (Anthropic, "
        "Bedrock) is saved as 1.25x its input price, Anthropic's; other models' charge the input price. The gateway "
        "marks prompts for the provider's cache (a rule's provider_cache auto) only on prices with this set and a "
        "cached-input price below the input price.",
    )
    price_effective_from = forms.SplitDateTimeField(
        required=False,
        widget=AdminSplitDateTime,
        label="prices take effect",
        help_text="When changed prices take effect; blank: the moment they are saved. A change is a new version, "
        "after every version the model has (scheduled ones included): requests before it keep the prices they were "
        "charged at.",
    )
    # The version the price fields were loaded from: a save from a page opened before someone else's change of price
    # would send their old prices back and undo it.
    based_on_version = forms.IntegerField(required=False, widget=forms.HiddenInput)
    # What the price service refused on a first attempt to save (CatalogModelAdmin.changeform_view), shown as errors.
    save_refused: ValidationError | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The latest version, scheduled or in force: the one a change follows, so a save keeps what it schedules.
        latest = self.instance.latest_price_version() if self.instance.pk else None
        for name in PRICE_FIELDS:
            if name in self.fields and latest is not None:
                self.fields[name].initial = getattr(latest, name)
        if "based_on_version" in self.fields and latest is not None:
            self.fields["based_on_version"].initial = latest.pk

    def clean_price_effective_from(self):
        effective_from = self.cleaned_data["price_effective_from"]
        if effective_from is not None and effective_from < timezone.now():
            raise ValidationError("Prices take effect now or later: the past keeps the prices it was charged at.")
        return effective_from

    def clean(self):
        cleaned_data = super().clean()
        if self.save_refused is not None:
            self.add_error(None, ValidationError(self.save_refused.messages))
            return cleaned_data
        changes_price = (
            self.instance.pk
            and "price_effective_from" in self.fields
            and price_changes(model=self.instance, name=self.instance.name, prices=self.prices())
        )
        if changes_price:
            for error in price_conflict_errors(model=self.instance, based_on=cleaned_data.get("based_on_version")):
                self.add_error(None, error)
            effective_from = cleaned_data.get("price_effective_from")
            for error in price_version_errors(model=self.instance, effective_from=effective_from):
                self.add_error("price_effective_from", error)
        return cleaned_data

    def prices(self) -> dict:
        return {name: self.cleaned_data[name] for name in PRICE_FIELDS if name in self.cleaned_data}


def _price_column(name: str):
    @admin.display(description=PRICE_LABELS[name], ordering=name)
    def column(self, model: Model):
        return getattr(model, name)

    return column


@admin.register(Model)
class CatalogModelAdmin(SuperuserOnlyAdmin):
    form = CatalogModelForm
    list_display = (
        "name",
        "kind",
        "provider",
        "upstream_name",
        *LIST_PRICE_FIELDS,
        "price_age",
        "context_window",
        "is_active",
    )
    list_select_related = ("provider",)
    list_filter = ("kind", "provider", "is_active")
    search_fields = ("name",)
    add_fields = ("name", "kind", "provider", "upstream_name", "context_window", "max_output_tokens", *PRICE_FIELDS)
    fieldsets = (
        (None, {"fields": ("name", "kind", "provider", "upstream_name", "context_window", "max_output_tokens")}),
        (
            None,
            {
                "fields": (
                    "supports_tools",
                    "supports_images",
                    "batch_price_multiplier",
                    "flex_price_multiplier",
                    "is_active",
                    "created_at",
                )
            },
        ),
        (
            "Prices (USD per million tokens)",
            {"fields": (*PRICE_FIELDS, "price_effective_from", "based_on_version", "price_age")},
        ),
        ("Price history", {"fields": ("price_history",)}),
    )
    # A model's name and kind are chosen when it is added: published policies, a rule's fallbacks, budgets and the
    # ledger name the model, by its name, as what it answers; a rename would leave them naming a model that is gone.
    readonly_fields = ("name", "kind", "created_at", "price_age", "price_history")
    # Members compare names and prices; which provider serves a model stays with the platform.
    member_fields = (
        "name",
        "kind",
        *LIST_PRICE_FIELDS,
        "price_age",
        "context_window",
        "max_output_tokens",
        "is_active",
    )
    member_fieldsets = (
        (None, {"fields": member_fields}),
        ("Price history", {"fields": ("price_history",)}),
    )
    # Columns members are not shown; "provider" covers provider_id and lookups through the provider too.
    platform_lookups = ("provider", "upstream_name")

    input_price_per_million = _price_column("input_price_per_million")
    cached_input_price_per_million = _price_column("cached_input_price_per_million")
    output_price_per_million = _price_column("output_price_per_million")

    actions = ("prices_confirm",)

    def get_queryset(self, request):
        # What the price age counts from, to sort by it: the later of taking effect and the last confirmation.
        return (
            super()
            .get_queryset(request)
            .with_prices_in_force()
            .annotate(
                prices_current_since=Greatest(
                    "price_effective_from", Coalesce("prices_checked_at", "price_effective_from")
                )
            )
        )

    def has_module_permission(self, request):
        return request_access(request).allows_somewhere(Action.VIEW)

    def has_view_permission(self, request, obj=None):
        return self.has_module_permission(request)

    def has_delete_permission(self, request, obj=None):
        """Never: every model has prices, and its price versions stay (ModelPrice.model); untick is_active instead."""
        return False

    def get_fieldsets(self, request, obj=None):
        if obj is None:
            return ((None, {"fields": self.add_fields}),)
        if request.user.is_superuser:
            return self.fieldsets
        return self.member_fieldsets

    def get_list_display(self, request):
        if request.user.is_superuser:
            return super().get_list_display(request)
        return self.member_fields

    def get_list_filter(self, request):
        if request.user.is_superuser:
            return super().get_list_filter(request)
        return ("kind", "is_active")

    def lookup_allowed(self, lookup, value, request):
        # Filtering on what members are not shown would tell it one guess at a time.
        if not request.user.is_superuser and lookup.split(LOOKUP_SEP, 1)[0].startswith(self.platform_lookups):
            return False
        return super().lookup_allowed(lookup, value, request)

    def history_view(self, request, object_id, extra_context=None):
        # Django's change log names the platform staff who changed the model.
        if not request.user.is_superuser:
            raise PermissionDenied
        return super().history_view(request, object_id, extra_context)

    @admin.action(
        description="Confirm the selected models' prices are still right (resets their age)", permissions=["change"]
    )
    def prices_confirm(self, request, queryset):
        for model in queryset:
            model_prices_confirm(model=model)
        self.message_user(request, f"Prices confirmed for {', '.join(model.name for model in queryset)}.")

    @admin.display(description="price age", ordering="-prices_current_since")
    def price_age(self, model: Model):
        days = price_age_days(getattr(model, "price_effective_from", None), checked_at=model.prices_checked_at)
        if days is None:
            return "no price in force"
        if price_is_stale(days):
            return format_html(
                '<span class="price-stale" title="Older than LLMOPS_PRICE_MAX_AGE_DAYS ({}): check it">⚠ {} days'
                "</span>",
                settings.LLMOPS_PRICE_MAX_AGE_DAYS,
                days,
            )
        return f"{days} days"

    def get_object(self, request, object_id, from_field=None):
        model = super().get_object(request, object_id, from_field)
        if model is not None:
            # Who saved a version is platform staff: tenant members see "platform", never a username.
            model.price_authors_shown = request.user.is_superuser
        return model

    @staticmethod
    def _price_author(model: Model, version) -> str:
        if version.created_by is None:
            return ""
        return version.created_by.get_username() if getattr(model, "price_authors_shown", False) else "platform"

    @admin.display(description="versions, latest first")
    def price_history(self, model: Model):
        now = timezone.now()
        in_force = model.price_in_force(now)
        rows = [
            (
                version.effective_from.isoformat(timespec="seconds"),
                "upcoming" if version.effective_from > now else "in force" if version == in_force else "past",
                *(getattr(version, name) if getattr(version, name) is not None else "—" for name in PRICE_FIELDS),
                version.source,
                self._price_author(model, version),
            )
            for version in model.price_versions.select_related("created_by")
        ]
        header = format_html_join(
            "", "<th>{}</th>", ((title,) for title in ("from", "", *PRICE_LABELS.values(), "source", "by"))
        )
        body = format_html_join("", "<tr>" + "<td>{}</td>" * 8 + "</tr>", rows)
        return format_html('<table class="price-history"><tr>{}</tr>{}</table>', header, body)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        if request.method == "GET":
            model = self.get_object(request, unquote(object_id))
            latest = model.latest_price_version() if model is not None else None
            if latest is not None and latest.effective_from > timezone.now() and request.user.is_superuser:
                messages.warning(
                    request,
                    f"{model.name} has prices scheduled to take effect at "
                    f"{latest.effective_from.isoformat(timespec='seconds')} (from {latest.source}): the price fields "
                    "show them, and a change of price must take effect after that.",
                )
            days = (
                price_age_days(getattr(model, "price_effective_from", None), checked_at=model.prices_checked_at)
                if model is not None
                else None
            )
            if price_is_stale(days):
                messages.warning(
                    request,
                    f"{model.name}'s prices took effect or were last confirmed {days} days ago, more than "
                    f"LLMOPS_PRICE_MAX_AGE_DAYS ({settings.LLMOPS_PRICE_MAX_AGE_DAYS}): check them against the "
                    "provider's price list, then save the prices that are now true (a new version), import them "
                    "(manage.py prices_import), or, when they are still right, confirm them (the model list's action "
                    '"Confirm the selected models\' prices are still right").',
                )
        return super().change_view(request, object_id, form_url, extra_context)

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except PriceSaveRefused as refused:
            # The first attempt's transaction is rolled back (the model's other fields too); the second shows the
            # form as posted, with the refusal as its errors, and saves nothing.
            request.price_save_refused = refused.error
            return super().changeform_view(request, object_id, form_url, extra_context)

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change, **kwargs)
        # get_form builds a new class per call, so this holds for this request only.
        form.save_refused = getattr(request, "price_save_refused", None)
        return form

    def create_with_service(self, request, form) -> Model:
        return model_create(**self.added(form), actor=request.user, price_source="admin")

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if not change:
            return
        try:
            version = model_price_set(
                model=obj,
                prices=form.prices(),
                effective_from=form.cleaned_data.get("price_effective_from"),
                source="admin",
                actor=request.user,
                expected_latest=form.cleaned_data.get("based_on_version"),
            )
        except ValidationError as error:
            # Prices changed by someone else between the form's checks and this save: a form error, not a 500.
            raise PriceSaveRefused(error) from error
        if version is not None:
            messages.info(
                request,
                f"New prices for {obj.name} take effect at {version.effective_from.isoformat(timespec='seconds')}; "
                "requests before keep the prices they were charged at.",
            )


class TenantModelAccessForm(forms.ModelForm):
    def clean(self):
        cleaned_data = super().clean()
        default_model = cleaned_data.get("default_model")
        allowed_models = cleaned_data.get("allowed_models")
        # tenant_model_access_set enforces this too; checking here turns it into a form error instead of a 500.
        if default_model is not None and allowed_models is not None and default_model not in allowed_models:
            self.add_error(
                "default_model", f"The default model {default_model.name} must be one of the allowed models."
            )
        return cleaned_data


@admin.register(TenantModelAccess)
class TenantModelAccessAdmin(TenantScopedAdmin):
    form = TenantModelAccessForm
    list_display = ("tenant", "default_model")
    list_select_related = ("tenant", "default_model")
    filter_horizontal = ("allowed_models",)
    fields = ("tenant", "default_model", "allowed_models")
    readonly_fields = ("tenant",)

    def save_model(self, request, obj, form, change):
        self.ensure_tenant_editable(request, obj)
        # The service stores the default and the allowed list together, on change as on add.
        access = tenant_model_access_set(
            tenant=obj.tenant,
            allowed_models=list(form.cleaned_data["allowed_models"]),
            default_model=form.cleaned_data["default_model"],
        )
        adopt_saved_row(target=obj, source=access)
        # A tenant's first models come with the default routing policy live, as the template promises.
        if routing_policy_ensure_default(tenant=obj.tenant, actor=request.user):
            messages.info(request, f"The default routing policy is now live for {obj.tenant.slug}.")

    def save_related(self, request, form, formsets, change):
        # allowed_models is already saved by the service; only inline formsets are left.
        for formset in formsets:
            self.save_formset(request, form, formset, change)


class PolicyDraftInline(TenantScopedInline):
    """Draft rows follow their policy's tenant: its editors change them, its members see them."""

    extra = 0

    @staticmethod
    def _can_edit(request, policy) -> bool:
        return policy is not None and request_access(request).allows(Action.EDIT, policy.tenant_id)

    def has_view_permission(self, request, obj=None):
        return obj is None or request_access(request).allows(Action.VIEW, obj.tenant_id)

    def has_add_permission(self, request, obj=None):
        return self._can_edit(request, obj)

    def has_change_permission(self, request, obj=None):
        return self._can_edit(request, obj)

    def has_delete_permission(self, request, obj=None):
        return self.has_change_permission(request, obj)


class RoutingAliasInline(PolicyDraftInline, admin.TabularInline):
    model = RoutingAlias
    fields = ("name", "small_model", "large_model")


class RoutingRuleInline(PolicyDraftInline, admin.StackedInline):
    model = RoutingRule
    fieldsets = (
        (None, {"fields": (("priority", "name"),)}),
        (
            "Match (empty fields match anything)",
            {
                "fields": (
                    ("requested_models", "task_types", "user_tiers", "team_slugs"),
                    ("prompt_tokens_min", "prompt_tokens_max", "has_tools", "has_images"),
                    ("keywords", "message_regex"),
                )
            },
        ),
        (
            "Outcome",
            {
                "fields": (
                    ("target_model", "fallback_models"),
                    ("prompt_token_cap", "over_cap_action"),
                    ("max_tokens_cap", "default_max_tokens"),
                    ("cache_ttl_seconds", "cache_nondeterministic", "semantic_cache"),
                    ("provider_cache",),
                )
            },
        ),
    )


@admin.register(RoutingPolicy)
class RoutingPolicyAdmin(TenantScopedAdmin):
    list_display = ("tenant", "live_version", "auto_threshold", "injection_guard_action", "updated_at")
    list_select_related = ("tenant", "live_version__tenant")
    add_fields = ("tenant", "auto_threshold", "injection_guard_action")
    fields = (
        "tenant",
        "live_version",
        "auto_threshold",
        "injection_guard_action",
        "updated_at",
        "test_console",
        "what_if",
    )
    readonly_fields = ("tenant", "live_version", "updated_at", "test_console", "what_if")
    inlines = (RoutingAliasInline, RoutingRuleInline)
    actions = ("publish_drafts",)

    def get_inline_instances(self, request, obj=None):
        return super().get_inline_instances(request, obj) if obj is not None else []

    def create_with_service(self, request, form) -> RoutingPolicy:
        return routing_policy_create(**self.added(form))

    def get_deleted_objects(self, objs, request):
        deleted, model_count, perms_needed, protected = super().get_deleted_objects(objs, request)
        # Its versions and audit log are the policy's history: nobody deletes them on their own (their admins are
        # read-only), and they go with the policy when whoever may delete it does.
        history = {RoutingPolicyVersion._meta.verbose_name, RoutingPolicyAudit._meta.verbose_name}
        return deleted, model_count, perms_needed - history, protected

    @admin.display(description="test console")
    def test_console(self, policy: RoutingPolicy) -> str:
        url = reverse("admin:routing_routingpolicy_console", args=[policy.pk])
        return format_html('<a href="{}">Try a request under the draft and the live version</a>', url)

    @admin.display(description="what if?")
    def what_if(self, policy: RoutingPolicy) -> str:
        # The page is billing's (it reads the ledger), named by its URL: routing imports nothing of billing.
        url = reverse("admin:billing_policy_whatif", args=[policy.pk])
        return format_html(
            '<a class="button" href="{}">What if?</a> The draft replayed over the last 7 or 30 days of requests, '
            "priced under it and under the live version, before you publish it",
            url,
        )

    @admin.action(description="Publish the draft of the selected policies", permissions=["change"])
    def publish_drafts(self, request, queryset):
        policies = list(queryset)
        if not all(self.has_change_permission(request, policy) for policy in policies):
            raise PermissionDenied
        for policy in policies:
            try:
                version = routing_policy_publish(policy=policy, actor=request.user)
            except ValidationError as error:
                self.message_user(
                    request, f"{policy.tenant.slug}: not published — {'; '.join(error.messages)}", messages.ERROR
                )
                continue
            self.log_change(request, policy, f"Published version {version.number}.")
            self.message_user(request, f"{policy.tenant.slug}: version {version.number} is live.", messages.SUCCESS)

    def get_urls(self):
        console = path(
            "<int:policy_id>/console/",
            self.admin_site.admin_view(self.console_view),
            name="routing_routingpolicy_console",
        )
        return [console, *super().get_urls()]

    def console_view(self, request, policy_id: int):
        policy = self.get_queryset(request).select_related("tenant", "live_version").filter(pk=policy_id).first()
        if policy is None or not self.allows(request, Action.EDIT, policy):
            raise Http404("no routing policy")
        form = RoutingConsoleForm(request.POST or None)
        result = None
        if request.method == "POST" and form.is_valid():
            result = routing_simulation(
                policy=policy,
                body=form.cleaned_data["request_json"],
                headers=form.cleaned_data["headers_json"],
                team_slug=form.cleaned_data["team"],
            )
        context = {
            **self.admin_site.each_context(request),
            "title": f"Routing test console — {policy.tenant.slug}",
            "opts": self.model._meta,
            "original": policy,
            "form": form,
            "result": result,
            "result_json": json.dumps(result, indent=2) if result else "",
        }
        return TemplateResponse(request, "admin/routing/routingpolicy/console.html", context)


class RoutingConsoleForm(forms.Form):
    request_json = forms.JSONField(
        label="Request",
        widget=forms.Textarea(attrs={"rows": 14, "cols": 100}),
        help_text='An OpenAI chat request, e.g. {"model": "auto", "messages": [{"role": "user", "content": "Hi"}]}',
    )
    headers_json = forms.JSONField(
        label="Headers", required=False, widget=forms.Textarea(attrs={"rows": 3, "cols": 100}), initial=dict
    )
    team = forms.SlugField(required=False)

    def clean_request_json(self):
        body = self.cleaned_data["request_json"]
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise ValidationError("The request must be a JSON object with a `model`.")
        messages_ = body.get("messages")
        if not isinstance(messages_, list) or not messages_ or not all(isinstance(m, dict) for m in messages_):
            raise ValidationError("The request needs `messages`, a non-empty list of message objects.")
        return body

    def clean_headers_json(self):
        headers = self.cleaned_data["headers_json"] or {}
        if not isinstance(headers, dict):
            raise ValidationError('Headers must be a JSON object, e.g. {"x-llmops-user-tier": "enterprise"}.')
        return {str(name): str(value) for name, value in headers.items()}


@admin.register(RoutingPolicyVersion)
class RoutingPolicyVersionAdmin(ReadOnlyScopedAdmin):
    list_display = ("__str__", "tenant", "number", "is_live", "published_by", "published_at")
    list_filter = (("tenant", TenantListFilter),)
    list_select_related = ("tenant", "published_by", "policy")
    fields = ("tenant", "number", "is_live", "published_by", "published_at", "document")
    readonly_fields = fields
    actions = ("rollback_to_version",)

    @admin.display(boolean=True, description="live")
    def is_live(self, version: RoutingPolicyVersion) -> bool:
        return version.policy.live_version_id == version.pk

    @admin.action(description="Roll back to the selected version (publishes it again)")
    def rollback_to_version(self, request, queryset):
        versions = list(queryset.select_related("policy__tenant"))
        if len(versions) != 1:
            self.message_user(request, "Select exactly one version to roll back to.", messages.ERROR)
            return
        version = versions[0]
        if not self.allows(request, Action.EDIT, version):
            raise PermissionDenied
        try:
            new_version = routing_policy_rollback(policy=version.policy, version=version, actor=request.user)
        except ValidationError as error:
            self.message_user(request, f"Not rolled back — {'; '.join(error.messages)}", messages.ERROR)
            return
        self.message_user(
            request, f"Version {version.number} is live again as version {new_version.number}.", messages.SUCCESS
        )


@admin.register(RoutingPolicyAudit)
class RoutingPolicyAuditAdmin(ReadOnlyScopedAdmin):
    list_display = ("created_at", "tenant", "action", "version", "previous_version", "actor", "note")
    list_filter = (("tenant", TenantListFilter), "action")
    list_select_related = ("tenant", "version__tenant", "previous_version__tenant", "actor")
    fields = ("tenant", "action", "actor", "note", "created_at", "previous_version", "version", "diff")
    readonly_fields = fields


@admin.register(CacheEntry)
class CacheEntryAdmin(TenantScopedAdmin):
    """Cached answers per tenant: read-only rows, hit counts, and purges that also clear Redis and the index.

    Answers (and the text of semantic entries) are what the tenant's users asked and were told: only the tenant's
    owners and admins see them, redacted; its finance and viewer members do not see this page at all.
    """

    view_action = Action.VIEW_ANSWERS

    list_display = ("__str__", "tenant", "served_model", "kind", "rule_name", "hit_count", "last_hit_at", "expires_at")
    list_filter = (("tenant", TenantListFilter), "served_model", "kind", "rule_name")
    list_select_related = ("tenant",)
    fields = (
        "tenant",
        "served_model",
        "kind",
        "rule_name",
        "key_hash",
        "context_fingerprint",
        "prompt",
        "answer",
        "hit_count",
        "last_hit_at",
        "created_at",
        "expires_at",
    )
    readonly_fields = fields
    actions = ("purge_selected", "purge_tenant", "purge_model", "purge_rule", "purge_older_than_a_week")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="Prompt (redacted)")
    def prompt(self, entry: CacheEntry) -> str:
        if not entry.prompt_encrypted:
            return "— not kept: an exact-only entry is found by its key alone"
        prompt = open_prompt(entry.prompt_encrypted)
        # Redacted again on display: a rule added since the entry was stored applies to it too.
        return "— cannot be decrypted with the configured keys" if prompt is None else redact(prompt)

    @admin.display(description="Answer (redacted)")
    def answer(self, entry: CacheEntry) -> str:
        answer = open_answer(entry.answer_encrypted)
        if answer is None:
            return "— cannot be decrypted with the configured keys"
        return format_html("<pre>{}</pre>", json.dumps(redact_value(answer), indent=2, ensure_ascii=False))

    def _purge_each(self, request, queryset, scope) -> None:
        """Purge the scope of every selected entry, per tenant the user may edit; Redis and the index follow."""
        deleted = 0
        for key in {(entry.tenant_id, tuple(sorted(scope(entry).items()))) for entry in queryset}:
            tenant_id, options = key
            if not request_access(request).allows(Action.EDIT, tenant_id):
                raise PermissionDenied
            try:
                deleted += cache_entries_purge(tenant=Tenant.objects.for_tenant(tenant_id).get(), **dict(options))
            except CachePurgeIncomplete as incomplete:
                deleted += incomplete.deleted
                self.message_user(request, str(incomplete), messages.ERROR)
        self.message_user(request, f"Purged {deleted} cache entries.", messages.SUCCESS)

    @admin.action(description="Purge the selected entries")
    def purge_selected(self, request, queryset):
        for entry in queryset:
            if not self.allows(request, Action.EDIT, entry):
                raise PermissionDenied
        try:
            deleted = cache_entries_delete(entries=queryset)
        except CachePurgeIncomplete as incomplete:
            deleted = incomplete.deleted
            self.message_user(request, str(incomplete), messages.ERROR)
        self.message_user(request, f"Purged {deleted} cache entries.", messages.SUCCESS)

    @admin.action(description="Purge all entries of the selected entries' tenants")
    def purge_tenant(self, request, queryset):
        self._purge_each(request, queryset, lambda entry: {})

    @admin.action(description="Purge all entries of the selected entries' tenant and model")
    def purge_model(self, request, queryset):
        self._purge_each(request, queryset, lambda entry: {"model": entry.served_model})

    @admin.action(description="Purge all entries of the selected entries' tenant and rule")
    def purge_rule(self, request, queryset):
        self._purge_each(request, queryset, lambda entry: {"rule": entry.rule_name})

    @admin.action(description="Purge the selected entries' tenants' entries older than a week")
    def purge_older_than_a_week(self, request, queryset):
        self._purge_each(request, queryset, lambda entry: {"older_than": timedelta(days=7)})
