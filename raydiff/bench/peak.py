"""The MFU reference: a large matmul's achieved FLOP/s, measured in the same run as the benchmark."""

from __future__ import annotations

import time
from typing import Any


def matmul_peak(device: str = "cpu", n: int | None = None, repeats: int = 5) -> dict[str, Any]:
    """Achieved TFLOP/s of a large square matmul: bf16 on CUDA (the MFU reference), fp32 on CPU."""
    import torch  # lazy: bench.suite imports this module at its top and stays light (`raydiff bench SUB --help`)

    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    n = n or (8192 if dev.type == "cuda" else 1024)
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        best = min(best, (time.perf_counter() - start) / 10)
    return {"dtype": str(dtype).removeprefix("torch."), "n": n, "tflops": 2 * n**3 / best / 1e12}
