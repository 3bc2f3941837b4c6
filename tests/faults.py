"""Fault injection for the reliability tests, kept out of the production classes.

The classes are built inside functions so that Ray's cloudpickle ships them by value: a Ray
worker cannot import this test module, but it can unpickle a class defined in a function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def dying_scoring_actor(after_batches: int, flag: Path) -> type:
    """A ScoringActor that exits hard (``os._exit``) in batch ``after_batches + 1``, once per test
    run, after it wrote that batch's Parquet parts and before it reports them (the worst moment:
    the retried batch must replace those parts, not add to them). ``flag`` is created when it
    dies; its existence disarms every later actor."""
    from raydiff.pipeline import ScoringActor

    flag_path = str(flag)

    class DyingScoringActor(ScoringActor):
        def __call__(self, rows: dict[str, Any]) -> dict[str, Any]:
            import os

            self.seen = getattr(self, "seen", 0) + 1
            out = super().__call__(rows)
            if self.seen > after_batches and not Path(flag_path).exists():
                Path(flag_path).write_text("killed")
                os._exit(1)
            return out

    return DyingScoringActor


def fail_once_after_checkpoint(flag: Path) -> Any:
    """A training ``on_checkpoint`` hook that raises once, right after the first checkpoint
    report, to exercise ``FailureConfig`` restarts; ``flag`` (visible to the workers) records it."""
    flag_path = str(flag)

    def hook(folder: Path, step: int, metrics: dict[str, float]) -> None:
        if not Path(flag_path).exists():
            Path(flag_path).write_text(f"failed after the checkpoint at step {step}\n")
            raise RuntimeError(f"injected failure after the checkpoint at step {step} ({folder})")

    return hook
