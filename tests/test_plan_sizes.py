"""The published image counts `raydiff plan` prices training and scoring with (issue 29: VisA's and
BTAD's were missing, so their scoring was priced as 100 test images per category)."""

from __future__ import annotations

import pytest

from raydiff.plan import PUBLISHED_SIZES


@pytest.mark.parametrize(("layout", "categories", "train", "test"), [
    ("mvtec", 15, 3629, 1725),  # MVTec AD (CVPR 2019) Table 1 totals
    ("visa", 12, 8659, 2162),  # VisA 1cls split totals
    ("btad", 3, 1799, 741),  # BTAD Table 1 totals
])
def test_published_totals(layout: str, categories: int, train: int, test: int) -> None:
    _, sizes = PUBLISHED_SIZES[layout]
    assert len(sizes) == categories
    assert sum(n for n, _ in sizes.values()) == train
    assert sum(n for _, n in sizes.values()) == test
