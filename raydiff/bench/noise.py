"""Time the noise generators (prints; nothing asserted).

    python -m raydiff.bench.noise                      # CPU, 256 px, 6 octaves
    python -m raydiff.bench.noise --device cuda --maps 96 --check

Prints ms per (image, channel) map of every kind and the simplex port's speed-up over the
opensimplex reference (numba, CPU, map by map): the port stays only if it is >= 50x faster on
the device that scores (``scripts/gpu_check.sh`` measures the same at 32x3x256x256 on a GPU).

``--check`` also prints the largest difference between the torch port on ``--device`` and the
opensimplex reference (CPU) for the same seeds (expected < 1e-5 after standardisation).
"""

from __future__ import annotations

import argparse
import time

import torch

from raydiff.config import ModelSpec
from raydiff.noise import sample_noise


#: The vectorised simplex port stays only if it is at least this much faster than opensimplex
#: (issue 15): measured on the scoring device against the reference on that machine's CPU.
KEEP_IF_FASTER = 50.0


def time_per_map(kind: str, size: int, maps: int, device: str, backend: str, repeats: int) -> float:
    """Milliseconds per (image, channel) map, best of ``repeats`` after one warm-up call."""
    cfg, shape = ModelSpec(), (maps, 1, size, size)

    def run() -> None:
        sample_noise(kind, shape, list(range(maps)), cfg, device=device, backend=backend)  # type: ignore[arg-type]
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best / maps * 1e3


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--maps", type=int, default=4, help="maps per call (batch x channels)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--check", action="store_true", help="compare with opensimplex")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    if args.check:
        shape, seeds, cfg = (2, 3, 64, 64), [1, 2], ModelSpec()
        fast = sample_noise("simplex", shape, seeds, cfg, device=args.device).cpu()
        ref = sample_noise("simplex", shape, seeds, cfg, backend="opensimplex")
        results["max_abs_diff_vs_opensimplex"] = float((fast - ref).abs().max())
        print(f"torch port on {args.device} vs opensimplex: max |diff| = {results['max_abs_diff_vs_opensimplex']:.2e}")
    runs = [("simplex", "torch"), ("gmm", "torch"), ("gaussian", "torch")]
    if args.device == "cpu":
        runs.insert(1, ("simplex", "opensimplex"))
    for kind, backend in runs:
        ms = time_per_map(kind, args.size, args.maps, args.device, backend, args.repeats)
        name = f"{kind}[{backend}]" if kind == "simplex" else kind
        results[name] = ms
        print(f"{name:22s} {args.size}px on {args.device}: {ms:8.2f} ms per map")
    if args.device != "cpu":  # the reference runs on the CPU only (numba)
        results["simplex[opensimplex]"] = time_per_map("simplex", args.size, min(args.maps, 4), "cpu", "opensimplex",
                                                       args.repeats)
        print(f"{'simplex[opensimplex]':22s} {args.size}px on cpu: {results['simplex[opensimplex]']:8.2f} ms per map")
    speedup = results["simplex[opensimplex]"] / results["simplex[torch]"]
    results["simplex_speedup"] = speedup
    verdict = "keep the port" if speedup >= KEEP_IF_FASTER else "the port does not earn its keep here"
    print(f"vectorised port vs opensimplex: {speedup:.2f}x ({verdict}; the rule: >= {KEEP_IF_FASTER:g}x on the "
          "device that scores)")
    return results


if __name__ == "__main__":
    main()
