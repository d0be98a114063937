"""Micro-batching: requests that arrive while a forward pass runs are answered together by the next one.

A forward pass of the policy costs about the same for 1 and for 16 conflicts on a CPU (it is dominated by
fixed per-call overhead), so under load answering the waiting requests together raises throughput and cuts
the tail latency; when the service is idle a request goes straight through (no waiting window, no added
latency). Each request's answer is independent of what it is batched with (per-request sampling seeds).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import anyio


class MicroBatcher:
    """``await submit(items)``: ``fn(list)`` runs in a worker thread on everything queued (at most ``max_items``
    per call) and returns one result per item, in order."""

    def __init__(self, fn: Callable[[list], list], limiter: anyio.CapacityLimiter | None = None,
                 max_items: int = 64, on_batch: Callable[[int], None] | None = None):
        self.fn, self.limiter, self.max_items, self.on_batch = fn, limiter, max(1, int(max_items)), on_batch
        self.queue: list[tuple[object, asyncio.Future]] = []
        self.worker: asyncio.Task | None = None

    async def submit(self, items: list) -> list:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self.queue.extend(zip(items, futures))
        if self.worker is None or self.worker.done():
            self.worker = loop.create_task(self._drain())
        return list(await asyncio.gather(*futures))

    async def _drain(self) -> None:
        while self.queue:
            batch, self.queue = self.queue[:self.max_items], self.queue[self.max_items:]
            batch = [(it, f) for it, f in batch if not f.done()]     # a cancelled request is skipped
            if not batch:
                continue
            if self.on_batch:
                self.on_batch(len(batch))
            try:
                results = await anyio.to_thread.run_sync(self.fn, [it for it, _ in batch], limiter=self.limiter)
            except Exception as exc:   # noqa: BLE001  (each waiting request gets the error)
                for _, f in batch:
                    if not f.done():
                        f.set_exception(exc)
            else:
                for (_, f), r in zip(batch, results):
                    if not f.done():
                        f.set_result(r)
