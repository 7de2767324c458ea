"""Budget periods as windows in the tenant's time zone. The window key is part of each counter's key."""

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from billing.models import BudgetPeriod


@dataclass(frozen=True, slots=True)
class BudgetWindow:
    key: str
    start: datetime
    end: datetime


# The window each period and zone was last asked for: a request's admission and settle ask for the window holding
# their moment, which is nearly always the same one.
_latest_windows: dict[tuple[str, ZoneInfo], BudgetWindow] = {}


def budget_window(*, period: str, zone: ZoneInfo, now: datetime) -> BudgetWindow:
    """The period holding `now`: a day ("2026-11-03"), an ISO week from Monday ("2026-W45"), or a month ("2026-11")."""
    latest = _latest_windows.get((period, zone))
    if latest is not None and now.tzinfo is not None and latest.start <= now < latest.end:
        return latest
    window = _window_holding(period=period, zone=zone, now=now)
    _latest_windows[(period, zone)] = window
    return window


def _window_holding(*, period: str, zone: ZoneInfo, now: datetime) -> BudgetWindow:
    today = now.astimezone(zone).date()
    if period == BudgetPeriod.DAY:
        first, following = today, today + timedelta(days=1)
        key = today.isoformat()
    elif period == BudgetPeriod.WEEK:
        first = today - timedelta(days=today.weekday())
        following = first + timedelta(days=7)
        iso_year, iso_week, _ = today.isocalendar()
        key = f"{iso_year}-W{iso_week:02d}"
    elif period == BudgetPeriod.MONTH:
        first = today.replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
        key = f"{first:%Y-%m}"
    else:
        raise ValueError(f"unknown budget period {period!r}")
    return BudgetWindow(key=key, start=_midnight(first, zone), end=_midnight(following, zone))


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    # Through UTC, so a DST change inside the period cannot shift the boundary.
    return datetime.combine(day, time.min, tzinfo=zone).astimezone(ZoneInfo("UTC"))
