"""The benchmarks: each prints its numbers (never asserted in tests); BENCHMARKS.md records them.

``raydiff bench SUB [options]`` runs one (``raydiff/bench/cli.py``); ``python -m
raydiff.bench.SUB`` runs the same without click (the GPU device check's image has no click).

- ``engine`` / ``naive`` / ``train`` / ``metrics``: also together, ``raydiff bench`` alone
  (``suite.py``): the all-variants scoring pass, the reference scripts' way, training throughput,
  exact metrics vs sklearn;
- ``noise``: the noise generators (``noise.py``);
- ``schedule``: the sweep's orchestration with stand-in work on simulated GPU nodes (``schedule.py``).
"""
