from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import OuterRef, Subquery
from django.utils import timezone

from routing.providers.kinds import CONNECTION_FIELDS, PROVIDER_KINDS, provider_kind
from tenants.models import Tenant
from tenants.scoping import TenantOwned, TenantScopedManager

PRICE_FIELD = {"max_digits": 12, "decimal_places": 6, "validators": [MinValueValidator(Decimal("0"))]}
# A price version's prices, in the order the admin and the import list them.
PRICE_FIELDS = (
    "input_price_per_million",
    "cached_input_price_per_million",
    "output_price_per_million",
    "cache_write_price_per_million",
)

ProviderKind = models.TextChoices(
    "ProviderKind", [(spec.value.upper(), (spec.value, spec.label)) for spec in PROVIDER_KINDS]
)


class ModelKind(models.TextChoices):
    """What a model answers: chat (/v1/chat/completions, /v1/responses) or embeddings (/v1/embeddings)."""

    CHAT = "chat", "Chat"
    EMBEDDING = "embedding", "Embedding"


class Provider(models.Model):
    """An upstream endpoint. The credential is stored encrypted, or read from a named environment variable.

    Which fields a provider needs, and what they hold, depends on its kind: routing.providers.kinds.
    """

    name = models.SlugField(max_length=64, unique=True)
    kind = models.CharField(max_length=16, choices=ProviderKind.choices, default=ProviderKind.OPENAI)
    base_url = models.URLField(
        max_length=500,
        blank=True,
        help_text="e.g. https://api.openai.com/v1 or https://api.anthropic.com/v1; for Bedrock blank means AWS's own.",
    )
    region = models.CharField(max_length=32, blank=True, help_text="AWS region, for Bedrock (e.g. us-east-1).")
    credential_encrypted = models.TextField(blank=True, editable=False)
    credential_env_var = models.CharField(
        max_length=128, blank=True, help_text="Name of an environment variable holding the credential."
    )
    timeout_seconds = models.DecimalField(max_digits=6, decimal_places=2, default=Decimal("60"))
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def clean(self):
        spec = provider_kind(self.kind)
        if spec is None:
            return  # the field's choices refuse it
        errors = {}
        for name in CONNECTION_FIELDS:
            # The credential is only ever stored encrypted.
            value = self.credential_encrypted if name == "credential" else getattr(self, name)
            if name in spec.required and not value:
                errors[name] = f"A provider of kind {spec.label} needs its {name.replace('_', ' ')}."
            elif value and not spec.reads(name):
                errors[name] = f"A provider of kind {spec.label} takes no {name.replace('_', ' ')}: leave it blank."
        if errors:
            raise ValidationError(errors)


class ModelQuerySet(models.QuerySet):
    def with_prices_in_force(self, at: datetime | None = None) -> "ModelQuerySet":
        """Each model with the fields of its price version in force at ``at`` (default now) as attributes, and the
        version's id as ``price_version_id``: None for a model whose first price is yet to take effect."""
        in_force = ModelPrice.objects.in_force(at).filter(model=OuterRef("pk"))
        return self.annotate(
            price_version_id=Subquery(in_force.values("pk")[:1]),
            price_effective_from=Subquery(in_force.values("effective_from")[:1]),
            **{name: Subquery(in_force.values(name)[:1]) for name in PRICE_FIELDS},
        )


class Model(models.Model):
    """A model in the catalog. Its prices (USD per million tokens) are versioned: ModelPrice."""

    name = models.CharField(max_length=128, unique=True, help_text="Public name clients send as `model`.")
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="models")
    upstream_name = models.CharField(max_length=128)
    kind = models.CharField(
        max_length=16,
        choices=ModelKind.choices,
        default=ModelKind.CHAT,
        help_text="Chat models answer chat completions and responses; embedding models answer /v1/embeddings and are "
        "priced by their input price alone.",
    )
    context_window = models.PositiveIntegerField(default=128_000)
    max_output_tokens = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="The most completion tokens one answer can have. Budgets reserve it for a request that sets no "
        "max_tokens; blank reserves LLMOPS_RESERVATION_MAX_TOKENS and sends that as max_tokens.",
    )
    supports_tools = models.BooleanField(default=True, help_text="Takes `tools` / function calling.")
    supports_images = models.BooleanField(default=True, help_text="Takes image content parts.")
    batch_price_multiplier = models.DecimalField(
        max_digits=4,
        decimal_places=3,
        default=Decimal("0.5"),
        validators=[MinValueValidator(Decimal("0"))],
        help_text="Share of the price charged for lines sent to the provider's batch endpoint (0.5 = half).",
    )
    flex_price_multiplier = models.DecimalField(
        max_digits=4,
        decimal_places=3,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal("0")), MaxValueValidator(Decimal("1"))],
        help_text="Share of the price charged for an answer the provider says it served at its flex tier "
        '(`service_tier: "flex"`; OpenAI charges its Batch API prices, 0.5). Blank: the model has no flex prices, '
        "and such an answer is charged the list price.",
    )
    is_active = models.BooleanField(
        default=True,
        help_text="Untick to retire the model. A model with prices is never deleted: its price versions are what the "
        "ledger's costs were charged at.",
    )
    prices_checked_at = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text="When the prices were last confirmed still right (the admin's confirm action, or an import of equal "
        "prices); the price age counts from this or from when the prices in force took effect, whichever is later.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ModelQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def price_in_force(self, at: datetime | None = None) -> "ModelPrice | None":
        return self.price_versions.in_force(at).first()

    def latest_price_version(self) -> "ModelPrice | None":
        """The version a new one follows: the one in force, or the last of those scheduled ahead of it."""
        return self.price_versions.order_by("-effective_from").first()


class ModelPriceQuerySet(models.QuerySet):
    def in_force(self, at: datetime | None = None) -> "ModelPriceQuerySet":
        """The versions that have taken effect by ``at`` (default now), latest first: the first of a model's is the
        one in force."""
        return self.filter(effective_from__lte=at or timezone.now()).order_by("-effective_from")


class ModelPrice(models.Model):
    """One version of a model's prices, in force from ``effective_from`` until the next version's.

    Versions are only ever added: a price change is a new version, so a ledger row priced at a version (its
    ``price_version``) always says which prices it was charged at.
    """

    # PROTECT: deleting a version would make Django and Postgres look for ledger rows priced at it, a scan of the whole
    # ledger (UsageRecord.price_version has no index); a model is retired with is_active instead.
    model = models.ForeignKey(Model, on_delete=models.PROTECT, related_name="price_versions")
    effective_from = models.DateTimeField()
    input_price_per_million = models.DecimalField(**PRICE_FIELD)
    cached_input_price_per_million = models.DecimalField(
        **PRICE_FIELD, help_text="Price of prompt tokens read from the provider's cache (cache reads)."
    )
    output_price_per_million = models.DecimalField(**PRICE_FIELD)
    cache_write_price_per_million = models.DecimalField(
        **PRICE_FIELD,
        null=True,
        blank=True,
        help_text="Price of prompt tokens written to the provider's prompt cache. Left blank, a Claude model's "
        "(Anthropic, Bedrock) is saved as 1.25x its input price, Anthropic's; other models' charge the input price. "
        "The gateway marks prompts for the provider's cache only on prices with this set and a cached-input price "
        "below the input price (an older version without them charges writes at the input price).",
    )
    source = models.CharField(max_length=200, help_text="Where the prices came from: the admin, a file imported, …")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ModelPriceQuerySet.as_manager()

    class Meta:
        ordering = ["model", "-effective_from"]
        constraints = [
            models.UniqueConstraint(fields=["model", "effective_from"], name="model_price_unique_effective_from")
        ]

    def __str__(self):
        return f"{self.model.name} from {self.effective_from:%Y-%m-%d %H:%M}"

    def prices(self) -> dict[str, Decimal | None]:
        return {name: getattr(self, name) for name in PRICE_FIELDS}


class TenantModelAccess(TenantOwned, models.Model):
    """Which models a tenant may call, and the one used when a request names none of them by alias."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="model_access")
    # A chat model: `default` names it in chat requests, and compression's summaries are asked of it.
    default_model = models.ForeignKey(
        Model,
        on_delete=models.PROTECT,
        related_name="+",
        null=True,
        blank=True,
        limit_choices_to={"kind": ModelKind.CHAT},
    )
    allowed_models = models.ManyToManyField(Model, related_name="allowed_for", blank=True)

    objects = TenantScopedManager()

    class Meta:
        verbose_name = "tenant model access"
        verbose_name_plural = "tenant model access"

    def __str__(self):
        return f"models for {self.tenant.slug}"
