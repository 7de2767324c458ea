"""Bearer-key authentication for the gateway, against an in-memory index of a tenant's keys.

The index is built from the database per tenant (``build_key_index``) and held by the caller's
configuration cache, so authenticating a request runs no query.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from django.utils import timezone
from rest_framework import authentication, exceptions

from tenants.keys import parse_key, secret_matches
from tenants.models import ApiKey


@dataclass(frozen=True, slots=True)
class KeyPrincipal:
    """Who is calling: the key, its team and its tenant. Stands in for request.user."""

    key_id: int
    key_prefix: str
    secret_hash: str
    tenant_id: int
    tenant_slug: str
    team_id: int
    team_slug: str
    expires_at: datetime | None
    revoked_at: datetime | None
    tenant_active: bool
    team_active: bool

    is_authenticated = True
    is_anonymous = False


def _principal(key: ApiKey) -> KeyPrincipal:
    return KeyPrincipal(
        key_id=key.pk,
        key_prefix=key.prefix,
        secret_hash=key.secret_hash,
        tenant_id=key.tenant_id,
        tenant_slug=key.tenant.slug,
        team_id=key.team_id,
        team_slug=key.team.slug,
        expires_at=key.expires_at,
        revoked_at=key.revoked_at,
        tenant_active=key.tenant.is_active,
        team_active=key.team.is_active,
    )


def build_key_index(*, tenant_id: int) -> dict[str, KeyPrincipal]:
    """The tenant's keys by prefix, revoked and expired ones included (they are refused with their reason)."""
    return {
        key.prefix: _principal(key) for key in ApiKey.objects.for_tenant(tenant_id).select_related("tenant", "team")
    }


def key_principal(*, tenant_id: int, key_id: int) -> KeyPrincipal | None:
    """One key as the database has it now, for work that runs long after its request was authenticated (a batch's
    lines): one query. None for a key that no longer exists."""
    key = ApiKey.objects.for_tenant(tenant_id).select_related("tenant", "team").filter(pk=key_id).first()
    return _principal(key) if key is not None else None


def key_refusal(principal: KeyPrincipal) -> str | None:
    """Why the key may not be used now (revoked, expired, or its team or tenant disabled), or None while it may."""
    if principal.revoked_at is not None:
        return f"The API key {principal.key_prefix}… has been revoked."
    if principal.expires_at is not None and principal.expires_at <= timezone.now():
        return f"The API key {principal.key_prefix}… expired at {principal.expires_at.isoformat()}."
    if not (principal.tenant_active and principal.team_active):
        return f"The API key {principal.key_prefix}… belongs to a disabled tenant or team."
    return None


def key_tenant_id(*, prefix: str) -> int | None:
    """Which tenant a key prefix belongs to, for a prefix the caller has not seen yet (a brand-new key)."""
    # Unscoped, reviewed: a key's prefix is how the gateway learns its tenant; the secret is then checked against
    # that tenant's keys only (build_key_index), and the answer is an id, never a row.
    return ApiKey.objects.unscoped().filter(prefix=prefix).values_list("tenant_id", flat=True).first()


def bearer_key(authorization: str) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header, or None."""
    scheme, _, raw_key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not raw_key.strip():
        return None
    return raw_key.strip()


def anthropic_key(meta: Mapping[str, str]) -> str | None:
    """The key of a request to the Anthropic-compatible API: ``x-api-key: <key>``, as Anthropic's API takes it, else
    ``Authorization: Bearer <key>``, which the current anthropic SDK sends for its ``api_key``."""
    return meta.get("HTTP_X_API_KEY", "").strip() or bearer_key(meta.get("HTTP_AUTHORIZATION", ""))


class InvalidApiKey(exceptions.AuthenticationFailed):
    default_code = "invalid_api_key"


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """Authenticates against the keys it is given: those of the tenant the caller's key prefix belongs to."""

    def __init__(self, keys: Mapping[str, KeyPrincipal]):
        self.keys = keys

    def authenticate(self, request):
        raw_key = bearer_key(request.META.get("HTTP_AUTHORIZATION", ""))
        if raw_key is None:
            raise exceptions.NotAuthenticated(
                "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'."
            )
        principal = self.principal_for(raw_key)
        return principal, principal

    def principal_for(self, raw_key: str) -> KeyPrincipal:
        parsed = parse_key(raw_key)
        principal = self.keys.get(parsed.prefix) if parsed else None
        if principal is None or not secret_matches(parsed.secret, principal.secret_hash):
            raise InvalidApiKey(f"Incorrect API key provided: {_masked(raw_key)}.")
        refusal = key_refusal(principal)
        if refusal is not None:
            raise InvalidApiKey(refusal)
        return principal

    def authenticate_header(self, request):
        return 'Bearer realm="llmops"'


class AnthropicKeyAuthentication(ApiKeyAuthentication):
    """The same keys, taken as Anthropic's API takes them (``anthropic_key``)."""

    def authenticate(self, request):
        raw_key = anthropic_key(request.META)
        if raw_key is None:
            raise exceptions.NotAuthenticated(
                "You didn't provide an API key. Send it as 'x-api-key: YOUR_KEY' or 'Authorization: Bearer YOUR_KEY'."
            )
        principal = self.principal_for(raw_key)
        return principal, principal


def _masked(raw_key: str) -> str:
    return f"{raw_key[:10]}…{raw_key[-4:]}" if len(raw_key) > 16 else "***"
