"""The jobs a user runs, one module each, every one a subcommand of ``python -m experiments``.

A job module has ``NAME`` (its subcommand), ``HELP`` (one line for ``--help``),
``add_arguments(parser)`` and ``run(args) -> int``; ``experiments.cli`` lists them.
"""
