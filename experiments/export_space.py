"""Alias of ``python -m experiments export-space``, kept for one release (the old module path)."""
import sys

from experiments.cli import main

if __name__ == "__main__":
    sys.exit(main(["export-space", *sys.argv[1:]]))
