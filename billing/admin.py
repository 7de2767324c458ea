"""Registers billing's admin: the ledger with its finance pages (billing.finance.admin), budgets, rate limits and alert
channels (billing.budgets.admin), shadow-evaluation settings (billing.evaluation.admin), quality SLOs, their alerts
and the shadow evaluations (billing.quality.admin)."""

import billing.budgets.admin
import billing.evaluation.admin
import billing.finance.admin
import billing.quality.admin  # noqa: F401
