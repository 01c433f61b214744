"""Benchmarks (scripts, not tests): ``python -m benchmarks.<name> --help``.

- ``throughput``: training images/s and peak memory per framework and speed-up variant;
- ``search_cost``: a DARTS head-search epoch over a plain epoch of the same supernet;
- ``vs_lightly``: the same SimSiam setup in this package and in lightly, side by side;
- ``end_to_end``: wall time of the Quick start's search job (on configs/bench_digits_simsiam.yml).

Each prints a table and writes it, with the machine's description, as JSON under
``runs/benchmarks/`` (or ``--output``).
"""
