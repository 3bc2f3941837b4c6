"""Training: the in-process loop (loop.py), the Ray launcher (launch.py), the benchmark (bench.py)."""
