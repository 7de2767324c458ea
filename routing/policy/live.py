import logging
import re

from routing.models import RoutingPolicy
from routing.policy.document import CompiledPolicy, compile_policy

logger = logging.getLogger(__name__)


def build_live_policies(*, tenant_id: int | None = None) -> dict[int, CompiledPolicy]:
    """Tenant id → its live policy, compiled once per load of the tenant's configuration; one tenant's when
    ``tenant_id`` is given."""
    rows = RoutingPolicy.objects.filter(live_version__isnull=False).select_related("live_version")
    if tenant_id is not None:
        rows = rows.filter(tenant_id=tenant_id)
    policies = {}
    for policy in rows:
        version = policy.live_version
        try:
            policies[policy.tenant_id] = compile_policy(version.document, version=version.number)
        except (re.error, KeyError, TypeError):
            # Publishing validates documents, so this is a hand-edited row; the tenant runs without a policy.
            logger.exception("live routing policy v%s of tenant %s does not compile", version.number, policy.tenant_id)
    return policies
