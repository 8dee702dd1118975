"""kafka-relay benchmarks: the seed pattern and a reused global producer against the extension.

    python -m bench [--quick] [--invocations N] [--only NAME ...]

Everything runs in the local Lambda sandbox (``devtools.sandbox``) against a local
broker behind a proxy that adds round-trip latency. Results are printed as a
table with ratios against the targets and written to ``bench/results/``.
"""
