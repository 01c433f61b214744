"""Benchmarks (scripts, not tests): what the package costs in time and memory. ``python -m benchmarks.<name> --help``.

- ``throughput``: training images/s and peak memory per framework and speed-up variant;
- ``search_cost``: a DARTS head-search epoch over a plain epoch of the same supernet;
- ``vs_lightly``: the same SimSiam setup in this package and in lightly, side by side;
- ``end_to_end``: wall time of the Quick start's search job (on configs/bench_digits_simsiam.yml);
- ``fair_share``: the thread policy's epoch time idle and beside busy neighbours;
- ``gpu_check``: every GPU path in one go (or ``--dry-run`` on CPU);
- ``nnictl_stop``: how ``nnictl stop`` ends a running trial (a check by hand).

Each prints a table and writes it, with the machine's description, as JSON under
``runs/benchmarks/`` (or ``--output``); the committed ones are in ``benchmarks/results/``.
Studies (experiments about the methods, not their cost) live in ``experiments/studies/``:
``python -m experiments study --help``.
"""
