"""Parallel rollouts: many independent BlueSky episodes, one per job, across worker processes.

BlueSky holds one simulation per process, and each :class:`~simulator_adapters.bluesky_sim.BlueSkySim`
already runs it in its own child process; ``fn(job)`` opens its own ``BlueSkySim``. Results come
back in job order, so a seeded rollout gives the same list sequentially, on local processes, or
on a Dask cluster.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from atc_il.errors import SimulatorError

__all__ = ["run_parallel"]


def _worker_is_daemon() -> bool:
    return mp.current_process().daemon


def run_parallel(fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int = 2, client=None) -> list:
    """Run ``fn(job)`` for every job and return the results in job order.

    ``fn`` must be a picklable top-level function (importable by the workers) that opens its own
    ``BlueSkySim``. Without ``client``: a ``ProcessPoolExecutor`` with ``workers`` processes
    started with *spawn* (a script calling this needs the ``if __name__ == "__main__":`` guard).
    With a ``distributed.Client``: ``client.map`` then ``client.gather``; process-based Dask
    workers must be started with ``distributed.worker.daemon = False``, because a daemonic
    process cannot start the BlueSky child (checked here, with a message saying so).
    An exception in a job is raised here, after the other jobs were cancelled or finished.
    """
    jobs = list(jobs)
    if not jobs:
        return []
    if client is not None:
        daemonic = [w for w, d in client.run(_worker_is_daemon).items() if d]
        if daemonic:
            raise SimulatorError(
                f"Dask workers {daemonic} are daemonic processes and cannot start BlueSky's child "
                "process: create the cluster under dask.config.set({'distributed.worker.daemon': False})")
        # pure=False: identical jobs are still run (and counted) separately
        futures = client.map(fn, jobs, pure=False)
        return client.gather(futures)
    workers = max(1, min(int(workers), len(jobs)))
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(fn, jobs))
