"""Evaluation budget tasks: one service each."""

from celery import shared_task
from django.utils import timezone

from billing.evaluation.budget import evaluation_holds_release_expired


@shared_task(name="billing.evaluation.tasks.evaluation_holds_release_task")
def evaluation_holds_release_task() -> int:
    """Every minute from beat: gives back the evaluation holds a dead worker left; returns how many."""
    return evaluation_holds_release_expired(now=timezone.now())
