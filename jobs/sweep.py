"""The full sweep, as submitted to a Ray cluster: parse → load → ``raydiff.workflow.sweep`` → print.

    # on a cluster (see docs/cluster.md); --output: storage every node sees, outliving the job
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/sweep.py --config configs/mvtec.yaml --dataset-root /mnt/data/mvtec \
        --output /mnt/shared/raydiff-out
    # any config key from the submission line (repeatable), e.g. a smaller GPU budget:
    ray job submit ... -- python jobs/sweep.py --config configs/mvtec.yaml \
        --set models.train_steps=2000 --set ray.scoring_batch_size=16
    # CPU smoke run, anywhere (the default config writes its texture data when missing):
    python jobs/sweep.py --config configs/textures.yaml --smoke-test

Takes the options of ``raydiff sweep`` (one flags-to-overrides function serves both). Trains
every missing (category, kind), fits, scores every variant, computes the metrics and writes the
report. Idempotent: a resubmitted job continues where the last one stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # --working-dir without an install

from raydiff.config import DEFAULT_CONFIG, flag_overrides, load_config  # noqa: E402
from raydiff.errors import RaydiffError  # noqa: E402
from raydiff.workflow import describe_stages, sweep  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="YAML config (default: configs/textures.yaml)")
    p.add_argument("--dataset-root", default=None, help="overrides dataset.root")
    p.add_argument("--output", default=None,
                   help="overrides output.root (absolute under `ray job submit`; shared storage on a cluster)")
    p.add_argument("--seed", type=int, default=None, help="overrides seed")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set ray.accelerator=gpu (repeatable)")
    p.add_argument("--categories", default=None, help="comma-separated; overrides dataset.categories")
    p.add_argument("--limit", type=int, default=None, help="score only N test images per category")
    p.add_argument("--overwrite", action="store_true", help="delete a run folder written by a different config")
    p.add_argument("--smoke-test", action="store_true",
                   help="tiny budget: few steps, the first category, 4 test images; checks the set-up")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        p.error(f"--limit {args.limit}: must be at least 1")
    return args


def main(args: argparse.Namespace) -> dict[str, Any]:
    overrides, origins = flag_overrides(args.dataset_root, args.output, args.categories, args.seed, args.sets,
                                        smoke_test=args.smoke_test)
    cfg = load_config(args.config.expanduser(), overrides, origins=origins)
    return sweep(cfg, limit=args.limit, overwrite=args.overwrite, smoke_test=args.smoke_test,
                 progress=lambda line: print(line, flush=True))


if __name__ == "__main__":
    try:
        result = main(parse_args())
    except RaydiffError as err:
        print(f"error: {err}", file=sys.stderr)  # one line that names the file and the fix
        sys.exit(2)
    print(result.pop("tables")["metrics"])
    for line in describe_stages(result["stages"]):
        print(line)
    print(json.dumps(result, indent=2, default=str))
