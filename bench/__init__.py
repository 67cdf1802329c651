"""Benchmarks of batchphone against what users would run instead (``python -m bench.run``).

See the "Benchmarks" section of docs/development.md; the last full run is in ``bench/results.md``.
"""
