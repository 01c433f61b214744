"""Alias of ``python -m experiments screenshot``, kept for one release (the old module path)."""
import sys

from experiments.cli import main

if __name__ == "__main__":
    sys.exit(main(["screenshot", *sys.argv[1:]]))
