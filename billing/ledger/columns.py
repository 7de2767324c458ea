"""The ledger as finance's customers read it: the columns of the CSV exports and of the usage API, and the
groupings of their aggregates, each defined once here.

The exports (billing/finance/exports.py), the API's serializers and schema (billing/finance/api.py) and the column
tables of docs/finance.md (`manage.py ledger_columns_doc` writes them) all come from these tuples. A new column is
one line here, plus the model field and its migration when the ledger does not hold it yet. Customers' scripts read
columns by position: append, never rename or reorder.
"""

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from zoneinfo import ZoneInfo

from django.db import models
from django.db.models import Expression, F
from django.db.models.functions import TruncDate

from billing.ledger.costs import format_cents, format_cost

NO_SERVED_MODEL = "(none)"
NO_POLICY = "(no policy)"
UNTAGGED_LABEL = "(untagged)"
# Joins a request's tags in its tag group's label; the gateway refuses a tag holding it, or one named UNTAGGED_LABEL,
# so two tag sets never share a label.
TAG_JOINER = "+"
NO_CUSTOMER = "(no customer)"


class ColumnType(StrEnum):
    TEXT = "text"
    INTEGER = "integer"
    BOOLEAN = "boolean"
    TIMESTAMP = "timestamp"
    MONEY = "money"
    CENTS = "cents"


# How each type reads in the docs' table, and so in a spreadsheet.
TYPE_DESCRIPTIONS = {
    ColumnType.TEXT: "text",
    ColumnType.INTEGER: "integer",
    ColumnType.BOOLEAN: "`True` / `False`",
    ColumnType.TIMESTAMP: "ISO 8601",
    ColumnType.MONEY: "USD, 10 places",
    ColumnType.CENTS: "USD, 2 places",
}


@dataclass(frozen=True, slots=True)
class Column:
    name: str  # the CSV header and the API's field
    type: ColumnType
    description: str
    source: str = ""  # what it is read from: a ledger field (`team__slug` across a relation) or a total; else name
    in_api: bool = True  # a cents column is for spreadsheets: the API's clients round for themselves

    @property
    def field(self) -> str:
        return self.source or self.name


# In both tables.
CACHED_TOKENS = Column("cached_tokens", ColumnType.INTEGER, "Prompt tokens read from the provider's prompt cache.")
COST_USD_ROUNDED = Column(
    "cost_usd_rounded", ColumnType.CENTS, "`cost_usd` rounded to cents, half to even.", source="cost_usd", in_api=False
)
CACHE_WRITE_TOKENS = Column(
    "cache_write_tokens", ColumnType.INTEGER, "Prompt tokens written to the provider's prompt cache (Claude)."
)
# What each lever saved (billing.ledger.costs): the cost plus them all is what the request would have cost on the
# premium model with nothing read from or written to the provider's prompt cache.
SAVINGS_COLUMNS = (
    Column(
        "saved_cache_usd",
        ColumnType.MONEY,
        "The `cache` lever: on a response-cache hit (exact or semantic), what the stored answer's tokens cost at the "
        "served model's prices; 0 otherwise.",
    ),
    Column(
        "saved_routing_usd",
        ColumnType.MONEY,
        "The `routing` lever: the tokens, none of them read from or written to the provider's prompt cache, at the "
        "prices of the model the request would have used without routing (the model it named, or its alias's large "
        "model), minus at the served model's; 0 when routing kept it there or when the tenant may not use that model "
        "(a rule that ignores the model named can answer a request naming one it was never granted), negative where "
        "it chose a dearer model.",
    ),
    Column(
        "saved_compression_usd",
        ColumnType.MONEY,
        "The `compression` lever: the prompt tokens compression removed, at the served model's input price, minus "
        "what its summary calls cost.",
    ),
    Column(
        "saved_batch_usd",
        ColumnType.MONEY,
        "The `batch` lever: the list price of an answer of the provider's batch endpoint, or of one the provider "
        'says it served at its flex tier (`service_tier: "flex"`, which OpenAI prices as its Batch API; the model\'s '
        "`flex_price_multiplier`), minus what it was charged.",
    ),
    Column(
        "saved_provider_cache_usd",
        ColumnType.MONEY,
        "The `provider_cache` lever: the prompt at the input price, minus what its cache reads and writes cost at the "
        "catalog's cache prices; negative where the provider's cache was only written.",
    ),
)

REQUEST_COLUMNS = (
    Column("request_id", ColumnType.TEXT, "The request's id, as in its `x-llmops-request-id` header."),
    Column(
        "created_at",
        ColumnType.TIMESTAMP,
        "When the request arrived: with the tenant's UTC offset in the CSV, in UTC in the API.",
    ),
    Column("team", ColumnType.TEXT, "Slug of the team whose key made the request.", source="team__slug"),
    Column("api_key_prefix", ColumnType.TEXT, "Prefix of the API key that made it.", source="api_key__prefix"),
    Column("endpoint", ColumnType.TEXT, "The path called, e.g. `/v1/chat/completions`."),
    Column("requested_model", ColumnType.TEXT, "The model or alias the client asked for, as it was sent."),
    Column("served_model", ColumnType.TEXT, "The catalog model that answered; empty when none did."),
    Column("is_stream", ColumnType.BOOLEAN, "The answer was streamed."),
    Column("prompt_tokens", ColumnType.INTEGER, "Prompt tokens, cached and cache-write tokens included."),
    CACHED_TOKENS,
    Column("completion_tokens", ColumnType.INTEGER, "Completion tokens."),
    Column("usage_estimated", ColumnType.BOOLEAN, "The provider returned no usage; the gateway counted the tokens."),
    Column("cost_usd", ColumnType.MONEY, "What the request cost, as the ledger stores it."),
    COST_USD_ROUNDED,
    Column("upstream_latency_ms", ColumnType.INTEGER, "Time spent waiting on providers; empty when none was called."),
    Column("total_latency_ms", ColumnType.INTEGER, "Time from the request's arrival to the end of its answer."),
    Column("cache_status", ColumnType.TEXT, "`miss`, `hit-exact`, `hit-semantic` or `bypass`."),
    Column("routed_to_large", ColumnType.BOOLEAN, "Routing sent the request to the tenant's large model."),
    Column("http_status", ColumnType.INTEGER, "The HTTP status of the answer."),
    Column(
        "error_code",
        ColumnType.TEXT,
        "The error's code when the request failed; empty otherwise. `unpriced_model` on a `cache_embedding` row "
        "whose embeddings model the catalog has no prices for: its tokens are recorded, its cost as 0.",
    ),
    Column(
        "kind",
        ColumnType.TEXT,
        "`request`, `compression_summary` for the summary call compression made for the request named in "
        "`parent_request_id`, `cache_embedding` for its share of a paid call the semantic cache made to embed its "
        "prompt ([caching](caching.md#metered-embeddings)), `failed_attempt` for an upstream attempt of it that failed "
        "but that the provider may bill (an answer the gateway could not use, a timeout once the request was sent), "
        "or `evaluation` for a shadow evaluation's reference or judge call made for it ([quality](quality.md)).",
    ),
    Column("parent_request_id", ColumnType.TEXT, "The request a call was made for; empty for a request."),
    CACHE_WRITE_TOKENS,
    *SAVINGS_COLUMNS,
    Column(
        "customer",
        ColumnType.TEXT,
        "The tenant's end customer the request was made for (its `x-llmops-customer` header, else its OpenAI "
        "`user` field); empty for none.",
    ),
)

# Sources are the totals of billing.ledger.totals.ledger_aggregates.
AGGREGATE_COLUMNS = (
    Column("requests", ColumnType.INTEGER, "Requests (not the calls made for them)."),
    Column("errors", ColumnType.INTEGER, "Requests answered with HTTP status ≥ 400."),
    Column("prompt_tokens", ColumnType.INTEGER, "Prompt tokens, those of the calls made for the requests included."),
    CACHED_TOKENS,
    Column("completion_tokens", ColumnType.INTEGER, "Completion tokens, those of the calls made for them included."),
    Column("cost_usd", ColumnType.MONEY, "The exact sum of the rows' cost, calls made for the requests included."),
    COST_USD_ROUNDED,
    CACHE_WRITE_TOKENS,
    *SAVINGS_COLUMNS,
)


def column_fields(columns: Iterable[Column]) -> tuple[str, ...]:
    """What a query reads for these columns, each once."""
    return tuple(dict.fromkeys(column.field for column in columns))


def csv_cells(columns: Iterable[Column], *, zone: ZoneInfo) -> Callable[[Mapping], list]:
    """What turns a row's values (by field) into its cells in the columns' order, as the CSV writes them: a time
    with the tenant's UTC offset, money as a plain decimal string. Each column's conversion is looked up here, once
    an export: looked up per cell, a row took three times as long to encode."""
    conversions = {
        ColumnType.TIMESTAMP: lambda moment: moment.astimezone(zone).isoformat(),
        ColumnType.MONEY: format_cost,
        ColumnType.CENTS: format_cents,
    }
    cells = [(column.field, conversions.get(column.type)) for column in columns]

    def row_cells(row: Mapping) -> list:
        return [row[field] if convert is None else convert(row[field]) for field, convert in cells]

    return row_cells


def _tag_label(tags: list[str]) -> str:
    return TAG_JOINER.join(sorted(tags)) if tags else UNTAGGED_LABEL


@dataclass(frozen=True, slots=True)
class Grouping:
    """A way to group the ledger: what rows are grouped by (in the tenant's time zone) and how a group is named."""

    name: str
    title: str  # a form's or a command's choice
    description: str
    expression: Callable[[ZoneInfo], Expression]
    label: Callable[[object], str]


GROUPINGS = {
    grouping.name: grouping
    for grouping in (
        Grouping(
            "day",
            "Day in the tenant's time zone",
            "Day in the tenant's time zone, YYYY-MM-DD.",
            lambda zone: TruncDate("created_at", tzinfo=zone),
            date.isoformat,
        ),
        Grouping("team", "Team", "Team slug.", lambda zone: F("team__slug"), str),
        Grouping("key", "API key prefix", "API key prefix.", lambda zone: F("api_key__prefix"), str),
        Grouping(
            "model",
            "Served model",
            f"Served model; `{NO_SERVED_MODEL}` for requests that never reached one.",
            lambda zone: F("served_model"),
            lambda model: model or NO_SERVED_MODEL,
        ),
        Grouping(
            "tag",
            "Tag set",
            f"The request's whole tag set, sorted, joined by `{TAG_JOINER}`; `{UNTAGGED_LABEL}` without tags (no tag "
            f"holds `{TAG_JOINER}` or is `{UNTAGGED_LABEL}`). Tag sets partition the ledger, so they reconcile like "
            "every other grouping.",
            lambda zone: F("tags"),
            _tag_label,
        ),
        Grouping(
            "customer",
            "End customer",
            f"The tenant's end customer; `{NO_CUSTOMER}` for requests that named none.",
            lambda zone: F("customer"),
            lambda customer: customer or NO_CUSTOMER,
        ),
        Grouping(
            "policy",
            "Routing policy version",
            f"Routing policy version, `v3`; `{NO_POLICY}` for requests no published policy routed.",
            lambda zone: F("policy_version"),
            lambda version: f"v{version}" if version is not None else NO_POLICY,
        ),
    )
}


def grouping_choices(name: str, groupings: Iterable[str]) -> type[models.TextChoices]:
    """The choices of the groupings one surface offers, in its order, each titled as GROUPINGS title it."""
    return models.TextChoices(
        name, [(grouping.upper(), (grouping, GROUPINGS[grouping].title)) for grouping in groupings]
    )


# The groupings CSV exports and the usage API offer, in any combination and order.
ExportGrouping = grouping_choices("ExportGrouping", ("day", "team", "key", "model", "tag", "customer"))


def group_key(grouping: str) -> str:
    """The name a grouping's value takes in a grouped query, clear of the totals' names."""
    return f"group_{grouping}"


def columns_markdown() -> str:
    """The column tables of docs/finance.md, as `manage.py ledger_columns_doc` writes them."""
    groupings = [
        [f"`{grouping}`", TYPE_DESCRIPTIONS[ColumnType.TEXT], GROUPINGS[grouping].description]
        for grouping in ExportGrouping.values
    ]
    return (
        "Per request, in this order:\n\n"
        + _markdown_table(_column_lines(REQUEST_COLUMNS))
        + "\nGrouped: one column per grouping asked for, in the order asked, then the group's totals:\n\n"
        + _markdown_table([*groupings, *_column_lines(AGGREGATE_COLUMNS)])
    )


def _column_lines(columns: Iterable[Column]) -> list[list[str]]:
    return [
        [
            f"`{column.name}`",
            TYPE_DESCRIPTIONS[column.type],
            column.description + ("" if column.in_api else " CSV only."),
        ]
        for column in columns
    ]


def _markdown_table(lines: list[list[str]]) -> str:
    rows = [["column", "type", "meaning"], ["---"] * 3, *lines]
    return "".join(f"| {' | '.join(row)} |\n" for row in rows)
