"""A tenant's routing policy: an editable draft (settings, aliases, rules) and the immutable versions published from it.

The request path never reads the draft: it reads the live version's JSON document, compiled into the snapshot.
"""

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator
from django.db import models

from routing.models.catalog import Model
from routing.providers import prompt_cache
from tenants.models import Tenant
from tenants.scoping import TenantOwned, TenantScopedManager

LIST_HELP = "Comma-separated; empty matches anything."


class InjectionGuardAction(models.TextChoices):
    NONE = "none", "Off"
    FLAG = "flag", "Flag in the ledger"
    BLOCK = "block", "Block with 400"


class OverCapAction(models.TextChoices):
    REJECT = "reject", "Reject with token_cap_exceeded"
    COMPRESS = "compress", "Compress the conversation"


class ProviderCache(models.TextChoices):
    AUTO = prompt_cache.AUTO, "Checkpoints on the stable prefix (Claude on Anthropic and Bedrock)"
    OFF = prompt_cache.OFF, "No checkpoints added"


class RoutingPolicy(TenantOwned, models.Model):
    """The draft of a tenant's policy, and which published version is live."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="routing_policy")
    auto_threshold = models.PositiveSmallIntegerField(
        default=50,
        validators=[MaxValueValidator(100)],
        help_text="Difficulty score (0-100) from which an alias routes to its large model. Lower sends more to large.",
    )
    injection_guard_action = models.CharField(
        max_length=8, choices=InjectionGuardAction.choices, default=InjectionGuardAction.FLAG
    )
    # Deleting the policy (or its tenant) deletes its versions, the live one too: nothing is left live to protect.
    live_version = models.OneToOneField(
        "RoutingPolicyVersion", on_delete=models.SET_NULL, related_name="+", null=True, blank=True, editable=False
    )
    updated_at = models.DateTimeField(auto_now=True)

    objects = TenantScopedManager()

    class Meta:
        verbose_name_plural = "routing policies"

    def __str__(self):
        return f"routing policy of {self.tenant.slug}"

    def save(self, *args, **kwargs):
        # Only publish and rollback move live_version (they name it in update_fields): a stale form must not undo one.
        if not self._state.adding and kwargs.get("update_fields") is None:
            kwargs["update_fields"] = [
                field.name
                for field in self._meta.concrete_fields
                if not field.primary_key and field.name != "live_version"
            ]
        super().save(*args, **kwargs)


class RoutingAlias(TenantOwned, models.Model):
    """A model name clients may send (`auto`, `fast`, ...) that the policy turns into its small or large model."""

    policy = models.ForeignKey(RoutingPolicy, on_delete=models.CASCADE, related_name="aliases")
    name = models.SlugField(max_length=64)
    small_model = models.ForeignKey(Model, on_delete=models.PROTECT, related_name="+")
    large_model = models.ForeignKey(Model, on_delete=models.PROTECT, related_name="+")

    objects = TenantScopedManager(tenant_path="policy__tenant")

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "routing aliases"
        constraints = [models.UniqueConstraint(fields=["policy", "name"], name="routing_alias_unique_per_policy")]

    def __str__(self):
        return self.name


class RoutingRule(TenantOwned, models.Model):
    """A draft rule. The lowest priority number that matches decides; empty match fields match anything."""

    policy = models.ForeignKey(RoutingPolicy, on_delete=models.CASCADE, related_name="rules")
    priority = models.PositiveIntegerField()
    name = models.SlugField(max_length=64)
    requested_models = models.CharField(max_length=500, blank=True, help_text=f"Models or aliases. {LIST_HELP}")
    task_types = models.CharField(max_length=500, blank=True, help_text=LIST_HELP)
    user_tiers = models.CharField(max_length=500, blank=True, help_text=LIST_HELP)
    team_slugs = models.CharField(max_length=500, blank=True, help_text=LIST_HELP)
    prompt_tokens_min = models.PositiveIntegerField(null=True, blank=True, help_text="Inclusive.")
    prompt_tokens_max = models.PositiveIntegerField(null=True, blank=True, help_text="Inclusive.")
    has_tools = models.BooleanField(null=True, blank=True)
    has_images = models.BooleanField(null=True, blank=True)
    keywords = models.CharField(
        max_length=1000, blank=True, help_text=f"Any of these in the last user message (case-insensitive). {LIST_HELP}"
    )
    message_regex = models.CharField(max_length=1000, blank=True, help_text="Searched in the last user message.")
    target_model = models.ForeignKey(
        Model,
        on_delete=models.PROTECT,
        related_name="+",
        null=True,
        blank=True,
        help_text="Empty keeps the requested model; for an alias the difficulty score picks.",
    )
    fallback_models = models.CharField(max_length=500, blank=True, help_text="Ordered, comma-separated model names.")
    prompt_token_cap = models.PositiveIntegerField(null=True, blank=True)
    over_cap_action = models.CharField(max_length=8, choices=OverCapAction.choices, default=OverCapAction.REJECT)
    max_tokens_cap = models.PositiveIntegerField(null=True, blank=True)
    default_max_tokens = models.PositiveIntegerField(null=True, blank=True)
    cache_ttl_seconds = models.PositiveIntegerField(null=True, blank=True)
    cache_nondeterministic = models.BooleanField(
        default=False, help_text="Cache answers even when the request is not deterministic (temperature > 0)."
    )
    # db_default: a process still on the code from before this column inserts rules without it (docs/runbook.md).
    semantic_cache = models.BooleanField(
        default=True,
        db_default=True,
        help_text="Answer from a semantically similar cached request too (with a cache TTL and an embedder); off: "
        "exact hits only. A quality SLO's automatic action turns it off when semantic hits disagree with fresh "
        "answers.",
    )
    # db_default: a process still on the code from before this column inserts rules without it (docs/runbook.md).
    provider_cache = models.CharField(
        max_length=4,
        choices=ProviderCache.choices,
        default=ProviderCache.OFF,
        db_default=ProviderCache.OFF,
        help_text="The provider's prompt cache: auto marks the system prompt, tools and earlier turns for it when they "
        "are long enough to be cached, on a Claude model whose cache-write and cache-read prices are set; a client's "
        "own cache_control is always kept. The provider's cache is shared by every tenant using the same provider "
        "credential: another tenant sending the same prefix sees it read from the cache (cached_tokens), and so "
        "learns it was sent. Turn it on for rules whose prompts are not secret, or whose provider credential is the "
        "tenant's own.",
    )

    objects = TenantScopedManager(tenant_path="policy__tenant")

    class Meta:
        ordering = ["priority", "name"]

    def __str__(self):
        return f"{self.priority}: {self.name}"


class RoutingPolicyVersion(models.Model):
    """A published policy: the whole of it as one JSON document, never changed once written."""

    policy = models.ForeignKey(RoutingPolicy, on_delete=models.CASCADE, related_name="versions")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="routing_policy_versions")
    number = models.PositiveIntegerField()
    document = models.JSONField()
    published_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    published_at = models.DateTimeField(auto_now_add=True)

    objects = TenantScopedManager()

    class Meta:
        ordering = ["tenant__slug", "-number"]
        constraints = [models.UniqueConstraint(fields=["policy", "number"], name="routing_version_number_unique")]

    def __str__(self):
        return f"{self.tenant.slug} v{self.number}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise ValidationError("a published routing policy version cannot be changed; publish a new one")
        super().save(*args, **kwargs)


class RoutingPolicyAuditAction(models.TextChoices):
    PUBLISH = "publish", "Publish"
    ROLLBACK = "rollback", "Rollback"


class RoutingPolicyAudit(models.Model):
    """Who made which version live, when, and what changed against the version live before."""

    policy = models.ForeignKey(RoutingPolicy, on_delete=models.CASCADE, related_name="audits")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    action = models.CharField(max_length=8, choices=RoutingPolicyAuditAction.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    previous_version = models.ForeignKey(
        RoutingPolicyVersion, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    version = models.ForeignKey(RoutingPolicyVersion, on_delete=models.CASCADE, related_name="audits")
    diff = models.JSONField(default=dict)
    note = models.CharField(
        max_length=300,
        blank=True,
        default="",
        db_default="",
        help_text="Why the system published it, when no user did (a quality SLO's automatic action).",
    )

    objects = TenantScopedManager()

    class Meta:
        ordering = ["-created_at", "-pk"]
        verbose_name = "routing policy audit entry"
        verbose_name_plural = "routing policy audit log"

    def __str__(self):
        return f"{self.action} {self.version} by {self.actor or 'system'}"
