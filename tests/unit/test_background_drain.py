"""core.background: a graceful shutdown waits for the work left running in the background, and for the work that
work starts, up to its bound, then says how much it abandons."""

import asyncio
import logging

from core.background import background_drain, run_in_background


def test_the_drain_waits_for_work_started_by_work_in_the_background():
    written = []

    async def record() -> None:
        await asyncio.sleep(0.05)
        written.append("row")

    async def settle() -> None:
        await asyncio.sleep(0.05)
        run_in_background(record())

    async def shutdown() -> int:
        run_in_background(settle())
        return await background_drain(10)

    assert asyncio.run(shutdown()) == 0
    assert written == ["row"]


def test_the_drain_gives_up_at_its_bound_and_logs_how_many_it_abandons(caplog):
    async def shutdown() -> int:
        never = asyncio.Event()
        run_in_background(never.wait())
        run_in_background(never.wait())
        abandoned = await background_drain(0.05)
        never.set()
        await background_drain(10)
        return abandoned

    with caplog.at_level(logging.WARNING, logger="core.background"):
        assert asyncio.run(shutdown()) == 2
    assert [record.getMessage() for record in caplog.records] == [
        "shutdown: 2 background tasks still running after 0.05 s are abandoned"
    ]
