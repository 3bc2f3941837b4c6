"""The full sweep, as submitted to a Ray cluster.

    # on a cluster (see docs/cluster.md):
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/sweep.py --config configs/mvtec.yaml
    # any config key from the submission line (repeatable), e.g. a smaller GPU budget:
    ray job submit ... -- python jobs/sweep.py --config configs/mvtec.yaml \
        --set models.train_steps=2000 --set ray.scoring_batch_size=16
    # CPU smoke run, anywhere:
    python jobs/sweep.py --config configs/textures.yaml --smoke-test

Trains every missing (category, kind), fits, scores every variant, computes the metrics and
writes the report. Idempotent: a resubmitted job continues where the last one stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, type=Path, help="YAML config, e.g. configs/mvtec.yaml")
    p.add_argument("--categories", default=None, help="comma-separated subset of the config's categories")
    p.add_argument("--dataset-root", default=None, help="overrides dataset.root")
    p.add_argument("--output", default=None, help="overrides output.root (use shared storage on a cluster)")
    p.add_argument("--overwrite", action="store_true", help="delete a run folder written by a different config")
    p.add_argument("--smoke-test", action="store_true", help="tiny budget: few steps, few images, to check the set-up")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set ray.accelerator=gpu (repeatable; applied last)")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # --working-dir without an install
    from raydiff.workflow import sweep_from_args

    return sweep_from_args(
        config=args.config,
        categories=args.categories,
        dataset_root=args.dataset_root,
        output=args.output,
        smoke_test=args.smoke_test,
        overwrite=args.overwrite,
        sets=args.sets,
        progress=lambda line: print(line, flush=True),
    )


if __name__ == "__main__":
    args = parse_args()
    try:
        result = main(args)
    except Exception as err:
        from raydiff.errors import RaydiffError

        if not isinstance(err, RaydiffError):
            raise
        print(f"error: {err}", file=sys.stderr)  # one line that names the file and the fix
        sys.exit(2)
    from raydiff.workflow import describe_stages

    tables = result.pop("tables")
    print(tables["metrics"])
    for line in describe_stages(result["stages"]):
        print(line)
    print(json.dumps(result, indent=2, default=str))
