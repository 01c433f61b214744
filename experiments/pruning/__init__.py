"""Filter pruning of a trained backbone: DAGGER's weight-driven gates and NNI's pruners as baselines."""
