"""What the ranking studies share: NAS-Bench-Macro's networks trained alone, and ranked without labels.

The SSL ground truth trains each network alone (``retrain_alone``, with one budget per dataset and
``config_for`` its config); the ranking and width-ranking studies judge supernets against such
truths beside the rankers that see no label and train nothing (``label_free_scores``).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

LEARNING_RATES = {"supervised": 0.1, "simsiam": 0.06, "simclr": 0.3, "byol": 0.06, "moco": 0.06}
ZERO_COST_BATCH = 16  # NASWOT's images per network

# One budget per dataset, the same for every network, objective and seed. digits: scikit-learn's
# 8x8 digits in full (1,442 train / 355 test), about 8 CPU-seconds a run on one thread.
BUDGETS = {
    "digits": {"dataset": "digits", "train_images": 1442, "test_images": 355, "image_size": 8, "epochs": 5,
               "width": 0.25, "head_width": 0.25, "batch_size": 128, "knn_k": 20, "linear_epochs": 100},
    "cifar10": {"dataset": "cifar10", "train_images": 2000, "test_images": 500, "image_size": 32, "epochs": 3,
                "width": 0.25, "head_width": 0.25, "batch_size": 128, "knn_k": 20, "linear_epochs": 100},
}
# Grey digits: saturation, hue and greyscale do nothing but cost time (configs/study_digits.yml).
DIGITS_AUGMENT = {"augment.jitter": [0.4, 0.4, 0.0, 0.0], "augment.grayscale_p": 0.0}


def layer_count(key: str) -> int:
    """Non-identity layers of a NAS-Bench-Macro key (digit 0 is identity)."""
    return sum(digit != "0" for digit in key)


def label_free_scores(keys: list[str], table, width: float, seed: int) -> dict[str, list[float]]:
    """Rankers that see no label and train nothing: layer count, FLOPs, params, SynFlow, NASWOT."""
    import torch

    from evaluators.zero_cost import score_architectures
    from search_spaces.nas_bench_macro import NasBenchMacroSpace, key_to_arch

    space = NasBenchMacroSpace(width=width)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny single networks: threads only spin on a shared CPU
    try:
        zero_cost = score_architectures(lambda k: space.freeze(key_to_arch(k)), keys, (3, 32, 32),
                                        ZERO_COST_BATCH, seed=seed)
    finally:
        torch.set_num_threads(threads)
    return {"layer count": [layer_count(k) for k in keys],
            "FLOPs": [table.record(k)["flops"] for k in keys],
            "params": [table.record(k)["params"] for k in keys],
            "synflow": [s["synflow"] for s in zero_cost],
            "naswot": [s["naswot"] for s in zero_cost]}


def config_for(objective: str, seed: int, budget: dict, cifar: Path | None, output_dir: Path,
               model: dict | None = None):
    """The retrain config of one run; ``model`` overrides the backbone settings (another space, its options)."""
    from experiments.core.validation import load_config

    overrides = {
        "framework": objective, "seed": seed, "output_dir": str(output_dir),
        "data.batch_size": budget["batch_size"], "data.train_subset": budget["train_images"],
        "data.test_subset": budget["test_images"],
        "model.backbone": "nas_bench_macro", "model.backbone_width": budget["width"], "model.head_space": "fixed",
        "model.head_width": budget["head_width"], "optim.lr": LEARNING_RATES.get(objective, 0.06),
        "train.epochs": budget["epochs"], "evaluation.knn_k": budget["knn_k"],
        "evaluation.linear_epochs": budget["linear_epochs"], "evaluation.monitor_every_n_epochs": budget["epochs"],
        "trainer.progress_bar": False, "trainer.accelerator": "cpu",
    }
    if budget["dataset"] == "digits":
        overrides.update({"data.dataset": "digits", **DIGITS_AUGMENT})
    else:
        overrides.update({"data.dataset": "imagefolder", "data.root": str(cifar)})
    return load_config(None, {**overrides, **(model or {})})


def retrain_alone(cfg, architecture: dict, out: Path) -> tuple[dict, float, float]:
    """The retrain job on one thread in a fresh ``out`` (removed after): its record, wall and CPU seconds."""
    import torch

    from experiments.core.records import space_record
    from experiments.jobs.retrain import run_retrain

    shutil.rmtree(out, ignore_errors=True)  # a run killed before it cached starts again from scratch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same numbers on every rerun, and fair times on a shared CPU
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        result = run_retrain(cfg, {"space": space_record(cfg), "architecture": architecture}, out,
                             log_fn=lambda line: None)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        torch.set_num_threads(threads)
    shutil.rmtree(out, ignore_errors=True)
    return result, wall, cpu
