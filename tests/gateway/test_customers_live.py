"""End customers through the live gateway: a default budget per customer holds each of 1,000 customers to its own
limit, and usage by customer from the API reconciles with the ledger to the last decimal place."""

import asyncio
from collections import Counter, defaultdict
from decimal import Decimal
from types import SimpleNamespace

import aiohttp
import httpx
import orjson
import pytest
from django.db.models import Sum
from django.utils import timezone

from billing.budgets.services import budget_create
from billing.ledger.costs import usage_cost
from billing.models import UsageRecord
from billing.ratelimits import rate_limit_create
from routing.catalog import ModelPrices
from routing.tokens import count_chat_tokens
from tenants.models import Role
from tenants.services import membership_set
from tests.conftest import SMALL_PRICES, make_tenant_setup
from tests.factories import UserFactory
from tests.finance.test_live_export import session_cookie

MESSAGES = [{"role": "user", "content": "Summarise my open invoices in one line."}]
MAX_TOKENS = 10
CUSTOMERS = 1000
ADMITTED_PER_CUSTOMER = 2
CONCURRENCY = 32


@pytest.fixture
def gateway_process(gateway, spawn, gateway_port, ledger_drainer):
    """The gateway as production runs it, a uvicorn process of its own (the suite's in-process one shares this
    process's interpreter with the test's thousand-customer client, and waits for the ledger before each answer
    completes). The suite's drainer drains what it appends; the test waits for it once, before it reads the ledger."""
    start_gateway, _ = spawn
    start_gateway(gateway_port).start()
    server = SimpleNamespace(url=f"http://127.0.0.1:{gateway_port}", wait_drained=ledger_drainer.wait_drained)
    yield server


def worst_case() -> Decimal:
    """What a request reserves and, the mock answering with exactly max_tokens, what it costs."""
    prompt = count_chat_tokens(MESSAGES, model="mock-small")
    return usage_cost(
        prices=ModelPrices(*SMALL_PRICES), prompt_tokens=prompt, cached_tokens=0, completion_tokens=MAX_TOKENS
    )


def customer_of(index: int) -> str:
    return f"cust-{index:04d}"


async def send_round(gateway, key: str, model: str, customers: list[int], *, streaming: bool = False):
    """One request per customer, CONCURRENCY at a time. Even customers name themselves in the OpenAI `user` field,
    odd ones in the x-llmops-customer header. Returns (customer, status, error code) per request.

    aiohttp's client, which costs this process (the mock upstream's too) less per request than httpx's."""
    headers = {"authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(gateway.url, headers=headers, connector=connector) as client:

        async def one(index: int):
            body = {"model": model, "messages": MESSAGES, "max_tokens": MAX_TOKENS}
            extra = {}
            if index % 2 == 0:
                body["user"] = customer_of(index)
            else:
                extra = {"x-llmops-customer": customer_of(index)}
            if streaming:
                body |= {"stream": True, "stream_options": {"include_usage": True}}
            async with client.post("/v1/chat/completions", json=body, headers=extra) as response:
                text = await response.text()
            if response.status != 200:
                return customer_of(index), response.status, orjson.loads(text)["error"]["code"]
            assert not streaming or text.rstrip().endswith("data: [DONE]"), text
            return customer_of(index), 200, ""

        return await asyncio.gather(*(one(index) for index in customers))


def test_a_thousand_customers_are_each_held_to_their_own_daily_budget(gateway_process, mock_upstream):
    gateway = gateway_process
    acme = make_tenant_setup(mock_upstream.url, slug="acme")
    limit = worst_case() * ADMITTED_PER_CUSTOMER
    budget_create(tenant=acme.tenant, scope="customer", period="day", limit_usd=limit)
    everyone = list(range(CUSTOMERS))

    # Every customer spends up to its limit (the second round streams), then every customer's next request is refused.
    rounds = [
        asyncio.run(send_round(gateway, acme.key, acme.small.name, everyone, streaming=number == 1))
        for number in range(ADMITTED_PER_CUSTOMER)
    ]
    refused = asyncio.run(send_round(gateway, acme.key, acme.small.name, everyone))
    # A request that names no customer is held to no customer's budget.
    anonymous = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {acme.key}"},
        json={"model": acme.small.name, "messages": MESSAGES, "max_tokens": MAX_TOKENS},
    )

    gateway.wait_drained()
    for answers in rounds:
        assert Counter(status for _, status, _ in answers) == {200: CUSTOMERS}
    assert Counter((status, code) for _, status, code in refused) == {(429, "budget_exceeded"): CUSTOMERS}
    assert anonymous.status_code == 200

    # The ledger: each customer spent exactly its limit, its refusal recorded at no cost.
    ledger = UsageRecord.objects.for_tenant(acme.tenant)
    spent = dict(ledger.exclude(customer="").values_list("customer").annotate(Sum("cost_usd")).order_by())
    assert spent == {customer_of(index): limit for index in everyone}
    answered = Counter(ledger.filter(http_status=200).values_list("customer", flat=True))
    assert answered == {**{customer_of(index): ADMITTED_PER_CUSTOMER for index in everyone}, "": 1}
    assert ledger.filter(http_status=429, error_code="budget_exceeded").count() == CUSTOMERS
    assert ledger.filter(is_stream=True, http_status=200).exclude(customer="").count() == CUSTOMERS

    # Usage by customer from the API, page by page, equals the ledger's sums exactly.
    finance = UserFactory(username="acme-finance", is_staff=True)
    membership_set(tenant=acme.tenant, user=finance, role=Role.FINANCE)
    today = timezone.now().date().isoformat()
    groups = []
    with httpx.Client(base_url=gateway.url, cookies=session_cookie(finance), timeout=30) as client:
        offset = 0
        while True:
            page = client.get(
                "/api/usage/",
                params={"tenant": "acme", "since": today, "until": today, "group_by": "customer", "limit": 1000,
                        "offset": offset},
            ).json()  # fmt: skip
            groups += page["results"]
            offset += len(page["results"])
            if page["next"] is None:
                break
    by_customer = {group["customer"]: Decimal(group["cost_usd"]) for group in groups}
    ledger_by_customer = defaultdict(Decimal)
    for customer, cost in ledger.values_list("customer", "cost_usd"):
        ledger_by_customer[customer or "(no customer)"] += cost
    assert by_customer == ledger_by_customer
    assert sum(by_customer.values()) == ledger.aggregate(total=Sum("cost_usd"))["total"]
    assert {group["customer"]: group["requests"] for group in groups} == {
        **{customer_of(index): ADMITTED_PER_CUSTOMER + 1 for index in everyone},
        "(no customer)": 1,
    }


def test_alice_of_one_tenant_never_spends_alice_of_another(gateway, mock_upstream):
    acme = make_tenant_setup(mock_upstream.url, slug="acme")
    globex = make_tenant_setup(mock_upstream.url, slug="globex")
    for setup in (acme, globex):
        budget_create(tenant=setup.tenant, scope="customer", period="day", limit_usd=worst_case())

    def ask(setup):
        return httpx.post(
            f"{gateway.url}/v1/chat/completions",
            headers={"authorization": f"Bearer {setup.key}", "x-llmops-customer": "alice"},
            json={"model": setup.small.name, "messages": MESSAGES, "max_tokens": MAX_TOKENS},
        )

    statuses = [ask(acme).status_code, ask(acme).status_code, ask(globex).status_code]

    assert statuses == [200, 429, 200]
    assert "customer 'alice'" in ask(acme).json()["error"]["message"]
    for setup, answered in ((acme, 1), (globex, 1)):
        rows = UsageRecord.objects.for_tenant(setup.tenant).filter(customer="alice", http_status=200)
        assert rows.count() == answered


def test_a_customer_rate_limit_counts_each_customer_apart(gateway, mock_upstream):
    acme = make_tenant_setup(mock_upstream.url, slug="acme")
    rate_limit_create(tenant=acme.tenant, scope="customer", requests_per_minute=1)
    rate_limit_create(tenant=acme.tenant, scope="customer", customer="vip", requests_per_minute=3)

    def ask(customer: str):
        body = {"model": acme.small.name, "messages": MESSAGES, "max_tokens": MAX_TOKENS}
        if customer:
            body["user"] = customer
        return httpx.post(
            f"{gateway.url}/v1/chat/completions", headers={"authorization": f"Bearer {acme.key}"}, json=body
        )

    alice = [ask("alice") for _ in range(2)]
    bob = ask("bob")
    vip = [ask("vip").status_code for _ in range(4)]
    anonymous = [ask("").status_code for _ in range(3)]

    assert [response.status_code for response in alice] == [200, 429]
    assert alice[1].json()["error"]["code"] == "rate_limit_exceeded"
    assert "customer 'alice'" in alice[1].json()["error"]["message"]
    assert alice[0].headers["x-ratelimit-limit-requests"] == "1"
    assert bob.status_code == 200
    assert vip == [200, 200, 200, 429]
    assert anonymous == [200, 200, 200]
