"""``raydiff plan`` reads counted passes back instead of running the engine again (issue 31,
item 9): the stored counts are the engine's own, and a change to what they depend on counts anew."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from raydiff.config import DEFAULT_CONFIG, load_config
from raydiff.plan import CACHE_ENV, _counts_key, engine_forward_counts, forward_counts


def test_counts_are_the_engines_and_are_read_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    cfg = load_config(DEFAULT_CONFIG, {"dataset.root": str(tmp_path)})
    variants = ["static-gaussian", "trend", "trend-intensity"]
    reference = engine_forward_counts(cfg, variants)  # the reference: the real engine on tiny models
    assert forward_counts(cfg, variants) == reference  # counted, then stored
    assert len(list((tmp_path / "plan-counts").glob("*.json"))) == 1
    t0 = time.perf_counter()
    assert forward_counts(cfg, variants) == reference  # read back
    assert time.perf_counter() - t0 < 1.0
    # What the counts depend on changes the key.
    other = load_config(DEFAULT_CONFIG, {"dataset.root": str(tmp_path), "variants.static-gaussian.t0": 100})
    assert _counts_key(other, variants, None) != _counts_key(cfg, variants, None)
    assert _counts_key(cfg, variants, "brick") != _counts_key(cfg, variants, None)
