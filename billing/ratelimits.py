"""Requests and tokens per minute, per key, per team and per end customer, in fixed one-minute windows.

A customer-scope limit is one row per tenant holding each of its customers to the limit on its own counters (keyed
by the limit and a digest of the customer, expiring after two windows like every counter), so any number of
customers leaves no state behind; a row naming a customer is that customer's own limit instead. A request without a
customer is held to no customer limit.

With Redis one Lua script checks every applicable limit and counts the request only if all pass,
so replicas share the limits. Without Redis, or while it is unreachable, each process counts on
its own (a limit then holds per process). A refused request is not counted.
"""

import logging
import math
import threading
from dataclasses import dataclass, field
from datetime import datetime

from django.core.exceptions import ValidationError
from redis.exceptions import RedisError

from billing.budgets.index import RateLimitEntry, RateLimitIndex
from billing.models import CUSTOMER_MAX_LENGTH, RateLimit, RateLimitScope
from core.redis import RedisScript, async_redis
from tenants.models import ApiKey, Team, Tenant

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60
COUNTER_TTL_SECONDS = 2 * WINDOW_SECONDS

# KEYS: request and token counters of each limit, in pairs. ARGV[1]: tokens; ARGV[2]: ttl; ARGV[3]: requests (1, or
# 0 for tokens only); then per limit: requests per minute and tokens per minute, 0 for none.
# Returns {allowed 1/0, then per limit the request and token counts after (or as they stand, when refused)}.
RATE_LIMIT_SCRIPT = RedisScript("""
local tokens = tonumber(ARGV[1])
local new_requests = tonumber(ARGV[3])
local counts = {}
local allowed = 1
for i = 1, #KEYS / 2 do
  local requests = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0')
  local used_tokens = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
  local rpm, tpm = tonumber(ARGV[2 * i + 2]), tonumber(ARGV[2 * i + 3])
  if (rpm > 0 and new_requests > 0 and requests + new_requests > rpm) or (tpm > 0 and used_tokens + tokens > tpm) then
    allowed = 0
  end
  counts[2 * i - 1], counts[2 * i] = requests, used_tokens
end
if allowed == 1 then
  for i = 1, #KEYS / 2 do
    counts[2 * i - 1] = redis.call('INCRBY', KEYS[2 * i - 1], new_requests)
    redis.call('EXPIRE', KEYS[2 * i - 1], ARGV[2])
    counts[2 * i] = redis.call('INCRBY', KEYS[2 * i], tokens)
    redis.call('EXPIRE', KEYS[2 * i], ARGV[2])
  end
end
local result = {allowed}
for i = 1, #counts do result[i + 1] = counts[i] end
return result
""")


@dataclass(frozen=True, slots=True)
class RateLimitResult:
    allowed: bool
    retry_after_seconds: int | None  # when refused: until the window resets
    headers: dict[str, str] = field(default_factory=dict)  # OpenAI's x-ratelimit-* headers, for every answer
    refused_by: str = ""  # when refused: whose limit, as the 429's message names it
    # When refused because the request alone counts more tokens than that limit allows a minute (no window could
    # ever admit it, so retrying is no use): the tokens it counts and the limit.
    too_large: tuple[int, int] | None = None


ALLOWED_UNLIMITED = RateLimitResult(allowed=True, retry_after_seconds=None)


class _LocalCounters:
    """The in-process fallback: request and token counts per limit in the current window."""

    def __init__(self):
        self._window = -1
        self._counts: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def check(
        self, limits: list[RateLimitEntry], window: int, tokens: int, requests: int
    ) -> tuple[bool, list[tuple[int, int]]]:
        with self._lock:
            if window != self._window:
                self._window, self._counts = window, {}
            current = [self._counts.get(limit.subject, (0, 0)) for limit in limits]
            allowed = all(
                _fits(limit, counted, used, tokens, requests)
                for limit, (counted, used) in zip(limits, current, strict=True)
            )
            if allowed:
                current = [(counted + requests, used + tokens) for counted, used in current]
                self._counts.update((limit.subject, counts) for limit, counts in zip(limits, current, strict=True))
            return allowed, current


_local_counters = _LocalCounters()


def _fits(limit: RateLimitEntry, counted: int, used_tokens: int, tokens: int, requests: int) -> bool:
    requests_fit = limit.requests_per_minute is None or not requests or counted + requests <= limit.requests_per_minute
    tokens_fit = limit.tokens_per_minute is None or used_tokens + tokens <= limit.tokens_per_minute
    return requests_fit and tokens_fit


async def rate_limit_check(
    *,
    limits: RateLimitIndex,
    key_id: int,
    team_id: int,
    tokens: int,
    now: datetime,
    customer: str = "",
    requests: int = 1,
) -> RateLimitResult:
    """Count the request (prompt tokens + max_tokens) against the key's, the team's and the customer's limits if all
    allow it. ``requests=0`` counts ``tokens`` only, for a request counted already (before its compression summary),
    and no requests-per-minute limit refuses it."""
    applicable = limits.applicable(key_id=key_id, team_id=team_id, customer=customer)
    if not applicable:
        return ALLOWED_UNLIMITED
    epoch = now.timestamp()
    window = int(epoch // WINDOW_SECONDS)
    reset_seconds = (window + 1) * WINDOW_SECONDS - epoch
    client = async_redis()
    counts = None
    if client is not None:
        try:
            allowed, counts = await _redis_check(client, applicable, window, tokens, requests)
        except RedisError as exc:
            logger.warning("rate limits in Redis unreachable (%s); counting in this process", exc)
    if counts is None:
        allowed, counts = _local_counters.check(applicable, window, tokens, requests)
    headers = _headers(applicable, counts, reset_seconds)
    for limit in applicable:
        if limit.tokens_per_minute is not None and tokens > limit.tokens_per_minute:
            # Counted nowhere (no window could hold it), but told where the limits stand, as every answer is.
            return RateLimitResult(
                allowed=False,
                retry_after_seconds=None,
                headers=headers,
                refused_by=_subject(limit, customer),
                too_large=(tokens, limit.tokens_per_minute),
            )
    return RateLimitResult(
        allowed=allowed,
        retry_after_seconds=None if allowed else max(math.ceil(reset_seconds), 1),
        headers=headers,
        refused_by="" if allowed else _refused_by(applicable, counts, tokens, requests, customer),
    )


def _subject(limit: RateLimitEntry, customer: str) -> str:
    kind = limit.subject.split(":", 1)[0]
    return f"customer {customer!r}" if kind == "customer" else f"your {kind}"


def _refused_by(
    limits: list[RateLimitEntry], counts: list[tuple[int, int]], tokens: int, requests: int, customer: str
) -> str:
    for limit, (counted, used) in zip(limits, counts, strict=True):
        if not _fits(limit, counted, used, tokens, requests):
            return _subject(limit, customer)
    return ""


async def _redis_check(client, limits: list[RateLimitEntry], window: int, tokens: int, requests: int):
    keys, arguments = [], [tokens, COUNTER_TTL_SECONDS, requests]
    for limit in limits:
        keys += [f"llmops:rl:{limit.subject}:{window}:requests", f"llmops:rl:{limit.subject}:{window}:tokens"]
        arguments += [limit.requests_per_minute or 0, limit.tokens_per_minute or 0]
    result = await RATE_LIMIT_SCRIPT.run(client, keys, arguments)
    counts = [(int(result[2 * i + 1]), int(result[2 * i + 2])) for i in range(len(limits))]
    return result[0] == 1, counts


def _headers(limits: list[RateLimitEntry], counts: list[tuple[int, int]], reset_seconds: float) -> dict[str, str]:
    """The tightest of the limits for requests and for tokens, as OpenAI names them."""
    reset = _duration(reset_seconds)
    ceilings = [(limit.requests_per_minute, limit.tokens_per_minute) for limit in limits]
    headers = {}
    for position, unit in enumerate(("requests", "tokens")):
        room = [
            (ceiling[position], ceiling[position] - used[position])
            for ceiling, used in zip(ceilings, counts, strict=True)
            if ceiling[position] is not None
        ]
        if room:
            ceiling, remaining = min(room, key=lambda pair: pair[1])
            headers[f"x-ratelimit-limit-{unit}"] = str(ceiling)
            headers[f"x-ratelimit-remaining-{unit}"] = str(max(remaining, 0))
            headers[f"x-ratelimit-reset-{unit}"] = reset
    return headers


def _duration(seconds: float) -> str:
    """OpenAI's format: "59s", "1.5s", "250ms"."""
    if seconds < 1:
        return f"{max(round(seconds * 1000), 1)}ms"
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"


def rate_limit_validate(
    *,
    tenant: Tenant,
    team: Team | None,
    api_key: ApiKey | None,
    requests_per_minute,
    tokens_per_minute,
    scope: str = "",
    customer: str = "",
) -> None:
    """`scope` defaults to the target given: the team's or the key's."""
    if scope == RateLimitScope.CUSTOMER:
        if team is not None or api_key is not None:
            raise ValidationError("A customer rate limit is for the tenant's customers, not a team or an API key.")
        if len(customer) > CUSTOMER_MAX_LENGTH or not customer.isprintable() or customer != customer.strip():
            limits = f"at most {CUSTOMER_MAX_LENGTH} printable characters, without surrounding spaces"
            raise ValidationError({"customer": f"A customer id is {limits}."})
    else:
        if customer:
            raise ValidationError({"customer": "Only a customer rate limit names a customer."})
        if (team is None) == (api_key is None):
            raise ValidationError("A rate limit is for one team, one API key, or each customer.")
        if scope and scope != (RateLimitScope.TEAM if team is not None else RateLimitScope.KEY):
            raise ValidationError({"scope": "The scope must match the target: a team's or an API key's."})
        if (team or api_key).tenant_id != tenant.pk:
            raise ValidationError("No such team or API key in this tenant.")
    if requests_per_minute is None and tokens_per_minute is None:
        raise ValidationError("Set requests per minute, tokens per minute, or both.")


def rate_limit_create(
    *,
    tenant: Tenant,
    team: Team | None = None,
    api_key: ApiKey | None = None,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
    scope: str = "",
    customer: str = "",
    is_active: bool = True,
) -> RateLimit:
    """A key's, a team's, or with scope `customer` each customer's limit (with `customer`, that customer's own)."""
    fields = {
        "tenant": tenant,
        "team": team,
        "api_key": api_key,
        "requests_per_minute": requests_per_minute,
        "tokens_per_minute": tokens_per_minute,
        "customer": customer,
    }
    rate_limit_validate(**fields, scope=scope)
    scope = scope or (RateLimitScope.TEAM if team is not None else RateLimitScope.KEY)
    rate_limit = RateLimit(**fields, scope=scope, is_active=is_active)
    rate_limit.full_clean()
    rate_limit.save()
    return rate_limit
