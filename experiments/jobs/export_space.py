"""Write a head space's own choices as an nnictl search space (one entry per label).

``python -m experiments export-space --config F [--set k=v ...] [--output FILE]`` builds the
config's ``SSLNetworkSpace`` (its framework and ``model.head_space``) and writes every label
with NNI's own ``{"_type": "choice", "_value": [...]}`` form (``Mutable.as_legacy_dict``).
A multi-trial head search (``nni_configs/heads_*.yml``) names that file as its
``searchSpaceFile``; each trial then trains the head its parameters spell
(``python -m experiments retrain --nni``). Never edit the file by hand: regenerate it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from experiments.core.errors import ConfigError
from experiments.core.validation import load_config

NAME = "export-space"
HELP = "write a head space's choices as an nnictl search space (multi-trial head search)"


def head_search_space(cfg) -> dict:
    """``{label: {"_type": "choice", "_value": [...]}}`` for every choice of the config's space."""
    from nni.mutable import Categorical

    from experiments.core.assembly import build_space

    space = {}
    for label, mutable in build_space(cfg).simplify().items():
        if not isinstance(mutable, Categorical):
            raise ConfigError(f"{label}: a {type(mutable).__name__} has no nnictl search-space form")
        space[str(label)] = mutable.as_legacy_dict()
    if not space:
        raise ConfigError(f"model.head_space: {cfg.model.head_space!r} has no choices to search")
    return space


def render(space: dict) -> str:
    return json.dumps(space, indent=2) + "\n"


def add_arguments(p) -> None:
    p.add_argument("--config", required=True, help="the SSL config the trials run (framework, head space, widths)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set model.head_space=mlp (repeatable)")
    p.add_argument("--output", help="JSON file to write (default: print it)")


def run(args) -> int:
    cfg = load_config(args.config, args.overrides)
    text = render(head_search_space(cfg))
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"written: {out} ({text.count('_type')} choices for {cfg.framework} {cfg.model.head_space} heads)")
    else:
        sys.stdout.write(text)
    return 0
