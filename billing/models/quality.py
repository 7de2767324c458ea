"""Shadow evaluation of the cost levers and the quality SLOs that guard them.

A sampled request that a lever made cheaper is replayed off the hot path against its reference (the alias's large
model, a fresh call, the uncompressed prompt, the route before the budget downgrade) and the two answers are judged;
each judgement is a ShadowEvaluation row. A QualitySlo watches the agreement of one lever (optionally one rule) and
raises a QualityAlert once per breach.
"""

from decimal import Decimal

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from billing.models.ledger import COST_FIELD, ROUTING_HINT_MAX_LENGTH
from core.crypto import CredentialDecryptionError, decrypt_secret, encrypt_secret
from routing.models import Model
from tenants.models import Tenant
from tenants.scoping import TenantOwned, TenantScopedManager

RATE_FIELD = {
    "max_digits": 5,
    "decimal_places": 4,
    "validators": [MinValueValidator(Decimal(0)), MaxValueValidator(Decimal(1))],
}
DEFAULT_SAMPLE_RATE = Decimal("0.02")
DEFAULT_EXACT_TASK_TYPES = "classification,extraction"
UNREADABLE_REASON = "(encrypted with a key no longer configured)"


class Lever(models.TextChoices):
    ROUTING = "routing", "Routing to a cheaper model"
    SEMANTIC_CACHE = "semantic_cache", "Semantic cache hit"
    COMPRESSION = "compression", "Context compression"
    BUDGET_DOWNGRADE = "budget_downgrade", "Budget downgrade"


class JudgeMethod(models.TextChoices):
    EXACT = "exact", "Exact equality"
    JSON = "json", "JSON-structural equality"
    EMBEDDING = "embedding", "Embedding similarity"
    LLM = "llm", "LLM judge"


class JudgeVerdict(models.TextChoices):
    EQUIVALENT = "equivalent", "Equivalent"
    WORSE = "worse", "Worse"
    BETTER = "better", "Better"


class QualityAction(models.TextChoices):
    NONE = "none", "Alert only"
    ROUTE_TO_LARGE = "route_to_large", "Send the rule's requests to the alias's large model"
    DISABLE_SEMANTIC_CACHE = "disable_semantic_cache", "Stop serving semantic cache hits for the rule"
    STOP_COMPRESSING = "stop_compressing", "Stop compressing for the rule (over the cap is refused)"


class EvaluationSettings(TenantOwned, models.Model):
    """Whether a tenant's cheaper answers are shadow-evaluated, how often per lever, and what it may spend on it."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="evaluation_settings")
    enabled = models.BooleanField(default=False)
    routing_sample_rate = models.DecimalField(**RATE_FIELD, default=DEFAULT_SAMPLE_RATE)
    semantic_cache_sample_rate = models.DecimalField(**RATE_FIELD, default=DEFAULT_SAMPLE_RATE)
    compression_sample_rate = models.DecimalField(**RATE_FIELD, default=DEFAULT_SAMPLE_RATE)
    budget_downgrade_sample_rate = models.DecimalField(**RATE_FIELD, default=DEFAULT_SAMPLE_RATE)
    monthly_budget_usd = models.DecimalField(
        **COST_FIELD,
        default=Decimal(0),
        validators=[MinValueValidator(Decimal(0))],
        help_text="What evaluation calls may cost per calendar month (UTC); at 0 nothing is evaluated.",
    )
    judge_model = models.ForeignKey(
        Model,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="An LLM judge for free-text answers; empty: embedding similarity decides.",
    )
    exact_task_types = models.CharField(
        max_length=500,
        default=DEFAULT_EXACT_TASK_TYPES,
        blank=True,
        help_text="Task types (comma-separated) whose answers must be equal (exactly, or as JSON) to agree.",
    )
    similarity_threshold = models.DecimalField(
        **RATE_FIELD,
        default=Decimal("0.85"),
        help_text="Embedding similarity at or above which two free-text answers agree.",
    )
    exhausted_until = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text="Nothing is sampled until then (the next month's start, UTC): the month's evaluation budget cannot "
        "cover another evaluation. Set by the evaluation worker; saving the settings clears it.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    objects = TenantScopedManager()

    class Meta:
        verbose_name = "evaluation settings"
        verbose_name_plural = "evaluation settings"

    def __str__(self):
        return f"shadow evaluation of {self.tenant.slug} ({'on' if self.enabled else 'off'})"


class EvaluationSpend(models.Model):
    """A tenant's evaluation spend in one month: reserved before an evaluation call, settled after it."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    month = models.DateField(help_text="The first day of the month (UTC).")
    reserved_usd = models.DecimalField(**COST_FIELD, default=Decimal(0))
    spent_usd = models.DecimalField(**COST_FIELD, default=Decimal(0))
    refused = models.PositiveIntegerField(
        default=0, help_text="Evaluations skipped because the month's evaluation budget could not cover their calls."
    )
    unjudged = models.PositiveIntegerField(
        default=0,
        help_text="Evaluations that ended without a verdict: the reference or judge may no longer be used, the "
        "reference call failed, the LLM judge's answer was unreadable, the embedder could not load, or the "
        "evaluation ran past its hold's bound.",
    )
    released = models.PositiveIntegerField(
        default=0,
        help_text="Holds given back past their bound, unsettled: the worker evaluating them died.",
    )
    smallest_reserved_usd = models.DecimalField(
        **COST_FIELD,
        null=True,
        blank=True,
        help_text="The smallest worst case an evaluation reserved this month: once what is left of the budget after "
        "what is spent is less, the month is exhausted and sampling stops until the next one.",
    )

    objects = TenantScopedManager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "month"], name="evaluation_spend_once_per_month")]

    def __str__(self):
        return f"{self.tenant_id} {self.month:%Y-%m}: {self.spent_usd}"


class EvaluationHold(models.Model):
    """What one evaluation (a sampled request's lever) holds of its month's evaluation budget while its calls run: the
    worst cases of the reference's and the judge's calls, reserved together before the first one, each replaced by
    what its call cost once made. The row is also the evaluation's claim: another run of the same sample finds it
    (or the ShadowEvaluation recorded before it ends) and pays for nothing. It ends with its evaluation; one still
    here past ``expires_at`` was left by a worker that died, and a beat task gives its amount back."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    request_id = models.CharField(max_length=64, help_text="The sampled request.")
    lever = models.CharField(max_length=32, choices=Lever.choices)
    month = models.DateField(help_text="The month (its first day, UTC) whose EvaluationSpend holds the amount.")
    amount_usd = models.DecimalField(**COST_FIELD, help_text="What it still reserves.")
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(
        db_index=True, help_text="When its evaluation is over at the latest: its calls' timeouts, and a margin."
    )

    objects = TenantScopedManager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["request_id", "lever"], name="evaluation_hold_once_per_lever")]

    def __str__(self):
        return f"{self.request_id} {self.lever}: {self.amount_usd}"


class ShadowEvaluation(models.Model):
    """One sampled request's answer judged against its reference's, for one lever."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="shadow_evaluations")
    request_id = models.CharField(max_length=64, help_text="The sampled request.")
    lever = models.CharField(max_length=32, choices=Lever.choices)
    rule = models.CharField(max_length=128, blank=True, help_text="The routing rule that decided the request.")
    served_model = models.CharField(max_length=128)
    reference_model = models.CharField(max_length=128)
    task_type = models.CharField(max_length=ROUTING_HINT_MAX_LENGTH, blank=True)
    method = models.CharField(max_length=16, choices=JudgeMethod.choices)
    agrees = models.BooleanField()
    verdict = models.CharField(max_length=16, choices=JudgeVerdict.choices, blank=True)
    similarity = models.FloatField(null=True, blank=True)
    reason_encrypted = models.TextField(
        blank=True,
        editable=False,
        help_text="The LLM judge's reason, encrypted (it often quotes the prompt or the answer): read it with "
        "reason_text(), only where the tenant's own admins see the row.",
    )
    cost_usd = models.DecimalField(**COST_FIELD, default=Decimal(0), help_text="What the evaluation calls cost.")
    created_at = models.DateTimeField(db_index=True)

    objects = TenantScopedManager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["tenant", "lever", "created_at"], name="shadow_tenant_lever_created")]
        constraints = [models.UniqueConstraint(fields=["request_id", "lever"], name="shadow_evaluation_once_per_lever")]

    def __str__(self):
        return f"{self.request_id} {self.lever}: {'agrees' if self.agrees else 'differs'}"

    @staticmethod
    def seal_reason(reason: str) -> str:
        """The reason as ``reason_encrypted`` keeps it: encrypted at rest (core.crypto), as prompts and answers are."""
        return encrypt_secret(reason) if reason else ""

    def reason_text(self) -> str:
        """The LLM judge's reason in clear ("" for other judges), for the tenant's own admins only: it may quote the
        tenant's prompts and answers. UNREADABLE_REASON when the key it was encrypted with is no longer configured."""
        if not self.reason_encrypted:
            return ""
        try:
            return decrypt_secret(self.reason_encrypted)
        except CredentialDecryptionError:
            return UNREADABLE_REASON

    def _reason_set(self, reason: str) -> None:
        self.reason_encrypted = self.seal_reason(reason)

    # The name the column had when it was kept in clear, so code written for it (an admin's fields, factories) reads
    # and writes through the encryption.
    reason = property(reason_text, _reason_set)


class QualitySlo(TenantOwned, models.Model):
    """Agreement a lever (or one rule's use of it) must keep: breached when the lower bound of the agreement's 95%
    interval over the window falls below ``min_agreement``, with at least ``min_samples`` evaluations."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="quality_slos")
    lever = models.CharField(max_length=32, choices=Lever.choices)
    rule = models.CharField(max_length=128, blank=True, help_text="One routing rule; empty: every rule.")
    min_agreement = models.DecimalField(**RATE_FIELD, default=Decimal("0.95"))
    min_samples = models.PositiveIntegerField(default=30, validators=[MinValueValidator(1)])
    window_days = models.PositiveSmallIntegerField(default=7, validators=[MinValueValidator(1)])
    action = models.CharField(max_length=32, choices=QualityAction.choices, default=QualityAction.NONE)
    is_active = models.BooleanField(default=True)
    breached_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="Since when the SLO is breached; empty while it holds."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantScopedManager()

    class Meta:
        verbose_name = "quality SLO"
        constraints = [models.UniqueConstraint(fields=["tenant", "lever", "rule"], name="quality_slo_unique")]

    def __str__(self):
        return f"{self.tenant.slug} {self.lever}{f' ({self.rule})' if self.rule else ''} ≥ {self.min_agreement}"


class QualityAlert(models.Model):
    """One breach of a quality SLO: raised once, when the SLO goes from holding to breached."""

    slo = models.ForeignKey(QualitySlo, on_delete=models.CASCADE, related_name="alerts")
    samples = models.PositiveIntegerField()
    agreement = models.DecimalField(max_digits=5, decimal_places=4)
    lower_bound = models.DecimalField(max_digits=5, decimal_places=4)
    upper_bound = models.DecimalField(max_digits=5, decimal_places=4)
    action_taken = models.CharField(max_length=32, choices=QualityAction.choices, default=QualityAction.NONE)
    action_detail = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantScopedManager(tenant_path="slo__tenant")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.slo} breached at {self.agreement}"
