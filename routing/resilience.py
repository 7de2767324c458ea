"""Surviving a failing provider: retries with backoff, fallbacks down a model chain, a circuit breaker.

A call is retried on the same model while the failure is worth retrying (429, 5xx, timeouts,
connection errors), with exponential backoff and full jitter, never sooner than the provider's
``Retry-After``; then the next model of the chain is tried. A bounded number of attempts and a
total deadline cap the whole. The attempts that failed in a way the provider may bill (an answer the gateway cannot
use, a timeout once the request was sent, an attempt the deadline cut) are handed back, for the caller to charge.
Each model of each provider has a circuit breaker whose state lives in Redis, so every gateway process skips a dead
model after a few failures instead of waiting on it. The circuit is the model's, not the provider's: one model
failing (overloaded, withdrawn, slowed by one tenant's traffic) leaves the provider's other models answering. A
provider holds one credential, so the provider's name stands for the credential too.
"""

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from redis.exceptions import RedisError

from core.redis import RedisScript, async_redis
from routing.catalog import ModelEntry
from routing.providers.base import (
    RequestRefused,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts_per_model: int = 2
    max_attempts: int = 4
    deadline_seconds: float = 60.0
    base_delay_seconds: float = 0.2
    max_delay_seconds: float = 5.0
    # A provider asking to wait longer than this is not waited for: the next model is tried.
    max_retry_after_seconds: float = 10.0


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failure_threshold: int = 5
    window_seconds: float = 30.0
    cooldown_seconds: float = 15.0
    # How long one half-open probe may take before another request may probe.
    probe_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class BilledFailure:
    """An attempt that failed but that the provider may bill (UpstreamError.billable): the model it was made to, and
    its number among the call's attempts (from 1)."""

    model: ModelEntry
    error: UpstreamError
    attempt: int


@dataclass(slots=True)
class ChainProgress:
    """How far a call down the chain has got, kept up to date as it goes, for a caller cancelled meanwhile (its client
    went away), which gets neither the result nor the error: the attempts made, and the model of the attempt under way
    (sent, or answered and not yet handed back), None before the first and between two (a backoff, a circuit
    breaker's write) once the last one failed. With ``billed_to``, it tells what a cancel leaves to charge: an attempt
    under way is not among the billed failures."""

    attempts: int = 0
    in_flight: ModelEntry | None = None


@dataclass(slots=True)
class FallbackResult(Generic[T]):
    value: T
    served: ModelEntry
    attempts: int
    # The failed attempts before the one that served that the provider may bill; empty on the usual first-try success.
    billed_failures: tuple[BilledFailure, ...] = ()


class CircuitOpen(UpstreamError):
    """Every model of the chain has its circuit open; nothing was called."""

    code = "upstream_circuit_open"


def is_retryable(error: UpstreamError) -> bool:
    """Worth another try or another model: rate limits, server failures, timeouts (the provider's 408 included),
    unreachable hosts."""
    if isinstance(error, UpstreamTimeout | UpstreamConnectionError):
        return True
    if isinstance(error, UpstreamRejected):
        return error.upstream_status in (408, 429) or error.upstream_status >= 500
    return error.upstream_status is None or error.upstream_status >= 500


def backoff_delay(policy: RetryPolicy, retry_number: int, retry_after: float | None) -> float:
    """Full jitter over an exponential ceiling, but never less than what the provider asked for."""
    ceiling = min(policy.max_delay_seconds, policy.base_delay_seconds * 2**retry_number)
    return max(random.uniform(0, ceiling), retry_after or 0.0)


# Lua keeps each transition atomic across processes. KEYS: failures, open, tripped, probe.
_RECORD_FAILURE = RedisScript("""
if redis.call('EXISTS', KEYS[3]) == 1 and redis.call('EXISTS', KEYS[2]) == 0 then
    redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
    redis.call('DEL', KEYS[4])
    return 1
end
local failures = redis.call('INCR', KEYS[1])
if failures == 1 then
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
if failures >= tonumber(ARGV[3]) then
    redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
    redis.call('SET', KEYS[3], '1', 'PX', ARGV[4])
    redis.call('DEL', KEYS[1])
    return 1
end
return 0
""")
# 0: refused; 1: allowed, with failures or a trip to clear on success; 2: allowed, nothing recorded to clear.
_ALLOW = RedisScript("""
if redis.call('EXISTS', KEYS[2]) == 1 then
    return 0
end
if redis.call('EXISTS', KEYS[3]) == 1 then
    if redis.call('SET', KEYS[4], '1', 'NX', 'PX', ARGV[1]) then
        return 1
    end
    return 0
end
if redis.call('EXISTS', KEYS[1]) == 1 then
    return 1
end
return 2
""")
_ALLOWED_CLEAN = 2
# How long this process trusts a clean verdict from Redis: a circuit that another process opens is honoured
# within this, and calls in between save a round trip. A failure seen here forgets the verdict at once.
CLEAN_VERDICT_SECONDS = 0.25
_clean_until: dict[str, float] = {}
# A tripped breaker forgets itself after this many cool-downs without traffic.
_TRIPPED_MEMORY_COOLDOWNS = 20


class _LocalBreakerState:
    """The same state machine in process memory, for deployments without Redis."""

    def __init__(self):
        self.failures = 0
        self.window_ends = 0.0
        self.open_until = 0.0
        self.tripped = False
        self.probe_until = 0.0


_local_states: dict[str, _LocalBreakerState] = {}


class CircuitBreaker:
    """Per model of a provider (its upstream name there): closed → open after N consecutive failures in a window →
    half-open after the cool-down, where one request probes; its success closes the circuit, its failure opens it
    again."""

    def __init__(
        self, provider_name: str, model_name: str, *, policy: BreakerPolicy, key_prefix: str = "llmops:breaker"
    ):
        # Provider names are slugs, so the separator cannot make two circuits one.
        self.name = f"{provider_name}:{model_name}"
        self.policy = policy
        base = f"{key_prefix}:{self.name}"
        self.keys = [f"{base}:failures", f"{base}:open", f"{base}:tripped", f"{base}:probe"]
        # Set by allow(): a success after a clean allow has nothing to clear, which saves a round trip per call.
        self.allowed_clean = False

    async def allow(self) -> bool:
        """Whether a call may go to the provider now (in half-open, only the one probing call may)."""
        redis = async_redis()
        if redis is None:
            return self._local_allow()
        if _clean_until.get(self.keys[1], 0.0) > time.monotonic():
            self.allowed_clean = True
            return True
        try:
            verdict = await _ALLOW.run(redis, self.keys, [self._ms(self.policy.probe_seconds)])
        except RedisError:
            logger.warning("circuit breaker for %s cannot reach Redis; letting the call through", self.name)
            return True
        self.allowed_clean = verdict == _ALLOWED_CLEAN
        if self.allowed_clean:
            _clean_until[self.keys[1]] = time.monotonic() + CLEAN_VERDICT_SECONDS
        return bool(verdict)

    async def record_success(self) -> None:
        redis = async_redis()
        if redis is None:
            _local_states.pop(self.name, None)
            return
        if self.allowed_clean:
            return
        try:
            await redis.delete(self.keys[0], self.keys[2], self.keys[3])
        except RedisError:
            logger.warning("circuit breaker for %s cannot reach Redis", self.name)

    async def record_failure(self) -> bool:
        """Count a failure; returns whether the circuit is now open."""
        self.allowed_clean = False
        _clean_until.pop(self.keys[1], None)
        redis = async_redis()
        if redis is None:
            return self._local_failure()
        policy = self.policy
        args = (
            self._ms(policy.window_seconds),
            self._ms(policy.cooldown_seconds),
            policy.failure_threshold,
            self._ms(policy.cooldown_seconds * _TRIPPED_MEMORY_COOLDOWNS),
        )
        try:
            opened = bool(await _RECORD_FAILURE.run(redis, self.keys, args))
        except RedisError:
            logger.warning("circuit breaker for %s cannot reach Redis", self.name)
            return False
        if opened:
            logger.warning("circuit opened for %s", self.name)
        return opened

    @staticmethod
    def _ms(seconds: float) -> int:
        return max(int(seconds * 1000), 1)

    def _local_allow(self) -> bool:
        state = _local_states.get(self.name)
        now = time.monotonic()
        if state is None or not state.tripped:
            return True
        if now < state.open_until or now < state.probe_until:
            return False
        state.probe_until = now + self.policy.probe_seconds
        return True

    def _local_failure(self) -> bool:
        state = _local_states.setdefault(self.name, _LocalBreakerState())
        now = time.monotonic()
        if state.tripped and now >= state.open_until:
            state.open_until, state.probe_until = now + self.policy.cooldown_seconds, 0.0
            return True
        if now >= state.window_ends:
            state.failures, state.window_ends = 0, now + self.policy.window_seconds
        state.failures += 1
        if state.failures >= self.policy.failure_threshold:
            state.failures, state.tripped = 0, True
            state.open_until = now + self.policy.cooldown_seconds
            return True
        return False


async def call_with_fallbacks(
    chain: list[ModelEntry],
    attempt: Callable[[ModelEntry], Awaitable[T]],
    *,
    policy: RetryPolicy,
    breaker_policy: BreakerPolicy | None = None,
    billed_to: list[BilledFailure] | None = None,
    progress: ChainProgress | None = None,
) -> FallbackResult[T]:
    """Call ``attempt`` down the chain until one succeeds.

    Raises the last UpstreamError, with ``attempts``, ``last_model`` and ``billed_failures`` set, when the chain is
    exhausted, the attempts or the deadline are used up, or the failure is not worth retrying (a 400 would fail on
    any model); raises CircuitOpen when every model of the chain was skipped. A model whose adapter refuses the
    request before any call (RequestRefused: its API cannot take a parameter) is passed over for the next; its
    refusal is raised only when no model took the request and none failed otherwise. For a stream, ``attempt`` should
    open it (up to its first event), so a fallback happens only before anything reached the client.

    The attempts the provider may bill though they failed are kept, each with its model, on the result and on the
    error raised (``billed_failures``): a caller that meters the call charges them. An attempt the deadline cut is
    taken as sent, so as billed: the gateway cannot tell how far it got. Each is also appended to ``billed_to`` as it
    happens: a caller cancelled meanwhile (its client went away during a later attempt or a backoff) gets neither
    the result nor the error, and still knows them; ``progress`` tells it whether an attempt was under way then.
    """
    breaker_policy = breaker_policy or BreakerPolicy()
    deadline = time.monotonic() + policy.deadline_seconds
    attempts = 0
    last_error: UpstreamError | None = None
    billed: list[BilledFailure] = []

    progress = progress if progress is not None else ChainProgress()

    def bill(entry: ModelEntry, error: UpstreamError) -> None:
        failure = BilledFailure(entry, error, attempts)
        billed.append(failure)
        if billed_to is not None:
            billed_to.append(failure)

    for entry in chain:
        breaker = CircuitBreaker(entry.provider.name, entry.upstream_name, policy=breaker_policy)
        if not await breaker.allow():
            logger.info("skipping model %s: its circuit (%s) is open", entry.name, breaker.name)
            continue
        for try_number in range(policy.attempts_per_model):
            remaining = deadline - time.monotonic()
            if attempts >= policy.max_attempts or remaining <= 0:
                break
            attempts += 1
            progress.attempts, progress.in_flight = attempts, entry
            try:
                async with asyncio.timeout(remaining):
                    value = await attempt(entry)
            except TimeoutError:
                progress.in_flight = None
                last_error = UpstreamTimeout(
                    f"no answer within the {policy.deadline_seconds:g}s deadline (model {entry.name})",
                    elapsed_ms=int(remaining * 1000),
                    request_sent=True,
                )
                last_error.last_model = entry
                bill(entry, last_error)
                await breaker.record_failure()
                break
            except RequestRefused as refused:
                # Refused before any call: this model's API cannot take the request, a later one of the chain may.
                # The circuit is not the model's fault; the chain's answer stays a real failure before it, if any.
                progress.in_flight = None
                refused.last_model = entry
                last_error = last_error or refused
                break
            except UpstreamError as error:
                progress.in_flight = None
                last_error, error.last_model = error, entry
                if error.billable:
                    bill(entry, error)
                if not is_retryable(error):
                    await breaker.record_success()
                    error.attempts, error.billed_failures = attempts, tuple(billed)
                    raise
                if await breaker.record_failure():
                    break
                if try_number + 1 >= policy.attempts_per_model:
                    break
                if error.retry_after is not None and error.retry_after > policy.max_retry_after_seconds:
                    break
                delay = backoff_delay(policy, try_number, error.retry_after)
                if time.monotonic() + delay >= deadline:
                    break
                await asyncio.sleep(delay)
                continue
            try:
                await breaker.record_success()
            except BaseException:
                # Cancelled (the client went away) with an open stream in hand: it goes back before the error does.
                if hasattr(value, "aclose"):
                    await value.aclose()
                raise
            return FallbackResult(value=value, served=entry, attempts=attempts, billed_failures=tuple(billed))
        if attempts >= policy.max_attempts or time.monotonic() >= deadline:
            break
    if last_error is None:
        names = ", ".join(sorted({f"{entry.provider.name}:{entry.upstream_name}" for entry in chain}))
        last_error = CircuitOpen(f"every model of the chain is failing and skipped for now ({names})")
    last_error.attempts, last_error.billed_failures = attempts, tuple(billed)
    raise last_error
