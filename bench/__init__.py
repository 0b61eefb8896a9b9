"""`make bench`: throughput, latency, fan-in, start-up, memory, scaling and control-plane figures.

Entry point: `python -m bench.run [--quick]` (see bench/run.py). Results go to bench/results/.
"""
