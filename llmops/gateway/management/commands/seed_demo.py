import os
import secrets
from decimal import Decimal
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from billing.budgets.services import budget_create
from billing.finance.rollups_seed import seed_demo_usage
from billing.models import BudgetAction, BudgetPeriod, BudgetScope, Lever
from billing.quality.seed import demo_evaluation_settings
from billing.quality.services import quality_slo_create
from routing.models import Model, ModelKind, Provider
from routing.services import (
    DEMO_CACHE_TTL_SECONDS,
    model_create,
    provider_base_url_set,
    provider_create,
    routing_policy_create_default,
    tenant_model_access_set,
)
from tenants.audit import audit_actor
from tenants.permissions import Role
from tenants.selectors import tenant_by_slug
from tenants.services import api_key_create, membership_set, tenant_create

DEMO_SLUG = "demo"
MOCK_PROVIDER = "mock"
DEMO_BUDGET_USD = Decimal("500")
DEMO_HISTORY_DAYS = 21
# (public name, upstream name, input, cached input, output) in USD per 1M tokens.
MOCK_MODELS = [
    ("mock-small", "mock-small", "0.15", "0.075", "0.60"),  # priced like gpt-4o-mini
    ("mock-large", "mock-large", "2.50", "1.25", "10.00"),  # priced like gpt-4o
]
OPENAI_MODELS = [
    ("gpt-4o-mini", "gpt-4o-mini", "0.15", "0.075", "0.60"),
    ("gpt-4o", "gpt-4o", "2.50", "1.25", "10.00"),
]
# (public name, upstream name, input price per 1M tokens) of the embedding model for /v1/embeddings, priced like
# text-embedding-3-small, whose 8,191 tokens an input it takes.
MOCK_EMBEDDING_MODEL = ("mock-embed", "text-embedding-3-small", "0.02")
OPENAI_EMBEDDING_MODEL = ("text-embedding-3-small", "text-embedding-3-small", "0.02")
EMBEDDING_CONTEXT_WINDOW = 8191


def demo_files_dir() -> Path:
    return Path(settings.LLMOPS_DEMO_DIR)


def _write_secret_file(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")
    path.chmod(0o600)


class Command(BaseCommand):
    help = (
        "Create the demo tenant, teams, a key, a mock provider with a small and a large model and an embedding model, "
        "the default routing policy, a budget, a few weeks of synthetic usage with their shadow evaluations, shadow "
        "evaluation turned on with a quality SLO on routing, and an admin user."
    )

    def add_arguments(self, parser):
        parser.add_argument("--upstream-url", default="http://127.0.0.1:9100/v1")

    def handle(self, *args, upstream_url, **options):
        key_file = demo_files_dir() / "demo-api-key"
        self._follow_upstream(upstream_url)
        if tenant_by_slug(slug=DEMO_SLUG) is not None:
            self.stdout.write(f"The demo tenant exists already. Its key is in {key_file}.")
            return
        with transaction.atomic():
            api_key, admin_password = self._seed(upstream_url)
        _write_secret_file(key_file, api_key)
        password_file = demo_files_dir() / "demo-admin-password"
        if admin_password:
            _write_secret_file(password_file, admin_password)
        self.stdout.write(
            self.style.SUCCESS(
                f"Demo tenant 'demo' created (teams: support, analytics), with the default routing policy live, "
                f"a ${DEMO_BUDGET_USD} monthly notify budget, {DEMO_HISTORY_DAYS} days of synthetic usage, and "
                "shadow evaluation on with a quality SLO (routing agreement at least 85%)."
            )
        )
        self.stdout.write(f"API key (shown once, also written to {key_file}):\n  {api_key}")
        if admin_password:
            self.stdout.write(f"Admin login: admin / {admin_password} (also in {password_file})")

    def _seed(self, upstream_url: str) -> tuple[str, str]:
        tenant = tenant_create(slug=DEMO_SLUG, name="Demo Inc.", team_slugs=["support", "analytics"])
        provider = Provider.objects.filter(name=MOCK_PROVIDER).first() or provider_create(
            name=MOCK_PROVIDER, base_url=upstream_url
        )
        models = [self._model(provider, row) for row in MOCK_MODELS]
        embedders = [self._embedding_model(provider, MOCK_EMBEDDING_MODEL)]
        if os.environ.get("OPENAI_API_KEY"):
            openai = Provider.objects.filter(name="openai").first() or provider_create(
                name="openai", base_url="https://api.openai.com/v1", credential_env_var="OPENAI_API_KEY"
            )
            models += [self._model(openai, row) for row in OPENAI_MODELS]
            embedders.append(self._embedding_model(openai, OPENAI_EMBEDDING_MODEL))
        tenant_model_access_set(tenant=tenant, allowed_models=models + embedders, default_model=models[0])
        routing_policy_create_default(
            tenant=tenant, small_model=models[0], large_model=models[1], cache_ttl_seconds=DEMO_CACHE_TTL_SECONDS
        )
        budget_create(
            tenant=tenant,
            scope=BudgetScope.TENANT,
            period=BudgetPeriod.MONTH,
            limit_usd=DEMO_BUDGET_USD,
            action=BudgetAction.NOTIFY,
        )
        seed_demo_usage(tenant=tenant, days=DEMO_HISTORY_DAYS)
        demo_evaluation_settings(tenant=tenant)
        # Alert only: the demo shows the SLO holding, and its action would change the policy the README walks through.
        quality_slo_create(
            tenant=tenant, lever=Lever.ROUTING, min_agreement=Decimal("0.85"), min_samples=30, window_days=7
        )
        _, full_key = api_key_create(team=tenant.teams.get(slug="support"), name="demo key")
        return full_key, self._admin_user(tenant)

    def _follow_upstream(self, upstream_url: str) -> None:
        """The mock provider answers where the mock upstream runs now (MOCK_PORT may differ from the first run)."""
        provider = Provider.objects.filter(name=MOCK_PROVIDER).first()
        if provider is not None and provider.base_url != upstream_url:
            with audit_actor(name="manage.py seed_demo"):
                provider_base_url_set(provider=provider, base_url=upstream_url)
            self.stdout.write(f"The mock provider now points at {upstream_url}.")

    @staticmethod
    def _model(provider, row):
        name, upstream, input_price, cached_price, output_price = row
        return Model.objects.filter(name=name).first() or model_create(
            name=name,
            provider=provider,
            upstream_name=upstream,
            input_price_per_million=Decimal(input_price),
            cached_input_price_per_million=Decimal(cached_price),
            output_price_per_million=Decimal(output_price),
        )

    @staticmethod
    def _embedding_model(provider, row):
        name, upstream, input_price = row
        return Model.objects.filter(name=name).first() or model_create(
            name=name,
            provider=provider,
            upstream_name=upstream,
            kind=ModelKind.EMBEDDING,
            context_window=EMBEDDING_CONTEXT_WINDOW,
            input_price_per_million=Decimal(input_price),
            cached_input_price_per_million=Decimal(input_price),
            output_price_per_million=Decimal(0),
        )

    @staticmethod
    def _admin_user(tenant) -> str:
        user_model = get_user_model()
        if user_model.objects.filter(username="admin").exists():
            return ""
        password = secrets.token_urlsafe(12)
        admin = user_model.objects.create_superuser("admin", "admin@example.com", password)
        membership_set(tenant=tenant, user=admin, role=Role.OWNER)
        return password
