"""Shared test fixtures.

``texture_models``: tiny diffusion models trained once per test session on the embedded texture
benchmark (32 px, ``brick``), trained lazily per model kind the first time a test asks for it,
so every scoring test file shares one training of each kind. Marked work: callers are
``@pytest.mark.slow`` tests (they still run in CI).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

#: Training steps per kind: the ε-only kinds train a little less (they only feed static-*).
TEXTURE_TRAIN_STEPS: dict[str, int] = {"pixel": 150, "pixel-simplex": 80, "pixel-gmm": 120, "latent": 150}


@dataclass
class TextureModels:
    """A texture dataset (``brick`` for training, ``grass`` as foreign material) and its models."""

    root: Path
    cfg: Any
    manifest: Any
    out: Path
    category: str = "brick"
    _paths: dict[str, Path] = field(default_factory=dict)

    def path(self, kind: str) -> Path:
        """Checkpoint folder of model ``kind`` for ``category`` (trained on first use)."""
        if kind not in self._paths:
            from raydiff.data.prepared import Prepared
            from raydiff.train.loop import train_one

            cfg = self.cfg.with_models(train_steps=TEXTURE_TRAIN_STEPS[kind], checkpoint_every=TEXTURE_TRAIN_STEPS[kind])
            self._paths[kind] = train_one(Prepared.of(cfg, self.manifest), self.category, kind, out_dir=self.out / kind,
                                          device="cpu", resume=False)
        return self._paths[kind]

    def model(self, kind: str) -> Any:
        from raydiff.models.checkpoint import load_model

        return load_model(self.path(kind), "cpu")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread for every test: the machines are 2 shared cores, and torch's OpenMP
    threads then only contend (10-30x slowdowns of the many small ops in these tests)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def texture_models(tmp_path_factory: pytest.TempPathFactory) -> TextureModels:
    from raydiff.config import config_from_dict
    from raydiff.data.manifest import scan_dataset
    from raydiff.data.textures import make_textures

    base = tmp_path_factory.mktemp("texture-models")
    root = make_textures(base / "data", size=32, n_train=24, n_test_good=2, n_test_defect=2,
                         categories=("brick", "grass"))
    cfg = config_from_dict({
        "dataset": {"layout": "mvtec", "root": str(root), "image_size": 32, "categories": ["brick"]},
        "models": {"preset": "tiny", "base_channels": 8, "batch_size": 8, "lr": 2e-3, "ema_decay": 0.99,
                   "vae": {"vae_train_steps": 100, "latent_channels": 2, "vae_downsample": 1},
                   "pixel": {}, "pixel-simplex": {}, "pixel-gmm": {}, "latent": {}},
        "seed": 0,
    })
    manifest = scan_dataset("mvtec", root, categories=("brick", "grass"))
    return TextureModels(root=root, cfg=cfg, manifest=manifest, out=base / "models")


@pytest.fixture
def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a test's Ray dashboard)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def token_env() -> dict[str, str]:
    """What a client process needs to talk to a local Ray of this test run: Ray 2.60 starts local
    clusters with token authentication on (token in ~/.ray/auth_token, written by ``ray.init``),
    and its CLI / drivers send the token only with ``RAY_AUTH_MODE=token``. The test's own
    process is not changed (Ray caches its auth settings at first use)."""
    return {"RAY_AUTH_MODE": "token"}
