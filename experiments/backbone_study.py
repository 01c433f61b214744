"""Alias of ``python -m experiments backbone-study``, kept for one release (the old module path)."""
import sys

from experiments.cli import main

if __name__ == "__main__":
    sys.exit(main(["backbone-study", *sys.argv[1:]]))
