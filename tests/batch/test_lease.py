"""A batch's lease: renewed while its runner runs, whatever one renewal meets, and its runner's own."""

import asyncio
from datetime import timedelta

import pytest
from django.db import OperationalError
from django.utils import timezone

from llmops.gateway.batches import runner
from llmops.gateway.batches.models import Batch
from llmops.gateway.batches.services import batch_lease_acquire, batch_lease_release, batch_lease_renew
from tests.batch.conftest import chat_line
from tests.batch.test_delegation_live import create


def test_a_renewal_that_fails_is_tried_again_at_the_next_beat(settings, monkeypatch):
    """Ending the renewals at the first failure (a database blip) would let the lease lapse while the lines run."""
    settings.LLMOPS_BATCH_LEASE_SECONDS = 0.03
    renewals = []

    def renew(*, batch_id: str, owner: str) -> bool:
        renewals.append(batch_id)
        if len(renewals) == 1:
            raise OperationalError("server closed the connection unexpectedly")
        return True

    monkeypatch.setattr(runner, "batch_lease_renew", renew)

    async def beats() -> bool:
        work = asyncio.create_task(asyncio.sleep(10))
        heartbeat = asyncio.create_task(runner._renew_lease("batch_1", "owner", work))
        await asyncio.sleep(0.2)
        renewing = not heartbeat.done() and not work.done()
        heartbeat.cancel()
        work.cancel()
        return renewing

    assert asyncio.run(beats())
    assert len(renewals) >= 3


def test_a_runner_whose_lease_was_taken_over_stops_its_work(settings, monkeypatch):
    """Its running lines were put back to pending by the runner that took the lease over, which runs them: going on
    would run them twice."""
    settings.LLMOPS_BATCH_LEASE_SECONDS = 0.03
    monkeypatch.setattr(runner, "batch_lease_renew", lambda *, batch_id, owner: False)

    async def beats() -> tuple[bool, bool]:
        work = asyncio.create_task(asyncio.sleep(10))
        heartbeat = asyncio.create_task(runner._renew_lease("batch_1", "owner", work))
        await asyncio.sleep(0.2)
        stopped = work.cancelled()
        heartbeat.cancel()
        return heartbeat.done(), stopped

    assert asyncio.run(beats()) == (True, True)


@pytest.mark.live
def test_a_runner_whose_lapsed_lease_was_taken_over_neither_renews_nor_releases_it(
    live_broker, files_root, openai_client
):
    batch_id = create(openai_client, [chat_line("only", "acme-small")])
    first = batch_lease_acquire(batch_id=batch_id)
    Batch.objects.unscoped().filter(pk=batch_id).update(lease_until=timezone.now() - timedelta(seconds=1))
    second = batch_lease_acquire(batch_id=batch_id)

    renewed = batch_lease_renew(batch_id=batch_id, owner=first)
    batch_lease_release(batch_id=batch_id, owner=first)

    assert first and second and first != second
    assert not renewed
    batch = Batch.objects.unscoped().get(pk=batch_id)
    assert batch.lease_owner == second and batch.lease_until > timezone.now()
    assert batch_lease_renew(batch_id=batch_id, owner=second)
    batch_lease_release(batch_id=batch_id, owner=second)
    assert Batch.objects.unscoped().get(pk=batch_id).lease_until is None
