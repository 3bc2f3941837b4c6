"""``raydiff predict --ray``: a prediction's images scored by a Ray Data actor pool.

    driver: images loaded as the run loaded them ──from_items(index, id, image (C,S,S))──▶
        map_batches(PredictActor, pool 1..N, the config's ray.* resources)
            each actor: the category's models and fitted state, loaded once → score_batch
    ──iter_batches──▶ driver: scores and maps per image → batches in order → raydiff.predict writes

The driver keeps writing the output folder (``raydiff.predict.write_prediction``); the actors only
compute. Unlike the sweep's ``raydiff.pipeline.ScoringActor``, which reads a test set that every
node sees and writes its own Parquet parts, a prediction's images are files on the driver's
machine, and its output is one folder the driver renames into place: the images travel to the
actors as arrays (C,S,S float32, already resized) and the maps come back (S,S float32 per image
and variant). The run folder (models, fitted states) must be on storage every node sees, as for
the sweep; an actor that cannot see it fails with one line saying so.

Scores do not depend on how Ray Data batches the images: each image's noise is seeded from its
id (``raydiff.seeding``). The driver regroups them into batches of ``ray.scoring_batch_size``, so
the files are those of the in-process path.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from raydiff.config import Config
from raydiff.errors import user_error_in
from raydiff.placement import gpus_for, utc_now, where_ran, worker_device
from raydiff.predict import BatchScores, Prediction, Scored, write_prediction
from raydiff.runs import require_visible, run_probe
from raydiff.scoring import score_batch
from raydiff.scoring.fit import load_category_context


class PredictActor:
    """Holds one category's models and fitted state; scores batches of (index, image_id, image)
    rows and returns, per image and variant, its score, map and seconds, and where it ran."""

    def __init__(self, cfg: Config, category: str, variants: Sequence[str]) -> None:
        self.cfg = cfg  # pickled across by Ray as it is: validated once, by the driver's loader
        self.variants = list(variants)
        require_visible(run_probe(self.cfg), f"the predict actor on {socket.gethostname()}")
        self.device = worker_device(self.cfg)
        self.ctx = load_category_context(self.cfg, category, torch.device(self.device))

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = utc_now()
        images = torch.from_numpy(np.array(rows["image"], dtype=np.float32))  # a writable copy
        results = score_batch(self.ctx, images, [str(i) for i in rows["image_id"]], self.variants)
        n = len(rows["index"])
        out = {"index": np.asarray(rows["index"])}
        for vid, res in results.items():
            out[f"score:{vid}"] = res.scores.astype(np.float64)
            out[f"map:{vid}"] = res.maps.astype(np.float32)
            out[f"seconds:{vid}"] = np.full(n, res.seconds_per_image)
        out["placement"] = np.array([json.dumps(where_ran(self.device, started))] * n)
        return out


def score_on_ray(job: Prediction, placement: list[dict[str, Any]] | None = None) -> Iterator[Scored]:
    """Score ``job``'s images on the running Ray; yield them in batches of
    ``ray.scoring_batch_size``, in order, as each batch is complete (what
    ``raydiff.predict.write_prediction`` takes). ``placement``: gets one record per actor call.
    Resources from the config (``ray.accelerator``, ``ray.gpus_per_scoring_actor``,
    ``ray.cpus_per_scoring_actor``, ``ray.scoring_actors``)."""
    import ray  # lazy: ray only where work is distributed (importing it costs 0.5 s)

    cfg: Config = job.cfg
    batch_size = cfg.ray.scoring_batch_size
    n = len(job.images)
    items = []
    for first in range(0, n, batch_size):  # loaded on the driver: the files need not exist on the nodes
        last = min(first + batch_size, n)
        items.extend({"index": i, "image_id": job.ids[i], "image": image}
                     for i, image in zip(range(first, last), job.load(first, last), strict=True))
    n_blocks = max(1, -(-n // batch_size))
    ds = ray.data.from_items(items, override_num_blocks=n_blocks).map_batches(
        PredictActor,
        batch_size=batch_size,
        batch_format="numpy",
        fn_constructor_kwargs={"cfg": cfg, "category": job.category, "variants": job.variants},
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=cfg.ray.scoring_actors or n_blocks),
        num_gpus=gpus_for(cfg, cfg.ray.gpus_per_scoring_actor),
        num_cpus=cfg.ray.cpus_per_scoring_actor,
    )
    got: dict[int, dict[str, Any]] = {}
    next_first = 0
    try:
        for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for k, i in enumerate(out["index"]):
                got[int(i)] = {key: out[key][k] for key in out if key != "index"}
            if placement is not None:
                placement.extend(json.loads(p) for p in dict.fromkeys(str(p) for p in out["placement"]))
            while next_first < n and all(i in got for i in range(next_first, min(next_first + batch_size, n))):
                last = min(next_first + batch_size, n)
                rows = [got.pop(i) for i in range(next_first, last)]
                yield next_first, {vid: BatchScores(np.array([r[f"score:{vid}"] for r in rows]),
                                                    np.stack([r[f"map:{vid}"] for r in rows]),
                                                    np.array([r[f"seconds:{vid}"] for r in rows]))
                                   for vid in job.variants}
                next_first = last
    except Exception as err:  # not GeneratorExit: the writer closing this generator is no actor's error
        cause = user_error_in(err)  # e.g. an actor that cannot see the run folder: its one line
        if cause is not None and cause is not err:
            raise cause from None
        raise
    if next_first != n:
        raise RuntimeError(f"predict on Ray: {next_first} of {n} images came back")


def predict_on_ray(job: Prediction, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``job`` scored by actors on the running Ray (``raydiff.workflow.ray_session``) and written
    by this driver, as ``raydiff.predict.predict`` writes it; meta.json records where each batch ran."""
    placement: list[dict[str, Any]] = []
    return write_prediction(job, score_on_ray(job, placement), {"on": "ray", "placement": placement}, progress)
