"""The scheduler's jobs: periodic, never overlapping, early on request, contained failures,
and a stop that waits for the poll in progress."""

from __future__ import annotations

import asyncio
import logging

import pytest

from poller.jobs import PollJobs


def test_jobs_run_contain_failures_and_stop_waits_for_the_poll_in_progress(
        caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> tuple[int, bool]:
        jobs = PollJobs()
        calls = 0
        entered, release = asyncio.Event(), asyncio.Event()
        finished = False

        async def job() -> None:
            nonlocal calls, finished
            calls += 1
            if calls == 1:
                raise RuntimeError("one bad poll")
            entered.set()
            await release.wait()
            finished = True

        jobs.add("cx", job, 0.05)
        jobs.start()
        await asyncio.wait_for(entered.wait(), 10)
        jobs.poll_soon("cx")  # a poll is under way: its answer will do
        stopping = asyncio.create_task(jobs.stop())
        await asyncio.sleep(0)
        assert not stopping.done()  # waiting for the poll in progress
        release.set()
        await stopping
        return calls, finished

    caplog.set_level(logging.ERROR)
    calls, finished = asyncio.run(run())
    assert calls == 2 and finished  # max_instances=1: never two at once
    assert "cx: poll failed unexpectedly" in caplog.text


def test_poll_soon_runs_an_idle_job_now_and_remove_stops_it() -> None:
    async def run() -> int:
        jobs = PollJobs()
        ran = asyncio.Event()
        count = 0

        async def job() -> None:
            nonlocal count
            count += 1
            ran.set()

        jobs.add("cx", job, 3600.0)  # would first run within a second (jitter), then hourly
        jobs.start()
        await asyncio.wait_for(ran.wait(), 10)
        ran.clear()
        jobs.poll_soon("cx")
        await asyncio.wait_for(ran.wait(), 10)
        await jobs.remove("cx")
        jobs.poll_soon("cx")  # no job any more: nothing happens
        await jobs.stop()
        return count

    assert asyncio.run(run()) == 2
