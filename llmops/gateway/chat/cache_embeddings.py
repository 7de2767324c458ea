"""The semantic cache's own embedding calls, metered like a request's: where the embedder is a provider's paid
/embeddings (routing.cache.embedders.HttpEmbedder), each request that had its prompt embedded gets a ledger row of
kind `cache_embedding` (parent_request_id: the request; its key, team, tenant, customer and tags; route
`semantic-cache-embedding`, cache `bypass`, no savings) for its share of the call, and the share's cost is charged to
the budgets that hold the request's key, team, customer and the embeddings model.

One call embeds the texts of several requests, of several tenants too: its prompt tokens (the provider's usage, else
the gateway's count, the row then marked usage_estimated) are split by each text's token count, and its cost at the
catalog's prices by the same parts, at the ledger's 10 places, so the rows of one call add up to exactly what it cost.

The embeddings model (LLMOPS_CACHE_EMBEDDINGS_MODEL) is priced from the catalog whether or not the tenant may call
it itself: the operator chose it, not the tenant. A model the catalog does not price is still recorded, with its
tokens, at cost 0 with error_code `unpriced_model` (logged once per process and model), so finance sees the calls and
can price them; adding the model to the catalog prices every call from then on.

Nothing here is on the request path: the embedding thread hands each share over to the metering loop (a thread of
its own), which writes the row and charges the budgets, as a settle of a reservation of nothing does
(billing.budgets.reservations.budget_charge), while the lookup goes on. A row still on its way there is lost if the
process is killed: it is not the row of the request the client was answered for.
"""

import logging
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone

from billing.budgets.reservations import BudgetHold, budget_charge
from billing.ledger.costs import Usage, cost_split, usage_cost
from billing.ledger.events import RequestFacts, UsageEvent
from billing.models import CacheStatus, UsageKind
from core.event_loops import LoopThread
from llmops.gateway.call import GatewayCall, new_request_id
from llmops.gateway.snapshot import ConfigSnapshot
from llmops.metrics import record_request_metrics
from routing.cache.embedders import EmbeddingShare
from routing.catalog import ModelCatalog, ModelEntry
from routing.models import ModelKind

logger = logging.getLogger(__name__)

CACHE_EMBEDDING_ROUTE = "semantic-cache-embedding"
UNPRICED_MODEL = "unpriced_model"

_metering = LoopThread("cache-embedding-meter")
# The embeddings models found unpriced in this process, each warned about once.
_unpriced_warned: set[str] = set()


@dataclass(frozen=True, slots=True, eq=False)
class CacheEmbeddingPayer:
    """The request a semantic-cache embedding is made for (routing.cache.embedders.EmbeddingPayer)."""

    snapshot: ConfigSnapshot
    call: GatewayCall

    def charge(self, share: EmbeddingShare) -> None:
        # On the embedding thread, which lookups wait on: the row and the budgets are the metering loop's work.
        _metering.submit(cache_embedding_record(snapshot=self.snapshot, call=self.call, share=share))


def cache_embeddings_model(catalog: ModelCatalog, name: str) -> ModelEntry | None:
    """The catalog model the cache's embedding calls are priced at: the one named ``name``
    (LLMOPS_CACHE_EMBEDDINGS_MODEL), else an embedding model with that upstream name, one whose provider is at
    LLMOPS_CACHE_EMBEDDINGS_URL first."""
    named = catalog.models.get(name)
    if named is not None:
        return named
    url = settings.LLMOPS_CACHE_EMBEDDINGS_URL.rstrip("/")
    serving = [
        model for model in catalog.models.values() if model.kind == ModelKind.EMBEDDING and model.upstream_name == name
    ]
    return min(serving, key=lambda model: (model.provider.base_url != url, model.name), default=None)


def cache_embedding_event(call: GatewayCall, share: EmbeddingShare, model: ModelEntry | None) -> UsageEvent:
    """The ledger row of the request's share of one embedding call, priced at ``model`` (None: unpriced)."""
    facts = RequestFacts(
        request_id=new_request_id(),
        created_at=timezone.now(),
        endpoint=call.endpoint,
        requested_model=share.model,
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
        usage=Usage(prompt_tokens=share.prompt_tokens, estimated=share.estimated),
        tenant_id=call.principal.tenant_id,
        team_id=call.principal.team_id,
        api_key_id=call.principal.key_id,
        http_status=200,
        error_code="" if model is not None else UNPRICED_MODEL,
        served_model=model.name if model is not None else share.model,
        upstream_latency_ms=share.elapsed_ms,
        total_latency_ms=share.elapsed_ms,
    )
    if model is not None:
        call_cost = usage_cost(
            prices=model.prices, prompt_tokens=sum(share.call_tokens), cached_tokens=0, completion_tokens=0
        )
        event.cost_usd = cost_split(call_cost, weights=share.call_tokens)[share.index]
        event.price_version_id = model.prices.version_id
    return event


async def cache_embedding_record(*, snapshot: ConfigSnapshot, call: GatewayCall, share: EmbeddingShare) -> None:
    """Write the share's ledger row and charge its cost to the request's budgets, in one step."""
    try:
        model = cache_embeddings_model(snapshot.catalog, share.model)
        if model is None and share.model not in _unpriced_warned:
            _unpriced_warned.add(share.model)
            logger.warning(
                "cache embeddings model %s is not in the model catalog: its calls are recorded at cost 0 with "
                "error_code %s until it is added with prices",
                share.model,
                UNPRICED_MODEL,
            )
        event = cache_embedding_event(call, share, model)
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
            share.model,
        )
