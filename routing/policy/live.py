import logging

from routing.models import RoutingPolicy
from routing.policy.document import CompiledPolicy, RegexError, compile_policy

logger = logging.getLogger(__name__)


def build_live_policies(*, tenant_id: int) -> dict[int, CompiledPolicy]:
    """Tenant id → its live policy (none before its first publish), compiled once per load of its configuration."""
    rows = RoutingPolicy.objects.for_tenant(tenant_id).filter(live_version__isnull=False).select_related("live_version")
    policies = {}
    for policy in rows:
        version = policy.live_version
        try:
            policies[policy.tenant_id] = compile_policy(version.document, version=version.number)
        except (RegexError, KeyError, TypeError):
            # Publishing validates documents, so this is a hand-edited row; the tenant runs without a policy.
            logger.exception("live routing policy v%s of tenant %s does not compile", version.number, policy.tenant_id)
    return policies
