"""Alias of ``python -m experiments head-study``, kept for one release (the old module path)."""
import sys

from experiments.cli import main

if __name__ == "__main__":
    sys.exit(main(["head-study", *sys.argv[1:]]))
