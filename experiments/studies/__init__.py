"""The studies: experiments about the methods, each a module on one kit (``experiments.studies.kit``).

A study module has ``HELP`` (one line for ``--help``), ``add_arguments(parser)`` and ``run(args) -> int``;
its entry here names it: ``python -m experiments study NAME ...`` (installed: ``ssl-nas study NAME``).
Adding a study is one module and one entry. Every module imports only the standard library and the
kit at import time (the heavy imports wait for ``run``), so listing them costs nothing.
"""
from __future__ import annotations

import argparse
from typing import Optional

from experiments.studies import (arch_every, backbone_study, frameworks_knn, head_study, mcts_simulation, prune, ranking,
                                 ssl_ground_truth, topology, vit_ranking, vit_vs_deit, width, width_ranking)

STUDIES = {
    "head": head_study,
    "backbone": backbone_study,
    "ranking": ranking,
    "ssl-ground-truth": ssl_ground_truth,
    "width-ranking": width_ranking,
    "width": width,
    "topology": topology,
    "prune": prune,
    "arch-every": arch_every,
    "vit-ranking": vit_ranking,
    "vit-vs-deit": vit_vs_deit,
    "frameworks-knn": frameworks_knn,
    "mcts-simulation": mcts_simulation,
}


def parse_arguments(name: str, argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Study ``name``'s options parsed from ``argv`` (its defaults for the rest), as the ``study`` command parses them."""
    from experiments.studies.kit import command

    module = STUDIES[name]
    parser = argparse.ArgumentParser(prog=command(name), description=module.HELP)
    module.add_arguments(parser)
    args = parser.parse_args(argv or [])
    args.argv = list(argv or [])
    return args


def run_study(name: str, argv: Optional[list[str]] = None) -> int:
    """Parse ``argv`` as study ``name``'s options and run it (what ``python -m experiments study NAME`` does)."""
    return STUDIES[name].run(parse_arguments(name, argv))
