"""The semantic cache's own embedding calls, metered like a request's: where the embedder is a provider's paid
/embeddings (routing.cache.embedders.HttpEmbedder), each request that had its prompt embedded gets a ledger row of
kind `cache_embedding` (parent_request_id: the request; its key, team, tenant, customer and tags; route
`semantic-cache-embedding`, cache `bypass`, no savings) for its share of the call, and the share's cost is charged to
the budgets that hold the request's key, team, customer and the embeddings model.

One call embeds the texts of several requests, of several tenants too: its prompt tokens (the provider's usage, else
the gateway's count, the row then marked usage_estimated) are split by each text's token count, and its cost at the
catalog's prices by the same parts, at the ledger's 10 places, so the rows of one call add up to exactly what it cost.
The call is priced once, by the first of its shares recorded, from that request's snapshot: each request's snapshot
may hold another price version (one took effect between them), and the parts of different costs would add up to
none. Only the snapshot's models are read for it, which are the same for every tenant (a tenant's grant decides
which it may call, and is not read): no tenant's configuration prices another's share.
A call that failed once the provider may bill it (a read timeout, an answer that cannot be read) is split and charged
so too, at the gateway's count, its rows carrying the failure's status and error code (504 `upstream_timeout`, 502
`upstream_invalid_response`, which an unpriced model's rows carry instead of `unpriced_model`); one that never reached
the provider, or that it refused with an error status, has no rows.

The embeddings model (LLMOPS_CACHE_EMBEDDINGS_MODEL) is priced from the catalog whether or not the tenant may call
it itself: the operator chose it, not the tenant. A model the catalog does not price is still recorded, with its
tokens, at cost 0 with error_code `unpriced_model` (logged once per process and model), so finance sees the calls and
can price them; adding the model to the catalog prices every call from then on.

Nothing here is on the request path: the embedding thread hands each share over to the metering loop (a thread of
its own), which writes the row and charges the budgets, as a settle of a reservation of nothing does
(billing.budgets.reservations.budget_charge), while the lookup goes on. A process that stops gracefully gives the
shares on their way up to EXIT_FLUSH_SECONDS to be recorded (``cache_embeddings_flush``); one killed loses them: they
are not the row of the request the client was answered for.
"""

# Imported before the exit hook below is registered, so that its own (shutting the thread pools down) runs after ours.
import concurrent.futures.thread  # noqa: F401
import logging
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from weakref import WeakKeyDictionary

from celery.signals import worker_process_shutdown
from django.conf import settings
from django.utils import timezone

from billing.budgets.reservations import BudgetHold, budget_charge
from billing.ledger.costs import ZERO_USD, Usage, cost_split, usage_cost
from billing.ledger.events import RequestFacts, UsageEvent
from billing.models import CacheStatus, UsageKind
from core.event_loops import LoopThread
from llmops.gateway.call import GatewayCall, new_request_id
from llmops.gateway.errors import upstream_failure
from llmops.gateway.snapshot import ConfigSnapshot
from llmops.metrics import record_request_metrics
from routing.cache.embedders import EmbeddingCall, EmbeddingShare, embeddings_flush
from routing.catalog import ModelCatalog, ModelEntry
from routing.models import ModelKind

logger = logging.getLogger(__name__)

CACHE_EMBEDDING_ROUTE = "semantic-cache-embedding"
UNPRICED_MODEL = "unpriced_model"

# How long a process that stops gracefully waits for the shares on their way to be recorded.
EXIT_FLUSH_SECONDS = 5

_metering = LoopThread("cache-embedding-meter")
# The embeddings models found unpriced in this process, each warned about once.
_unpriced_warned: set[str] = set()


@dataclass(frozen=True, slots=True, eq=False)
class CacheEmbeddingPayer:
    """The request a semantic-cache embedding is made for (routing.cache.embedders.EmbeddingPayer)."""

    snapshot: ConfigSnapshot
    call: GatewayCall

    def charge(self, share: EmbeddingShare) -> None:
        # On the embedding thread, which the next lookups wait on: the row and the budgets are the metering loop's work.
        _metering.submit(cache_embedding_record(snapshot=self.snapshot, call=self.call, share=share))


def cache_embeddings_model(catalog: ModelCatalog, name: str) -> ModelEntry | None:
    """The catalog model the cache's embedding calls are priced at: the one named ``name``
    (LLMOPS_CACHE_EMBEDDINGS_MODEL), else an embedding model with that upstream name, one whose provider is at
    LLMOPS_CACHE_EMBEDDINGS_URL first. None, warned about once per process and name, when there is none."""
    named = catalog.models.get(name)
    if named is not None:
        return named
    url = settings.LLMOPS_CACHE_EMBEDDINGS_URL.rstrip("/")
    serving = [
        model for model in catalog.models.values() if model.kind == ModelKind.EMBEDDING and model.upstream_name == name
    ]
    found = min(serving, key=lambda model: (model.provider.base_url != url, model.name), default=None)
    if found is None and name not in _unpriced_warned:
        _unpriced_warned.add(name)
        logger.warning(
            "cache embeddings model %s is not in the model catalog: its calls are recorded at cost 0 with "
            "error_code %s until it is added with prices",
            name,
            UNPRICED_MODEL,
        )
    return found


@dataclass(frozen=True, slots=True)
class CallPrice:
    """What one embedding call cost, the same for all its shares: the catalog model it was priced at, that price
    version and its whole cost; or its model's name, no version, cost 0 and UNPRICED_MODEL when the catalog has none."""

    served_model: str
    price_version_id: int | None
    cost_usd: Decimal
    error_code: str = ""


# The calls being recorded, each priced by the first of its shares: forgotten with the call, once its shares are
# recorded. Touched on the metering loop only.
_call_prices: WeakKeyDictionary[EmbeddingCall, CallPrice] = WeakKeyDictionary()


def call_price(catalog: ModelCatalog, call: EmbeddingCall) -> CallPrice:
    """The call's price: from ``catalog`` (the snapshot of the share being recorded) if it has none yet."""
    price = _call_prices.get(call)
    if price is None:
        model = cache_embeddings_model(catalog, call.model)
        if model is None:
            price = CallPrice(call.model, price_version_id=None, cost_usd=ZERO_USD, error_code=UNPRICED_MODEL)
        else:
            cost = usage_cost(prices=model.prices, prompt_tokens=sum(call.parts), cached_tokens=0, completion_tokens=0)
            price = CallPrice(model.name, price_version_id=model.prices.version_id, cost_usd=cost)
        _call_prices[call] = price
    return price


def cache_embedding_event(call: GatewayCall, share: EmbeddingShare, price: CallPrice) -> UsageEvent:
    """The ledger row of the request's share of one embedding call, its part of the call's ``price``. A failed call's
    row carries the failure's status and error code, as a failed request's does."""
    http_status, error_code = 200, price.error_code
    if share.call.failure is not None:
        shown = upstream_failure(share.call.failure)
        http_status, error_code = shown.status_code, shown.code
    facts = RequestFacts(
        request_id=new_request_id(),
        created_at=timezone.now(),
        endpoint=call.endpoint,
        requested_model=share.call.model,
        cache_status=CacheStatus.BYPASS,
        route=CACHE_EMBEDDING_ROUTE,
        attempts=1,
        tags=list(call.tags),
        customer=call.customer,
        kind=UsageKind.CACHE_EMBEDDING,
        parent_request_id=call.request_id,
    )
    event = UsageEvent.of(
        facts,
        usage=Usage(prompt_tokens=share.prompt_tokens, estimated=share.call.estimated),
        tenant_id=call.principal.tenant_id,
        team_id=call.principal.team_id,
        api_key_id=call.principal.key_id,
        http_status=http_status,
        error_code=error_code,
        served_model=price.served_model,
        upstream_latency_ms=share.call.elapsed_ms,
        total_latency_ms=share.call.elapsed_ms,
    )
    event.cost_usd = cost_split(price.cost_usd, weights=share.call.parts)[share.index]
    event.price_version_id = price.price_version_id
    return event


async def cache_embedding_record(*, snapshot: ConfigSnapshot, call: GatewayCall, share: EmbeddingShare) -> None:
    """Write the share's ledger row and charge its cost to the request's budgets, in one step."""
    try:
        event = cache_embedding_event(call, share, call_price(snapshot.catalog, share.call))
        record_request_metrics(event)
        principal = call.principal
        budgets = snapshot.budgets.applicable(
            principal.tenant_id, principal.team_id, principal.key_id, event.served_model, call.customer
        )
        holds = tuple(BudgetHold.of(entry, now=event.created_at, customer=call.customer) for entry in budgets)
        await budget_charge(
            holds=holds,
            request_id=event.request_id,
            actual=event.cost_usd,
            event=event,
            served_model=event.served_model,
        )
    except Exception:
        logger.exception(
            "the cache embedding of %s (%d tokens of %s) was not recorded",
            call.request_id,
            share.prompt_tokens,
            share.call.model,
        )


def cache_embeddings_flush(timeout: float = 30) -> bool:
    """Wait up to ``timeout`` seconds until the texts queued for the embedding thread so far are charged: their rows
    written and their budgets charged. At exit (both threads are daemons, cut short), and in tests. False, logged,
    when some were not by then."""
    deadline = time.monotonic() + timeout
    done = embeddings_flush(timeout) and _metering.drain(max(deadline - time.monotonic(), 0))
    if not done:
        logger.warning("cache embeddings: shares still unrecorded after %g s are lost", timeout)
    return done


# A process stopping gracefully records the shares on their way. With threading's exit hooks, which run before the
# interpreter shuts its thread pools down (a row's database writes run on one), not atexit's, which run after.
threading._register_atexit(cache_embeddings_flush, timeout=EXIT_FLUSH_SECONDS)
# Celery's pool processes end with os._exit, which runs neither: they record theirs as they stop.
worker_process_shutdown.connect(lambda **_: cache_embeddings_flush(EXIT_FLUSH_SECONDS), weak=False)
