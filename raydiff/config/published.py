"""Published numbers to show beside a run's own (docs/methods.md, Published numbers).

These are literature values copied with their sources, in percent; the report labels them as
published and never mixes them into this run's tables. Each has a ``key``: a variant instance
that reproduces the paper's own setting says so with ``reproduces: KEY`` (checked by the config
loader), and the report pairs a published row only with such instances; a setting no instance
reproduces shows no number of ours. ``pro`` is the published PRO/AUPRO, ``p_ap`` pixel AP;
``caveat`` is what to read beside that row's numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

PublishedDataset = Literal["mvtec", "visa", "btad"]


@dataclass(frozen=True)
class Published:
    key: str
    method: str
    dataset: PublishedDataset
    source: str
    i_auroc: float | None = None
    p_auroc: float | None = None
    pro: float | None = None
    p_ap: float | None = None
    seconds_per_image: float | None = None
    caveat: str = ""


_DILATED = ("their code resizes masks bilinearly and counts > 0 as anomalous (dilated ground truth); its PRO "
            "integrates about 200 thresholds; ours: nearest-neighbour masks and the exact AUPRO@0.3.")
_FUCKA = ("Tables 1-2 (the §5.4 text swaps the Gaussian and GMM I-AUROC and gives simplex 81.5; we quote the "
          "tables, whose stated averages differ from their own rows' means by up to 1.2 points overall and up to 3.6 "
          "for the texture and object sub-averages); pixel AP, not PRO; "
          "256 px centre-cropped to 224.")
_KASHIHARA = "image AUROC only; 192 px; the 'diffusion' mean stated (.91) differs from its rows' mean (.898)."

PUBLISHED: tuple[Published, ...] = (
    Published("kashihara-no-diffusion", "Kashihara no-diffusion", "mvtec", "paper Table 1 (192 px)", i_auroc=92.0,
              caveat=_KASHIHARA),
    Published("kashihara-diffusion", "Kashihara diffusion", "mvtec", "paper Table 1 (192 px)", i_auroc=91.0,
              caveat=_KASHIHARA),
    Published("fucka-gaussian", "Fučka Gaussian", "mvtec", "paper Tables 1-2", i_auroc=93.0, p_auroc=92.3, p_ap=66.2,
              caveat=_FUCKA),
    Published("fucka-simplex", "Fučka Simplex", "mvtec", "paper Tables 1-2", i_auroc=83.5, p_auroc=83.1, p_ap=42.3,
              caveat=_FUCKA),
    Published("fucka-gmm", "Fučka GMM", "mvtec", "paper Tables 1-2", i_auroc=90.4, p_auroc=88.4, p_ap=51.1,
              caveat=_FUCKA),
    Published("ddad", "DDAD", "mvtec", "arimousa/DDAD README", i_auroc=99.8, p_auroc=98.1, pro=92.3,
              caveat="raydiff has no DDAD setting (dynamic-pixel is DynAD's algorithm in pixel space); " + _DILATED),
    Published("ddad", "DDAD", "visa", "arimousa/DDAD README", i_auroc=98.9, p_auroc=97.6, pro=92.7,
              caveat="raydiff has no DDAD setting (dynamic-pixel is DynAD's algorithm in pixel space); " + _DILATED),
    Published("dynad", "DynAD", "mvtec", "paper Tables 3, 7 (no MVTec time: Table 9 measures VisA)",
              i_auroc=97.2, p_auroc=97.4, pro=93.3,
              caveat="test-set min-max normalisation (transductive); " + _DILATED),
    Published("dynad", "DynAD", "visa", "paper Tables 1, 4; time: Table 9 (Quadro RTX 8000, batch 30)",
              i_auroc=96.0, p_auroc=97.9, pro=94.1, seconds_per_image=0.34,
              caveat="test-set min-max normalisation (transductive); " + _DILATED),
    Published("dynad", "DynAD", "btad", "paper Table 2", i_auroc=95.2, pro=83.2,
              caveat="test-set min-max normalisation (transductive); " + _DILATED),
)
#: The keys a variant's ``reproduces`` may name.
PUBLISHED_KEYS: tuple[str, ...] = tuple(dict.fromkeys(p.key for p in PUBLISHED))

CAVEATS: tuple[str, ...] = (
    "Published means are over all categories of the dataset (MVTec AD: 15, VisA: 12, BTAD: 3); ours are over "
    "the categories in this run, as the 'ours' column says.",
    "A published row is paired only with this run's variants that reproduce that paper's own setting "
    "(`reproduces:` in the config, e.g. configs/mvtec-papers.yaml); a same-model comparison "
    "(configs/mvtec.yaml) reproduces none, so its rows show no number of ours.",
    "Our AUPRO is the MVTec reference AUPRO@0.3 (FPR over all normal pixels, divided by 0.3); anomalib's older "
    "AUPRO divides by the curve's own end and can exceed 1, so published PRO values may differ in definition.",
    "Image resolution, model width and training length may differ from the papers; see config.yaml of this run "
    "and the caveat beside each row.",
    "DynAD's 0.34 s per image was measured on an RTX 8000; our seconds per image are measured in this run on "
    "its own hardware.",
)


def published_dataset(name: str) -> PublishedDataset | None:
    """"mvtec" / "visa" / "btad" when a dataset name denotes MVTec AD / VisA / BTAD (e.g. "MVTec-AD"),
    else None."""
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    if key in ("mvtec", "mvtecad"):
        return "mvtec"
    if key in ("visa", "btad"):
        return key  # type: ignore[return-value]
    return None
