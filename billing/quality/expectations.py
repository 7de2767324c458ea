"""The expected change in answer quality when a policy change moves requests from one model to another: the
what-if's quality column (billing.finance.whatif), from the routing lever's shadow results.

Quality here is the share of answers that agree with the reference's, the reference being what shadow evaluation
compares a routed answer with: the large model of the alias the request named (under the live policy or the draft),
or the model it named. A request served by its own reference agrees by definition (1); one served by another alias's
large model does not, and is estimated like any other model.
A request served by another model agrees as its shadow results say, looked up from the most specific evidence
there is: its rule's evaluations on that model for its task type (when there are at least FINEST_MIN_SAMPLES), else
its rule's on that model, else the model's on the request's task type, else the model's on any task. A moved
request's expected change is its agreement after minus before; its range takes the before interval's upper bound
from the after interval's lower bound, and the other way round.
"""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal

from billing.models import Lever
from billing.quality.selectors import RATE_PLACES, Agreement, agreement_by, rule_of_route
from routing.policy.document import CompiledPolicy

ONE = Decimal(1)
# Below this many, one rule's evaluations of one task type are too few to prefer over the rule's on every task type.
FINEST_MIN_SAMPLES = 20


@dataclass(frozen=True, slots=True)
class Move:
    """Requests a policy change serves with another model: where they were (live) and where they go (draft), and
    their references (request_references)."""

    live_rule: str
    live_model: str
    draft_rule: str
    draft_model: str
    task_type: str
    references: frozenset[str] = frozenset()


def request_references(requested_model: str, *policies: CompiledPolicy | None) -> frozenset[str]:
    """The models a request's answers are judged against: its alias's large model under each policy that has the
    alias, or the model it named."""
    larges = {
        policy.aliases[requested_model].large_model
        for policy in policies
        if policy is not None and requested_model in policy.aliases
    }
    return frozenset(larges or {requested_model})


@dataclass(frozen=True, slots=True)
class Estimate:
    """How far one model's answers agree with the reference's, and on what evidence; None rates when unknown."""

    rate: Decimal | None
    lower: Decimal | None
    upper: Decimal | None
    basis: str

    @classmethod
    def reference(cls, model: str) -> "Estimate":
        return cls(ONE, ONE, ONE, f"{model} is the reference (agreement 1 by definition)")

    @classmethod
    def of(cls, agreement: Agreement, basis: str) -> "Estimate":
        return cls(agreement.rate, agreement.lower, agreement.upper, f"{basis}: {agreement.describe()}")

    @property
    def known(self) -> bool:
        return self.rate is not None


@dataclass(slots=True)
class QualityChange:
    """Moved requests' agreement with the reference before and after, weighted by their counts."""

    moved: int = 0  # requests the draft serves with another model
    estimated: int = 0  # of those, with an estimate on both sides
    before: Decimal = Decimal(0)  # sums of count x rate, divided out by the properties below
    before_lower: Decimal = Decimal(0)
    before_upper: Decimal = Decimal(0)
    after: Decimal = Decimal(0)
    after_lower: Decimal = Decimal(0)
    after_upper: Decimal = Decimal(0)
    basis: set[str] = field(default_factory=set)

    def add(self, requests: int, before: Estimate, after: Estimate) -> None:
        self.moved += requests
        if not (before.known and after.known):
            return
        self.estimated += requests
        self.before += requests * before.rate
        self.before_lower += requests * before.lower
        self.before_upper += requests * before.upper
        self.after += requests * after.rate
        self.after_lower += requests * after.lower
        self.after_upper += requests * after.upper
        self.basis |= {before.basis, after.basis}

    @property
    def sources(self) -> list[str]:
        """The shadow results the estimates rest on, each with its agreement, interval and count."""
        return sorted(self.basis)

    def _share(self, total: Decimal) -> Decimal | None:
        if not self.estimated:
            return None
        return (total / self.estimated).quantize(RATE_PLACES, rounding=ROUND_HALF_EVEN)

    @property
    def agreement_before(self) -> Decimal | None:
        return self._share(self.before)

    @property
    def agreement_after(self) -> Decimal | None:
        return self._share(self.after)

    @property
    def change(self) -> Decimal | None:
        """After minus before, as a share of the estimated moved requests' answers."""
        return self._share(self.after - self.before)

    @property
    def change_range(self) -> tuple[Decimal, Decimal] | None:
        if not self.estimated:
            return None
        return self._share(self.after_lower - self.before_upper), self._share(self.after_upper - self.before_lower)

    def describe(self) -> str:
        """One line for a table's quality column."""
        if not self.moved:
            return "same model: no change"
        if not self.estimated:
            return f"no shadow results ({_requests(self.moved)} changing model)"
        low, high = self.change_range
        text = (
            f"{_points(self.change)} pts ({_points(low)} to {_points(high)}): {_percent(self.agreement_before)} -> "
            f"{_percent(self.agreement_after)} agree with the large model, on {_requests(self.estimated)} moved"
        )
        if self.estimated < self.moved:
            text += f"; {_requests(self.moved - self.estimated)} more without shadow results"
        return text

    def as_json(self) -> dict | None:
        if not self.moved:
            return None
        low, high = self.change_range or (None, None)
        text = lambda value: None if value is None else f"{value:f}"  # noqa: E731
        return {
            "moved_requests": self.moved,
            "with_shadow_results": self.estimated,
            "agreement_before": text(self.agreement_before),
            "agreement_after": text(self.agreement_after),
            "change": text(self.change),
            "change_low": text(low),
            "change_high": text(high),
            "basis": self.sources,
        }


def _requests(count: int) -> str:
    return f"{count:,} request{'' if count == 1 else 's'}"


def _points(share: Decimal) -> str:
    return f"{share * 100:+.1f}"


def _percent(share: Decimal) -> str:
    return f"{share * 100:.1f}%"


class RoutingEvidence:
    """The routing lever's shadow results of a tenant in a window, summed by rule and model, model and task type,
    and model (one query)."""

    def __init__(self, *, tenant_id: int, start: datetime, end: datetime):
        self.by_rule_task: dict[tuple[str, str, str], Agreement] = defaultdict(lambda: Agreement(0, 0))
        self.by_rule: dict[tuple[str, str], Agreement] = defaultdict(lambda: Agreement(0, 0))
        self.by_task: dict[tuple[str, str], Agreement] = defaultdict(lambda: Agreement(0, 0))
        self.by_model: dict[str, Agreement] = defaultdict(lambda: Agreement(0, 0))
        groups = agreement_by(
            tenant_id=tenant_id,
            start=start,
            end=end,
            lever=Lever.ROUTING,
            group_by=("rule", "served_model", "task_type"),
        )
        for row in groups:
            model, rule = row.group["served_model"], rule_of_route(row.group["rule"])
            self.by_rule_task[(rule, model, row.group["task_type"])] += row
            self.by_rule[(rule, model)] += row
            self.by_task[(model, row.group["task_type"])] += row
            self.by_model[model] += row

    def estimate(self, *, rule: str, model: str, task_type: str, references: frozenset[str]) -> Estimate:
        """How far `model`'s answers to requests whose references are `references` agree with them."""
        if model in references:
            return Estimate.reference(model)
        finest = self.by_rule_task.get((rule, model, task_type))
        if finest is not None and finest.samples >= FINEST_MIN_SAMPLES:
            return Estimate.of(finest, f"rule {rule or '(none)'} on {model}, task type {task_type or '(none)'}")
        for agreement, basis in (
            (self.by_rule.get((rule, model)), f"rule {rule or '(none)'} on {model}"),
            (self.by_task.get((model, task_type)), f"{model} on task type {task_type or '(none)'}"),
            (self.by_model.get(model), f"{model} on any task"),
        ):
            if agreement is not None and agreement.samples:
                return Estimate.of(agreement, basis)
        return Estimate(None, None, None, f"no shadow results for {model}")


@dataclass
class ExpectedQuality:
    by_live_rule: dict[str, QualityChange]
    by_draft_rule: dict[str, QualityChange]
    total: QualityChange

    def of_rule(self, rule: str) -> QualityChange:
        """A rule's line: its live requests the draft moves, and the requests the draft moves into it from others."""
        line = QualityChange()
        for change in (self.by_live_rule.get(rule), self.by_draft_rule.get(rule)):
            if change is not None:
                for name in ("moved", "estimated", *_SUMS):
                    setattr(line, name, getattr(line, name) + getattr(change, name))
                line.basis |= change.basis
        return line


_SUMS = ("before", "before_lower", "before_upper", "after", "after_lower", "after_upper")


def expected_quality(*, moves: dict[Move, int], evidence: RoutingEvidence) -> ExpectedQuality:
    by_live: dict[str, QualityChange] = defaultdict(QualityChange)
    # Moves into a rule from another: a move within one rule is counted on its live line only.
    by_draft: dict[str, QualityChange] = defaultdict(QualityChange)
    total = QualityChange()
    for move, requests in moves.items():
        before = evidence.estimate(
            rule=move.live_rule, model=move.live_model, task_type=move.task_type, references=move.references
        )
        after = evidence.estimate(
            rule=move.draft_rule, model=move.draft_model, task_type=move.task_type, references=move.references
        )
        by_live[move.live_rule].add(requests, before, after)
        if move.draft_rule != move.live_rule:
            by_draft[move.draft_rule].add(requests, before, after)
        total.add(requests, before, after)
    return ExpectedQuality(by_live_rule=dict(by_live), by_draft_rule=dict(by_draft), total=total)
