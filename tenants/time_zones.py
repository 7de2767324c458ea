"""A tenant's time zone: which names it may be set to, and how a stored one is read.

A tenant's days (budget periods, usage reports, rollups, statements) are counted in its time zone. A name is checked
when it is set (`validate_time_zone`, the model field's validator). A name stored before that check, or written past
it by `.update()`, is read as UTC (`tenant_zone_or_utc`), so one tenant's bad zone never stops a job that covers
every tenant, such as the usage rollups every dashboard refreshes.
"""

import logging
from functools import cache
from zoneinfo import ZoneInfo, available_timezones

from django.core.exceptions import ValidationError

logger = logging.getLogger(__name__)


@cache
def _known_time_zones() -> frozenset[str]:
    # Walks the zoneinfo database (tens of milliseconds): once per process.
    return frozenset(available_timezones())


def is_known_time_zone(name: str) -> bool:
    """Whether zoneinfo knows the zone by this name. Membership rather than trying ZoneInfo(name): that also opens
    files that are not zones ("zone.tab") and directories ("Europe"), raising errors no caller expects."""
    return name in _known_time_zones()


def validate_time_zone(value: str) -> None:
    if not is_known_time_zone(value):
        raise ValidationError(
            "“%(value)s” is not a time zone. Use an IANA name, like Europe/London, America/New_York or UTC.",
            code="unknown_time_zone",
            params={"value": value},
        )


def tenant_zone_or_utc(time_zone: str) -> ZoneInfo:
    """The zone named by a tenant's stored `time_zone`; UTC, with a warning, for a name zoneinfo does not know."""
    if is_known_time_zone(time_zone):
        return ZoneInfo(time_zone)
    logger.warning("unknown tenant time zone %r; the tenant's days are counted in UTC", time_zone)
    return ZoneInfo("UTC")
