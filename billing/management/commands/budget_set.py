from decimal import Decimal, InvalidOperation

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from billing.budgets.selectors import budget_status
from billing.budgets.services import budget_set
from billing.ledger.costs import format_cost
from billing.models import BudgetAction, BudgetPeriod
from tenants.models import ApiKey, Team
from tenants.selectors import tenant_by_slug


class Command(BaseCommand):
    help = (
        "Create or change the budget of a tenant, one of its teams, one key, one served model, or each (or one) end "
        "customer, for a period "
        "in the tenant's time zone; prints the budget and what it has spent this period."
    )

    def add_arguments(self, parser):
        parser.add_argument("--tenant", dest="tenant_slug", required=True, metavar="SLUG")
        target = parser.add_mutually_exclusive_group()
        target.add_argument("--team", dest="team_slug", metavar="SLUG")
        target.add_argument("--key", dest="key_prefix", metavar="PREFIX")
        target.add_argument("--model", dest="model_name", metavar="NAME", help="A tenant+model budget.")
        target.add_argument(
            "--each-customer", action="store_true", help="Hold each end customer of the tenant to the limit on its own."
        )
        target.add_argument("--customer", metavar="ID", help="One end customer's own limit, instead of the default.")
        parser.add_argument("--period", required=True, choices=BudgetPeriod.values)
        parser.add_argument("--limit-usd", required=True, metavar="N")
        parser.add_argument("--action", choices=BudgetAction.values, help="Default for a new budget: block.")
        parser.add_argument("--thresholds", metavar="50,80,100", help="Alert percentages; default 50,80,100.")

    def handle(
        self, *args, tenant_slug, team_slug, key_prefix, model_name, each_customer, customer, period, limit_usd,
        action, thresholds, **options,
    ):  # fmt: skip
        tenant = tenant_by_slug(slug=tenant_slug)
        if tenant is None:
            raise CommandError(f"no tenant with slug '{tenant_slug}'")
        team = api_key = None
        if team_slug:
            team = Team.objects.for_tenant(tenant).filter(slug=team_slug).first()
            if team is None:
                raise CommandError(f"tenant '{tenant.slug}' has no team '{team_slug}'")
        if key_prefix:
            api_key = ApiKey.objects.for_tenant(tenant).filter(prefix=key_prefix).first()
            if api_key is None:
                raise CommandError(f"tenant '{tenant.slug}' has no key with prefix '{key_prefix}'")
        try:
            limit = Decimal(limit_usd)
        except InvalidOperation:
            raise CommandError(f"--limit-usd '{limit_usd}' is not a number") from None
        try:
            percentages = [int(value) for value in thresholds.split(",")] if thresholds else None
        except ValueError:
            raise CommandError(f"--thresholds '{thresholds}' must be whole percentages like 50,80,100") from None
        try:
            budget, created = budget_set(
                tenant=tenant,
                team=team,
                api_key=api_key,
                model_name=model_name or "",
                per_customer=each_customer,
                customer=customer or "",
                period=period,
                limit_usd=limit,
                action=action,
                thresholds=percentages,
            )
        except ValidationError as error:
            messages = "; ".join(f"{field}: {' '.join(texts)}" for field, texts in error.message_dict.items())
            raise CommandError(messages) from None
        self.stdout.write(
            f"{'Created' if created else 'Updated'} budget {budget.pk}: {tenant.slug} {budget.target_label()}, "
            f"{budget.period} limit ${format_cost(budget.limit_usd)}, action {budget.action}, "
            f"thresholds {','.join(map(str, budget.thresholds))}%"
        )
        if budget.holds_each_customer:
            self.stdout.write("Each customer is held to it on its own; group usage by customer to see their spend.")
            return
        current = budget_status(budget=budget, now=timezone.now())
        self.stdout.write(
            f"Period {current.window.key} ({tenant.time_zone}, until {current.window.end.isoformat()}): "
            f"spent ${format_cost(current.spent_usd)}, reserved ${format_cost(current.reserved_usd)} "
            f"by requests in flight, remaining ${format_cost(current.remaining_usd)}"
        )
