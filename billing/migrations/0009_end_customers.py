"""End customers (issue #19): the ledger's customer column, customer-scope budgets and rate limits (with per-customer
overrides), counters and alerts that name the customer, and the hourly customer rollups.

The ledger's column has a database default too, so a gateway or drainer of the previous release can go on inserting
rows while the new one rolls out. Its index is built in 0010, concurrently. Existing rate limits get the scope their
target says.
"""

import django.db.models.deletion
from django.db import migrations, models


def rate_limit_scopes_set(apps, schema_editor):
    apps.get_model("billing", "RateLimit").objects.filter(team__isnull=False).update(scope="team")


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0008_provider_cache_savings"),
        ("routing", "0012_model_prices_checked_at"),
        ("tenants", "0003_tenant_max_inflight_requests"),
    ]

    operations = [
        migrations.CreateModel(
            name="UsageCustomerRollupHourly",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("bucket_start", models.DateTimeField(help_text="Start of the UTC hour.")),
                ("customer", models.CharField(max_length=256)),
                ("requests", models.PositiveIntegerField(default=0)),
                ("prompt_tokens", models.BigIntegerField(default=0)),
                ("completion_tokens", models.BigIntegerField(default=0)),
                ("cost_usd", models.DecimalField(decimal_places=10, default=0, max_digits=20)),
            ],
        ),
        migrations.RemoveConstraint(
            model_name="budgetcounter",
            name="budget_counter_unique_period",
        ),
        migrations.RemoveConstraint(
            model_name="ratelimit",
            name="rate_limit_one_target",
        ),
        migrations.AddField(
            model_name="budget",
            name="customer",
            field=models.CharField(
                blank=True,
                help_text="Customer scope only: empty holds every customer to this limit each; a customer id makes this that customer's limit instead of the default of the same period.",
                max_length=256,
            ),
        ),
        migrations.AddField(
            model_name="budgetalert",
            name="customer",
            field=models.CharField(blank=True, default="", max_length=256),
        ),
        migrations.AddField(
            model_name="budgetcounter",
            name="customer",
            field=models.CharField(
                blank=True, default="", help_text="Customer scope: whose spend this counts.", max_length=256
            ),
        ),
        migrations.AddField(
            model_name="ratelimit",
            name="customer",
            field=models.CharField(
                blank=True,
                help_text="Customer scope only: empty holds every customer to this limit each; a customer id makes this that customer's limit instead.",
                max_length=256,
            ),
        ),
        migrations.AddField(
            model_name="ratelimit",
            name="scope",
            field=models.CharField(
                choices=[
                    ("key", "One API key"),
                    ("team", "One team"),
                    ("customer", "Each end customer, held to its own limit"),
                ],
                default="key",
                max_length=16,
            ),
        ),
        migrations.AddField(
            model_name="usagerecord",
            name="customer",
            field=models.CharField(
                blank=True,
                db_default="",
                default="",
                help_text="The tenant's end customer: the x-llmops-customer header, else the request's OpenAI `user` field; empty for none.",
                max_length=256,
            ),
        ),
        migrations.AlterField(
            model_name="budget",
            name="scope",
            field=models.CharField(
                choices=[
                    ("tenant", "Whole tenant"),
                    ("team", "One team"),
                    ("key", "One API key"),
                    ("tenant_model", "One served model across the tenant"),
                    ("customer", "Each end customer, held to its own limit"),
                ],
                default="tenant",
                max_length=16,
            ),
        ),
        migrations.RunPython(rate_limit_scopes_set, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="budgetcounter",
            constraint=models.UniqueConstraint(
                fields=("budget", "customer", "period_key"), name="budget_counter_unique_period"
            ),
        ),
        migrations.AddConstraint(
            model_name="ratelimit",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(("api_key__isnull", False), ("customer", ""), ("scope", "key"), ("team__isnull", True)),
                    models.Q(("api_key__isnull", True), ("customer", ""), ("scope", "team"), ("team__isnull", False)),
                    models.Q(("api_key__isnull", True), ("scope", "customer"), ("team__isnull", True)),
                    _connector="OR",
                ),
                name="rate_limit_one_target",
            ),
        ),
        migrations.AddConstraint(
            model_name="ratelimit",
            constraint=models.UniqueConstraint(
                condition=models.Q(("scope", "customer")),
                fields=("tenant", "customer"),
                name="rate_limit_unique_customer",
            ),
        ),
        migrations.AddField(
            model_name="usagecustomerrolluphourly",
            name="team",
            field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="+", to="tenants.team"),
        ),
        migrations.AddField(
            model_name="usagecustomerrolluphourly",
            name="tenant",
            field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="+", to="tenants.tenant"),
        ),
        migrations.AddConstraint(
            model_name="usagecustomerrolluphourly",
            constraint=models.UniqueConstraint(
                fields=("tenant", "bucket_start", "team", "customer"), name="usage_customer_rollup_unique"
            ),
        ),
    ]
