"""Published numbers to show beside a run's own (the table at the end of METHODS.md).

These are literature values copied with their sources, in percent; the report labels them as
published and never mixes them into this run's tables. ``variant`` is the raydiff variant that
implements (or is closest to) the method; ``pro`` is the published PRO/AUPRO, ``p_ap`` pixel AP.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

PublishedDataset = Literal["mvtec", "visa"]


@dataclass(frozen=True)
class Published:
    method: str
    dataset: PublishedDataset
    variant: str | None
    source: str
    i_auroc: float | None = None
    p_auroc: float | None = None
    pro: float | None = None
    p_ap: float | None = None
    seconds_per_image: float | None = None


PUBLISHED: tuple[Published, ...] = (
    Published("Kashihara no-diffusion", "mvtec", "no-diffusion", "paper Table 1 (192 px)", i_auroc=92.0),
    Published("Fučka Gaussian", "mvtec", "static-gaussian", "paper Tables 1-2", i_auroc=93.0, p_auroc=92.3, p_ap=66.2),
    Published("Fučka Simplex", "mvtec", "static-simplex", "paper Tables 1-2", i_auroc=83.5, p_auroc=83.1, p_ap=42.3),
    Published("Fučka GMM", "mvtec", "static-gmm", "paper Tables 1-2", i_auroc=90.4, p_auroc=88.4, p_ap=51.1),
    Published("DDAD", "mvtec", "dynamic-pixel", "arimousa/DDAD README", i_auroc=99.8, p_auroc=98.1, pro=92.3),
    Published("DDAD", "visa", "dynamic-pixel", "arimousa/DDAD README", i_auroc=98.9, p_auroc=97.6, pro=92.7),
    Published(
        "DynAD", "mvtec", "dynamic", "paper Tables 1, 3; time: Table 9 (RTX 8000)",
        i_auroc=97.2, p_auroc=97.4, pro=93.3, seconds_per_image=0.34,
    ),
    Published(
        "DynAD", "visa", "dynamic", "paper Tables 1, 3; time: Table 9 (RTX 8000)",
        i_auroc=96.0, p_auroc=97.9, pro=94.1, seconds_per_image=0.34,
    ),
)

CAVEATS: tuple[str, ...] = (
    "Published means are over all categories of the dataset (MVTec AD: 15, VisA: 12); ours are over the "
    "categories in this run, as stated in the 'ours: variant' column.",
    "Fučka et al. report pixel AP, not PRO; it is compared with our P-AP (step-wise average precision).",
    "Ground truth: we resize masks with nearest neighbour; the DDAD/DynAD code resizes bilinearly and counts "
    "> 0 as anomalous, which dilates the ground truth, so their P-AUROC and PRO are not on the same masks.",
    "DynAD's reference code min-max-normalises each map over the whole test set (transductive); we normalise "
    "with held-out normal training images, so a score depends on its image alone.",
    "Our AUPRO is the MVTec reference AUPRO@0.3 (FPR over all normal pixels, divided by 0.3); anomalib's older "
    "AUPRO divides by the curve's own end and can exceed 1, so published PRO values may differ in definition.",
    "DDAD has no exact variant here: dynamic-pixel (DynAD's algorithm in pixel space, with DDAD's guidance) is "
    "the closest.",
    "Image resolution, model width and training length differ from the papers (Kashihara: 192 px); see "
    "config.yaml of this run.",
    "DynAD's 0.34 s per image was measured on an RTX 8000; our seconds per image are measured in this run on "
    "its own hardware.",
)


def published_dataset(name: str) -> PublishedDataset | None:
    """"mvtec" / "visa" when a dataset name denotes MVTec AD / VisA (e.g. "MVTec-AD"), else None."""
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    if key in ("mvtec", "mvtecad"):
        return "mvtec"
    if key == "visa":
        return "visa"
    return None
