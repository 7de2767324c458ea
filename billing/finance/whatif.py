"""What-if replay: a tenant's recorded requests of the last days routed again under its live policy and under a
draft, each priced at the catalog's prices in force now, before the draft is published (issue #18).

Read by `manage.py policy_whatif` and the admin's what-if page, never by the gateway. Each request is replayed from
its payload log (the redacted body the tenant chose to keep) where there is one, else from what its ledger row kept:
the requested model, the team, the gateway's prompt token count, the task type, user tier, tools, images and the
difficulty score. What the ledger does not keep (the message, max_tokens; the hints on rows written before the ledger
kept them) is unknown: a rule that reads it leaves the request undecided (routing.policy.replay) rather than guessed,
and an undecided request is set aside from both versions' totals, so the two always compare the same requests.

Beside each rule's cost, the expected change in quality: the rule's requests that the draft serves with another
model, and how far their answers are expected to agree with the large model's before and after, from the routing
lever's shadow results in the same days (billing.quality.expectations).

A request is priced at the tokens it really used (after compression, where it was compressed; cache reads and writes
at the model's cache prices; a provider batch's discount where it had one, and the provider's flex tier's where the
answer was served there: the routed model's batch multiplier, its flex multiplier or the list price when it has no flex
prices), at the prices in force now of the model each version routes it to. Ledger rows with the same features are
grouped in the database and priced once per group, on their summed tokens, at the ledger's ten places. A request a
version refuses costs nothing under it.
"""

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from itertools import islice

from django.db.models import Case, Count, Exists, F, OuterRef, Q, Sum, Value, When
from django.db.models.functions import Coalesce, NullIf
from django.utils import timezone

from billing.ledger.costs import BATCH_ENDPOINT, ZERO_USD, Usage, batch_price, format_cost
from billing.ledger.events import USAGE_FIELDS
from billing.models import REQUEST_ROWS, UsageRecord
from billing.quality.expectations import (
    ExpectedQuality,
    Move,
    QualityChange,
    RoutingEvidence,
    expected_quality,
    request_references,
)
from billing.quality.selectors import RATE_PLACES
from routing.catalog import ModelCatalog, build_model_catalog
from routing.models import RoutingPolicy
from routing.policy.document import compile_policy
from routing.policy.drafts import policy_draft_document
from routing.policy.engine import RouteRequest, route_request_from_body
from routing.policy.replay import (
    HINTS,
    LEDGER_BLIND,
    Feature,
    ReplayDecision,
    ReplayRequest,
    difficulty_score_cuts,
    prompt_token_cuts,
    replay_route,
)
from routing.services import routing_policy_document_errors
from routing.tokens import count_chat_tokens, count_definition_tokens
from tenants.models import PayloadLog, Tenant

WHATIF_MAX_DAYS = 90
WHATIF_DEFAULT_DAYS = 7
NO_RULE = "(no rule)"
PAYLOAD_CHUNK = 200
PERCENT = Decimal("0.1")
# The discounts a ledger row can have been charged at, which the replay charges again at the model it routes to.
BATCH_DISCOUNT = "batch"
FLEX_DISCOUNT = "flex"
# In the order the output names them.
FEATURE_BLURBS = {
    Feature.MESSAGE: "the last user message (rules' keywords and message_regex; the difficulty score's code, maths "
    "and multi-step points)",
    Feature.MAX_TOKENS: "max_tokens (the difficulty score's output points)",
}
# The ledger's token columns a cost is computed from (billing.ledger.costs.Usage), whichever the ledger has.
TOKEN_FIELDS = {
    name: usage_name for name, usage_name in USAGE_FIELDS.items() if type(getattr(Usage(), usage_name)) is int
}
FEATURE_FIELDS = ("requested_model", "task_type", "user_tier", "has_tools", "has_images", "difficulty_score")


class WhatIfRefused(ValueError):
    """The replay cannot run: the reasons say why, for the command's error and the admin's message."""

    def __init__(self, reasons: list[str]):
        super().__init__("; ".join(reasons))
        self.reasons = reasons


@dataclass(frozen=True, slots=True)
class WhatIfLine:
    """Requests and their cost under each version, for one rule (or model); costs at the ledger's ten places."""

    label: str
    live_requests: int
    draft_requests: int
    live_cost_usd: Decimal
    draft_cost_usd: Decimal
    quality: str = ""
    quality_change: dict | None = None  # QualityChange.as_json(): none when no request changes model

    @property
    def difference_usd(self) -> Decimal:
        return self.draft_cost_usd - self.live_cost_usd

    @property
    def difference_pct(self) -> Decimal | None:
        """The difference as a share of the live cost, to a tenth of a percent; None when the live cost is 0."""
        if not self.live_cost_usd:
            return None
        return (self.difference_usd * 100 / self.live_cost_usd).quantize(PERCENT, rounding=ROUND_HALF_EVEN)

    def as_json(self) -> dict:
        return {
            "label": self.label,
            "live_requests": self.live_requests,
            "draft_requests": self.draft_requests,
            "live_cost_usd": format_cost(self.live_cost_usd),
            "draft_cost_usd": format_cost(self.draft_cost_usd),
            "difference_usd": format_cost(self.difference_usd),
            "difference_pct": str(self.difference_pct) if self.difference_pct is not None else None,
            "expected_quality_change": self.quality_change,
            "quality": self.quality,
        }


@dataclass(frozen=True, slots=True)
class Undecided:
    version: str  # "live" or "draft"
    reason: str
    requests: int


@dataclass(frozen=True)
class WhatIfReport:
    tenant: str
    days: int
    since: datetime
    until: datetime
    live_version: int | None
    draft: str
    replayed: int
    from_payloads: int
    from_ledger: int
    # Of the requests replayed from the ledger: those written before it kept their hints, and those with no count.
    ledger_rows_without_hints: int
    ledger_rows_without_prompt_tokens: int
    rules: tuple[WhatIfLine, ...]
    models: tuple[WhatIfLine, ...]
    total: WhatIfLine
    undecided: tuple[Undecided, ...]
    undecided_requests: int
    recorded_cost_usd: Decimal
    expected_quality: QualityChange = field(default_factory=QualityChange)

    @property
    def decided_requests(self) -> int:
        return self.replayed - self.undecided_requests

    @property
    def quality_change_overall(self) -> Decimal | None:
        """The expected change in the share of all decided requests' answers that agree with the large model's."""
        change = self.expected_quality.change
        if change is None or not self.decided_requests:
            return None
        return (change * self.expected_quality.estimated / self.decided_requests).quantize(
            RATE_PLACES, rounding=ROUND_HALF_EVEN
        )

    @property
    def ledger_blind(self) -> list[str]:
        """What a replay from the ledger alone cannot see."""
        blind = [blurb for feature, blurb in FEATURE_BLURBS.items() if feature in LEDGER_BLIND]
        if self.ledger_rows_without_hints:
            blind.append(
                f"task_type, user_tier, has_tools and has_images of {self.ledger_rows_without_hints} requests recorded "
                "before the ledger kept them"
            )
        if self.ledger_rows_without_prompt_tokens:
            blind.append(f"the prompt tokens of {self.ledger_rows_without_prompt_tokens} requests that recorded none")
        return blind

    def as_json(self) -> dict:
        return {
            "tenant": self.tenant,
            "days": self.days,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "live_version": self.live_version,
            "draft": self.draft,
            "requests": {
                "replayed": self.replayed,
                "from_payloads": self.from_payloads,
                "from_ledger_only": self.from_ledger,
                "decided": self.decided_requests,
                "undecided": self.undecided_requests,
            },
            "ledger_only_cannot_see": self.ledger_blind,
            "rules": [line.as_json() for line in self.rules],
            "models": [line.as_json() for line in self.models],
            "total": self.total.as_json(),
            "undecided": [
                {"version": item.version, "reason": item.reason, "requests": item.requests} for item in self.undecided
            ],
            "recorded_cost_usd": format_cost(self.recorded_cost_usd),
            "quality_change_over_decided_requests": None
            if self.quality_change_overall is None
            else f"{self.quality_change_overall:f}",
        }


@dataclass(slots=True)
class _Side:
    requests: int = 0
    cost_usd: Decimal = ZERO_USD


@dataclass(slots=True)
class _Tallies:
    """The running sums of a replay: per rule and per model for each version, and the undecided by reason."""

    catalog: ModelCatalog
    rules: dict[str, dict[str, _Side]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(_Side)))
    models: dict[str, dict[str, _Side]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(_Side)))
    undecided: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    # Decided requests that the draft serves with another model than the live version, by where they go.
    moves: dict[Move, int] = field(default_factory=lambda: defaultdict(int))
    replayed: int = 0
    undecided_requests: int = 0
    recorded_cost_usd: Decimal = ZERO_USD

    def cost(self, model: str, usage: Usage, *, discount: str) -> Decimal:
        entry = self.catalog.models[model]
        cost = usage.cost(entry.prices)
        multiplier = None
        if discount == BATCH_DISCOUNT:
            multiplier = entry.batch_price_multiplier
        elif discount == FLEX_DISCOUNT:
            multiplier = entry.flex_price_multiplier
        if multiplier is not None:
            cost = batch_price(cost, multiplier=multiplier)[0]
        return cost

    def add(
        self,
        live: ReplayDecision,
        draft: ReplayDecision,
        *,
        requests: int,
        usage: Usage,
        recorded_usd: Decimal,
        discount: str,
        task_type: str,
        references: frozenset[str],
    ) -> None:
        self.replayed += requests
        self.recorded_cost_usd += recorded_usd
        if live.undecided or draft.undecided:
            self.undecided_requests += requests
            for version, decision in (("live", live), ("draft", draft)):
                if decision.undecided:
                    self.undecided[(version, decision.undecided)] += requests
            return
        for version, decision in (("live", live), ("draft", draft)):
            cost = self.cost(decision.model, usage, discount=discount) if decision.model else ZERO_USD
            rule = f"(refused: {decision.refused})" if decision.refused else decision.rule or NO_RULE
            for side in (self.rules[rule][version], self.models[decision.model or "(refused)"][version]):
                side.requests += requests
                side.cost_usd += cost
        if live.model and draft.model and live.model != draft.model:
            self.moves[Move(live.rule, live.model, draft.rule, draft.model, task_type, references)] += requests


def _lines(sides: dict[str, dict[str, _Side]], quality: ExpectedQuality | None = None) -> tuple[WhatIfLine, ...]:
    """A line per rule (with `quality`, its expected change in quality) or per model."""
    lines = []
    for label, by_version in sorted(sides.items()):
        change = None
        if quality is not None and not label.startswith("(refused"):
            change = quality.of_rule("" if label == NO_RULE else label)
        lines.append(
            WhatIfLine(
                label=label,
                live_requests=by_version["live"].requests,
                draft_requests=by_version["draft"].requests,
                live_cost_usd=by_version["live"].cost_usd,
                draft_cost_usd=by_version["draft"].cost_usd,
                quality=change.describe() if change is not None else "",
                quality_change=change.as_json() if change is not None else None,
            )
        )
    return tuple(lines)


def _ledger_request(tenant_id: int, row: dict) -> ReplayRequest:
    unknown = set(LEDGER_BLIND)
    if row["has_tools"] is None:
        unknown |= HINTS
    if row["routing_tokens"] is None:
        unknown.add(Feature.PROMPT_TOKENS)
    features = RouteRequest(
        tenant_id=tenant_id,
        requested_model=row["requested_model"],
        prompt_tokens=row["routing_tokens"] or 0,
        task_type=row["task_type"],
        user_tier=row["user_tier"],
        team_slug=row["team_slug"],
        has_tools=bool(row["has_tools"]),
        has_images=bool(row["has_images"]),
    )
    return ReplayRequest(features=features, unknown=frozenset(unknown), difficulty_score=row["difficulty_score"])


def _payload_request(tenant_id: int, row: dict, body, catalog: ModelCatalog) -> ReplayRequest | None:
    """The request rebuilt from its logged body; None when the body is not a chat request's."""
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return None
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(message, dict) for message in messages):
        return None
    try:
        tokens = row["routing_tokens"]
        if tokens is None:
            entry = catalog.models.get(body["model"])
            encoding_model = entry.upstream_name if entry else body["model"]
            tokens = count_chat_tokens(messages, model=encoding_model) + count_definition_tokens(
                body, model=encoding_model
            )
        features = route_request_from_body(
            body, headers={}, tenant_id=tenant_id, team_slug=row["team_slug"], prompt_tokens=tokens
        )
    except (AttributeError, TypeError, KeyError, ValueError):
        return None
    unknown = set()
    if row["has_tools"] is not None:
        # The ledger kept the hints routing read, the x-llmops-* headers' included, which the payload log does not.
        features = replace(features, task_type=row["task_type"], user_tier=row["user_tier"])
    else:
        metadata = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
        unknown |= {hint for hint in (Feature.TASK_TYPE, Feature.USER_TIER) if not metadata.get(str(hint))}
    return ReplayRequest(features=features, unknown=frozenset(unknown), difficulty_score=row["difficulty_score"])


def _usage(row: dict, prefix: str = "") -> Usage:
    return Usage(**{usage_name: row[prefix + name] or 0 for name, usage_name in TOKEN_FIELDS.items()})


def _cut_class(field_name: str, cuts: list[int]) -> Case:
    """The highest of ``cuts`` (highest first) at or below the field's value; 0 below them all; NULL stays NULL."""
    return Case(
        *(When(**{f"{field_name}__gte": cut}, then=Value(cut)) for cut in cuts),
        When(**{f"{field_name}__isnull": True}, then=Value(None)),
        default=Value(0),
    )


def _chunks(rows: Iterable[dict], size: int) -> Iterator[list[dict]]:
    iterator = iter(rows)
    while chunk := list(islice(iterator, size)):
        yield chunk


def whatif_policy(*, tenant: Tenant) -> RoutingPolicy:
    policy = RoutingPolicy.objects.for_tenant(tenant).select_related("live_version").first()
    if policy is None:
        raise WhatIfRefused(
            [f"tenant '{tenant.slug}' has no routing policy, so there is no draft to replay; create one first"]
        )
    return policy


def whatif_draft_document(*, tenant: Tenant, document) -> dict:
    """The draft as it would be published: refused with every reason when it could not be."""
    if errors := routing_policy_document_errors(tenant=tenant, document=document):
        raise WhatIfRefused(errors)
    return document


def whatif_replay(
    *,
    tenant: Tenant,
    days: int,
    draft: dict | None = None,
    draft_label: str = "the current draft",
    now: datetime | None = None,
) -> WhatIfReport:
    """Replay the tenant's requests of the last ``days`` days under its live version and ``draft`` (a policy document;
    default: the policy's draft as it stands)."""
    if not 1 <= days <= WHATIF_MAX_DAYS:
        raise WhatIfRefused([f"the window must be 1 to {WHATIF_MAX_DAYS} days, not {days}"])
    policy = whatif_policy(tenant=tenant)
    document = whatif_draft_document(
        tenant=tenant, document=policy_draft_document(policy=policy) if draft is None else draft
    )
    live_version = policy.live_version
    live = compile_policy(live_version.document, version=live_version.number) if live_version else None
    compiled_draft = compile_policy(document)
    until = now or timezone.now()
    since = until - timedelta(days=days)
    catalog = build_model_catalog(tenant_id=tenant.pk)
    tallies = _Tallies(catalog=catalog)
    logged = Exists(PayloadLog.objects.for_tenant(tenant).filter(request_id=OuterRef("request_id")))
    rows = (
        UsageRecord.objects.for_tenant(tenant)
        .filter(REQUEST_ROWS, created_at__gte=since, created_at__lt=until)
        # Rows without a route never reached routing (refused before it, or an endpoint no policy routes).
        .exclude(route="")
        .order_by()
    )
    rows = rows.annotate(
        # The gateway's count, which routing read; the provider's where the row has no count (written before it did).
        counted_tokens=Coalesce("prompt_tokens_before_compression", NullIf("prompt_tokens", Value(0)))
    )
    features = {
        "team_slug": F("team__slug"),
        "routing_tokens": F("counted_tokens"),
        # The discount the row was charged at: a batch line's is the batch endpoint's, any other the flex tier's.
        "discount": Case(
            When(Q(saved_batch_usd__gt=0, endpoint=BATCH_ENDPOINT), then=Value(BATCH_DISCOUNT)),
            When(saved_batch_usd__gt=0, then=Value(FLEX_DISCOUNT)),
            default=Value(""),
        ),
    }
    # Grouped, a row's count and score are the highest cut at or below them, which route alike, so groups stay few.
    grouped_features = {
        **features,
        "routing_tokens": _cut_class("counted_tokens", prompt_token_cuts(live, compiled_draft)),
        "score_class": _cut_class("difficulty_score", difficulty_score_cuts(live, compiled_draft)),
    }
    counts = {"from_payloads": 0, "without_hints": 0, "without_tokens": 0}

    def replay(request: ReplayRequest, row: dict, usage: Usage, requests: int, recorded: Decimal) -> None:
        tallies.add(
            replay_route(live, request, catalog),
            replay_route(compiled_draft, request, catalog),
            requests=requests,
            usage=usage,
            recorded_usd=recorded,
            discount=row["discount"],
            task_type=row["task_type"],
            references=request_references(request.features.requested_model, live, compiled_draft),
        )

    def replay_from_ledger(row: dict, requests: int, usage: Usage, recorded: Decimal) -> None:
        counts["without_hints"] += requests if row["has_tools"] is None else 0
        counts["without_tokens"] += requests if row["routing_tokens"] is None else 0
        replay(_ledger_request(tenant.pk, row), row, usage, requests, recorded)

    grouped = (
        rows.filter(~logged)
        .values(*(name for name in FEATURE_FIELDS if name != "difficulty_score"), **grouped_features)
        .annotate(requests=Count("pk"), recorded=Sum("cost_usd"), **{f"sum_{name}": Sum(name) for name in TOKEN_FIELDS})
    )
    for group in grouped.iterator(chunk_size=2000):
        group["difficulty_score"] = group["score_class"]
        replay_from_ledger(group, group["requests"], _usage(group, "sum_"), group["recorded"])
    singles = rows.filter(logged).values("request_id", "cost_usd", *FEATURE_FIELDS, *TOKEN_FIELDS, **features)
    for chunk in _chunks(singles.iterator(chunk_size=PAYLOAD_CHUNK), PAYLOAD_CHUNK):
        bodies = dict(
            PayloadLog.objects.for_tenant(tenant)
            .filter(request_id__in=[row["request_id"] for row in chunk])
            .values_list("request_id", "request")
        )
        for row in chunk:
            request = _payload_request(tenant.pk, row, bodies.get(row["request_id"]), catalog)
            if request is None:
                replay_from_ledger(row, 1, _usage(row), row["cost_usd"])
                continue
            counts["from_payloads"] += 1
            replay(request, row, _usage(row), 1, row["cost_usd"])
    evidence = RoutingEvidence(tenant_id=tenant.pk, start=since, end=until)
    quality = expected_quality(moves=tallies.moves, evidence=evidence)
    rules, models = _lines(tallies.rules, quality), _lines(tallies.models)
    return WhatIfReport(
        tenant=tenant.slug,
        days=days,
        since=since,
        until=until,
        live_version=live_version.number if live_version else None,
        draft=draft_label,
        replayed=tallies.replayed,
        from_payloads=counts["from_payloads"],
        from_ledger=tallies.replayed - counts["from_payloads"],
        ledger_rows_without_hints=counts["without_hints"],
        ledger_rows_without_prompt_tokens=counts["without_tokens"],
        rules=rules,
        models=models,
        total=WhatIfLine(
            label="total",
            live_requests=sum(line.live_requests for line in rules),
            draft_requests=sum(line.draft_requests for line in rules),
            live_cost_usd=sum((line.live_cost_usd for line in rules), ZERO_USD),
            draft_cost_usd=sum((line.draft_cost_usd for line in rules), ZERO_USD),
            quality=quality.total.describe(),
            quality_change=quality.total.as_json(),
        ),
        undecided=tuple(
            Undecided(version=version, reason=reason, requests=requests)
            for (version, reason), requests in sorted(tallies.undecided.items())
        ),
        undecided_requests=tallies.undecided_requests,
        recorded_cost_usd=tallies.recorded_cost_usd,
        expected_quality=quality.total,
    )
