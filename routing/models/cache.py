"""Cached answers: the durable tier of the response cache (Redis holds the hot copy).

An entry is found by its exact key, a keyed hash of the tenant, served model and canonical request; the request
itself is not kept. A `semantic` entry also carries the embedding of its normalised last user turn and that turn's
text, which the near-miss guard compares, so a paraphrase in the same context can find it. Its text is what
redaction leaves unchanged (a prompt with personal data or a secret is cached for exact repeats only), and it and
the answer are Fernet-encrypted (core/crypto.py): a database dump or backup holds no prompt or answer in clear.
"""

from django.db import models

from tenants.models import Tenant
from tenants.scoping import TenantScopedManager


class CacheEntryKind(models.TextChoices):
    EXACT = "exact", "Exact only"
    SEMANTIC = "semantic", "Exact and semantic"


class CacheEntry(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="cache_entries")
    served_model = models.CharField(max_length=128)
    key_hash = models.CharField(
        max_length=64, help_text="HMAC-SHA256 (server key) of the tenant, served model and canonical request."
    )
    kind = models.CharField(max_length=8, choices=CacheEntryKind.choices, default=CacheEntryKind.EXACT)
    answer_encrypted = models.TextField(
        help_text="The OpenAI chat.completion body (a streamed answer assembled), as JSON, encrypted."
    )
    embedding = models.BinaryField(null=True, blank=True, editable=False, help_text="float32 vector, semantic only.")
    prompt_encrypted = models.TextField(
        blank=True, help_text="The normalised last user turn, semantic only, encrypted; redaction finds nothing in it."
    )
    context_fingerprint = models.CharField(
        max_length=64,
        blank=True,
        help_text="HMAC-SHA256 (server key) of the system prompt, earlier turns and answer-changing options.",
    )
    rule_name = models.CharField(max_length=128, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)
    hit_count = models.PositiveIntegerField(default=0)
    last_hit_at = models.DateTimeField(null=True, blank=True)

    objects = TenantScopedManager()

    class Meta:
        verbose_name_plural = "cache entries"
        constraints = [
            models.UniqueConstraint(fields=["tenant", "served_model", "key_hash"], name="cache_entry_unique_key")
        ]
        indexes = [models.Index(fields=["tenant", "served_model", "kind"], name="cache_entry_semantic_scan")]

    def __str__(self):
        return f"{self.tenant_id}:{self.served_model}:{self.key_hash[:12]}"
