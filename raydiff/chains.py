"""One chain per category, every chain in flight: train → fit → score.

The runner is plain threads around four callables, so the sweep (``raydiff.workflow``: Tune
trainings, a fit task, a Ray Data pipeline) and the schedule benchmark (stand-in work of known
durations) share the same orchestration:

- the calling thread runs ``train()``, which starts every pending training at once and returns
  when all are done (their resource requests are what an autoscaler sees);
- one thread per category polls ``ready(category)`` and, as soon as its models exist, runs
  ``fit(category)`` then ``score(category)``, while other categories still train or score.

A chain whose models never become ready after ``train()`` returned fails; the other chains run
to the end first, then the first failure is raised (their finished work is kept).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ChainStages:
    """What a chain does at each stage (each call blocks until its work is done)."""

    #: Run every pending training; return when all have finished (raise on failure).
    train: Callable[[], None]
    #: Whether a category's models are all complete.
    ready: Callable[[str], bool]
    #: Fit one category; → its placement record ({} when nothing ran).
    fit: Callable[[str], dict[str, Any]]
    #: Score one category; → its summary (with a ``placement`` list).
    score: Callable[[str], dict[str, Any]]


def run_chains(categories: Sequence[str], stages: ChainStages, poll_s: float = 0.5) -> dict[str, Any]:
    """Run every category's chain; → {"scoring": [summary per category], "fits": [records]}.

    The stages report their own progress (the sweep's fit stage says when it is done)."""
    trained = threading.Event()
    fits: list[dict[str, Any]] = []

    def chain(category: str) -> dict[str, Any]:
        while not stages.ready(category):
            if trained.is_set() and not stages.ready(category):
                raise RuntimeError(f"{category}: its models did not finish training (see the training error)")
            time.sleep(poll_s)
        record = stages.fit(category)
        if record:
            fits.append(record)
        return stages.score(category)

    with ThreadPoolExecutor(max_workers=max(1, len(categories)), thread_name_prefix="chain") as pool:
        futures = {c: pool.submit(chain, c) for c in categories}
        try:
            stages.train()
        finally:
            trained.set()
        failures, summaries = [], []
        for _c, f in futures.items():
            try:
                summaries.append(f.result())
            except Exception as err:  # noqa: BLE001 - collected; the first is raised below
                failures.append(err)
    if failures:
        raise failures[0]
    return {"scoring": summaries, "fits": fits}
