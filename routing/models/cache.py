"""Cached answers: the durable tier of the response cache (Redis holds the hot copy).

An entry is found by its exact key, a keyed hash of the tenant, served model and canonical request; the request
itself is not kept. A `semantic` entry also carries the embedding of its normalised last user turn and that turn's
text, which the near-miss guard compares, so a paraphrase in the same context can find it. Its text is what
redaction leaves unchanged (a prompt with personal data or a secret is cached for exact repeats only), and it and
the answer are Fernet-encrypted (core/crypto.py): a database dump or backup holds no prompt or answer in clear.

On PostgreSQL the embedding is a pgvector `vector` that the semantic lookup searches in the database
(routing/cache/index.py); elsewhere (the embedded demo's SQLite) it is float32 bytes that each process loads into its
own index.
"""

import numpy as np
from django.db import models
from pgvector.django import VectorField

from tenants.models import Tenant
from tenants.scoping import TenantScopedManager


class CacheEntryKind(models.TextChoices):
    EXACT = "exact", "Exact only"
    SEMANTIC = "semantic", "Exact and semantic"


class EmbeddingField(VectorField):
    """A `vector` of any dimension on PostgreSQL (pgvector), float32 bytes in a BLOB elsewhere; a numpy array in
    Python either way. The column has no fixed dimension, so another embedder's vectors fit too: the HNSW indexes
    are per dimension (routing migration 0010)."""

    def db_type(self, connection):
        return super().db_type(connection) if connection.vendor == "postgresql" else "blob"

    def from_db_value(self, value, expression, connection):
        if value is None:
            return None
        if connection.vendor == "postgresql":
            return np.array(super().from_db_value(value, expression, connection), dtype=np.float32)
        return np.frombuffer(bytes(value), dtype=np.float32)

    def get_db_prep_value(self, value, connection, prepared=False):
        if value is None or connection.vendor == "postgresql":
            return super().get_db_prep_value(value, connection, prepared)
        return np.asarray(value, dtype=np.float32).tobytes()


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
    embedding = EmbeddingField(null=True, blank=True, editable=False, help_text="Unit-length vector, semantic only.")
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
        indexes = [
            # A tenant's semantic entries of one model and context: what a lookup filters on. Where they are few,
            # the planner reads them here and sorts them exactly instead of walking the HNSW graph.
            models.Index(
                fields=["tenant", "served_model", "context_fingerprint"],
                condition=models.Q(kind=CacheEntryKind.SEMANTIC),
                name="cache_entry_semantic_context",
            )
        ]

    def __str__(self):
        return f"{self.tenant_id}:{self.served_model}:{self.key_hash[:12]}"
