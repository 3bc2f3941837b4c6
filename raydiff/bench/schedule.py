"""``raydiff bench schedule``: the sweep's orchestration alone, with stand-in work of known length.

    raydiff bench schedule --config configs/mvtec.yaml --gpus 4 8

On a simulated cluster of N one-GPU nodes (``ray.cluster_utils.Cluster``, all on this machine),
every piece of a sweep is a Ray task or actor that asks for one GPU and sleeps as long as that
piece would take on a real GPU (``raydiff.models.flops`` FLOPs / (peak × MFU)), time-compressed
by ``--scale`` (simulated seconds per real second):

- a training per (category, model kind): the config's training FLOPs (``training_flops``);
- a fit per category: its held-out normal images scored once with every variant;
- scoring: per image, the UNet forwards the real engine counts for the config's variant
  settings (counted here on tiny random models, since counts do not depend on the preset or the
  image size), each priced at its model kind's forward FLOPs at the config's preset and size;
  trend's gradient passes count 2 forwards more each. A scoring actor sleeps ``--actor-start-s``
  (model loading) once.

Two orchestrations of the same work, each on a fresh cluster:

- ``chains`` (raydiff's): ``raydiff.chains.run_chains`` — every training submitted at once,
  each category fitted and scored as soon as its models exist, one Ray Data pool per category
  growing from 1 actor while it has queued batches;
- ``phases`` (before): train everything, then fit everything, then score the categories one
  after another, each with a fixed pool of N actors.

Printed per N: makespans (simulated hours) against the lower bound max(total GPU work / N,
longest single chain), and their ratios. Category sizes: MVTec AD's test and train counts.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from typing import Any

from raydiff.chains import ChainStages, run_chains
from raydiff.config import load_config
from raydiff.placement import utc_now, where_ran


def forwards_per_image(cfg: Any) -> dict[str, float]:
    """Model → UNet forward-equivalents per test image of one shared pass of every enabled
    variant (trend's backward passes: 2 forwards each), counted by the real engine
    (``raydiff.plan.forward_counts``)."""
    # lazy: Ray's stand-in workers import this module, and what it imports at its top (torch, polars) would
    # add real seconds to each worker's start, times --scale in the makespans
    from raydiff.plan import forward_counts

    return forward_counts(cfg, list(cfg.variants.enabled))["shared"]


def workload(cfg: Any, sizes: dict[str, tuple[int, int]], gpu_tflops: float, mfu: float) -> dict[str, Any]:
    """GPU-seconds of every piece of the sweep of ``cfg`` over ``sizes``' categories."""
    # lazy: as in forwards_per_image
    from raydiff.data.splits import holdout_count
    from raydiff.models.flops import model_forward_flops, training_flops
    from raydiff.train.launch import training_order

    rate = gpu_tflops * 1e12 * mfu
    kinds = list(cfg.models_needed())
    train_s = {k: training_flops(cfg, k) / rate for k in kinds}
    fwd = {k: model_forward_flops(cfg, k) for k in kinds}
    counts = forwards_per_image(cfg)
    jobs = training_order(cfg, [{"category": c, "kind": k} for c in sizes for k in kinds])
    image_s = sum(counts.get(k, 0.0) * fwd[k] for k in kinds) / rate
    # The statistics' images: the held-out ones, or all training images with holdout_fraction 0.
    holdout = {c: holdout_count(n_train, cfg.dataset.holdout_fraction, cfg.dataset.holdout_min) or n_train
               for c, (n_train, _) in sizes.items()}
    return {
        "train_s": train_s, "image_s": image_s, "forwards_per_image": counts,
        "fit_s": {c: holdout[c] * image_s for c in sizes},
        "test_images": {c: n_test for c, (_, n_test) in sizes.items()},
        "batch": cfg.ray.scoring_batch_size,
        "jobs": [(j["category"], j["kind"]) for j in jobs],
    }


def lower_bound(w: dict[str, Any], gpus: int, actor_start_s: float) -> float:
    """max(total GPU work / N, the longest single chain) in simulated seconds."""
    kinds = list(w["train_s"])
    total = 0.0
    longest = 0.0
    for c, n in w["test_images"].items():
        batches = math.ceil(n / w["batch"])
        score = n * w["image_s"]
        total += sum(w["train_s"].values()) + w["fit_s"][c] + score + actor_start_s
        chain = max(w["train_s"][k] for k in kinds) + w["fit_s"][c] + actor_start_s + score / min(gpus, batches)
        longest = max(longest, chain)
    return max(total / gpus, longest)


# --------------------------------------------------------------------------------------------
# Stand-in work on a simulated cluster
# --------------------------------------------------------------------------------------------


def _sleep(seconds: float) -> dict[str, Any]:
    started = utc_now()
    time.sleep(seconds)
    return where_ran("stand-in", started)


class SleepingScorer:
    """A scoring actor's stand-in: model loading once, then a fixed time per image."""

    def __init__(self, start_s: float, image_s: float) -> None:
        time.sleep(start_s)
        self.image_s = image_s

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        time.sleep(self.image_s * len(batch["i"]))
        return {"i": batch["i"]}


def _score(category: str, n: int, batch: int, pool: tuple[int, int], start_s: float, image_s: float) -> dict[str, Any]:
    import ray  # lazy: ray only where work is distributed (importing it costs 0.5 s)

    ds = ray.data.from_items([{"i": i} for i in range(n)], override_num_blocks=math.ceil(n / batch))
    ds = ds.map_batches(SleepingScorer, batch_size=batch, fn_constructor_kwargs={"start_s": start_s, "image_s": image_s},
                        compute=ray.data.ActorPoolStrategy(min_size=pool[0], max_size=pool[1]), num_gpus=1, num_cpus=0)
    done = sum(len(b["i"]) for b in ds.iter_batches(batch_size=None))
    assert done == n, (category, done, n)
    return {"category": category, "placement": []}


def run_chains_order(w: dict[str, Any], gpus: int, scale: float, actor_start_s: float) -> float:
    import ray  # lazy: ray only where work is distributed (importing it costs 0.5 s)

    work = ray.remote(num_gpus=1, num_cpus=0)(_sleep)
    refs: dict[str, list[Any]] = {}

    def train() -> None:
        for c, k in w["jobs"]:
            refs.setdefault(c, []).append(work.remote(w["train_s"][k] / scale))
        ray.get([r for rs in refs.values() for r in rs])

    def ready(c: str) -> bool:
        rs = refs.get(c)
        return bool(rs) and len(ray.wait(rs, num_returns=len(rs), timeout=0)[0]) == len(rs)

    def score(c: str) -> dict[str, Any]:
        n = w["test_images"][c]
        return _score(c, n, w["batch"], (1, math.ceil(n / w["batch"])), actor_start_s / scale, w["image_s"] / scale)

    stages = ChainStages(train=train, ready=ready, fit=lambda c: ray.get(work.remote(w["fit_s"][c] / scale)), score=score)
    start = time.perf_counter()
    run_chains(list(w["test_images"]), stages, poll_s=0.05)
    return (time.perf_counter() - start) * scale


def run_phases_order(w: dict[str, Any], gpus: int, scale: float, actor_start_s: float) -> float:
    import ray  # lazy: ray only where work is distributed (importing it costs 0.5 s)

    work = ray.remote(num_gpus=1, num_cpus=0)(_sleep)
    start = time.perf_counter()
    ray.get([work.remote(w["train_s"][k] / scale) for _c, k in w["jobs"]])
    ray.get([work.remote(w["fit_s"][c] / scale) for c in w["test_images"]])
    for c, n in w["test_images"].items():
        _score(c, n, w["batch"], (gpus, gpus), actor_start_s / scale, w["image_s"] / scale)
    return (time.perf_counter() - start) * scale


def simulate(order: str, w: dict[str, Any], gpus: int, scale: float, actor_start_s: float) -> float:
    """Makespan (simulated seconds) of one orchestration on a fresh cluster of ``gpus`` nodes."""
    import ray  # lazy: ray only where work is distributed (importing it costs 0.5 s)
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    for _ in range(gpus):
        cluster.add_node(num_cpus=1, num_gpus=1)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        ray.data.DataContext.get_current().enable_progress_bars = False
        run = run_chains_order if order == "chains" else run_phases_order
        return run(w, gpus, scale, actor_start_s)
    finally:
        ray.shutdown()
        cluster.shutdown()


def bench_schedule(cfg: Any, gpus: Sequence[int], gpu_tflops: float, mfu: float, scale: float,
                   actor_start_s: float, sizes: dict[str, tuple[int, int]] | None = None) -> dict[str, Any]:
    from raydiff.plan import MVTEC_SIZES  # lazy: as in forwards_per_image

    w = workload(cfg, sizes or MVTEC_SIZES, gpu_tflops, mfu)
    rows = []
    for n in gpus:
        lb = lower_bound(w, n, actor_start_s)
        row: dict[str, Any] = {"gpus": n, "lower_bound_h": lb / 3600}
        for order in ("chains", "phases"):
            makespan = simulate(order, w, n, scale, actor_start_s)
            row[f"{order}_h"] = makespan / 3600
            row[f"{order}_ratio"] = makespan / lb
        rows.append(row)
    return {"workload": {k: v for k, v in w.items() if k not in ("fit_s", "jobs")}, "gpu_tflops": gpu_tflops, "mfu": mfu,
            "scale": scale, "actor_start_s": actor_start_s, "rows": rows}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="raydiff bench schedule", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/mvtec.yaml")
    p.add_argument("--gpus", type=int, nargs="+", default=[4, 8])
    p.add_argument("--gpu-tflops", type=float, default=312.0, help="dense bf16 peak (A100: 312)")
    p.add_argument("--mfu", type=float, default=0.35)
    p.add_argument("--scale", type=float, default=200.0,
                   help="simulated seconds per real second (Ray's own overheads are real seconds, times this)")
    p.add_argument("--actor-start-s", type=float, default=30.0, help="a scoring actor's model loading (simulated s)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    # The variant settings and model sizes are all that is read: no dataset needed.
    cfg = load_config(args.config, {"dataset.root": "."})
    out = bench_schedule(cfg, args.gpus, args.gpu_tflops, args.mfu, args.scale, args.actor_start_s)
    w = out["workload"]
    print(f"work: training {', '.join(f'{k} {s / 3600:.2f} GPU-h' for k, s in w['train_s'].items())} per category; "
          f"scoring {w['image_s']:.2f} GPU-s/image ({', '.join(f'{k} {n:.0f}' for k, n in w['forwards_per_image'].items())} "
          f"forwards); {args.gpu_tflops:.0f} TFLOP/s x MFU {args.mfu}")
    print(f"{'GPUs':>4} {'bound h':>8} {'chains h':>9} {'ratio':>6} {'phases h':>9} {'ratio':>6}")
    for r in out["rows"]:
        print(f"{r['gpus']:>4} {r['lower_bound_h']:>8.2f} {r['chains_h']:>9.2f} {r['chains_ratio']:>6.3f} "
              f"{r['phases_h']:>9.2f} {r['phases_ratio']:>6.3f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2, default=str)
    return out


if __name__ == "__main__":
    main()
