"""What a job prints: one line per epoch, a table of the result at the end."""
from __future__ import annotations

from pathlib import Path


def epoch_line(r: dict) -> str:
    """An epoch of the monitor's history; with architecture weights, how far they moved from uniform."""
    loss = f"{r['ssl_loss']:.4f}" if r.get("ssl_loss") is not None else "n/a"
    arch = r.get("architecture") or {}
    moved = ""
    if arch:  # mean top probability against 1/n: has the search decided anything?
        top = sum(max(p.values()) for p in arch.values()) / len(arch)
        uniform = sum(1 / len(p) for p in arch.values()) / len(arch)
        moved = f"  arch top-p {top:.3f} (uniform {uniform:.3f})"
    seconds = f"  ({r['epoch_seconds']:.1f}s)" if r.get("epoch_seconds") is not None else ""
    return (f"epoch {r['epoch']}: loss {loss}  knn_top1 {r['knn_top1']:.3f}  "
            f"collapse {r['collapse']:.3f}{moved}{seconds}")


def start_line(job: str, cfg, out: Path, architecture: str | None = None, epochs: int | None = None) -> str:
    """What a job will do, in one line: framework, space and strategy (or the architecture a
    retrain rebuilds), data, device and its thread policy, epochs (``epochs`` where the job's own
    option sets them, e.g. prune's ``--finetune-epochs``)."""
    import torch

    from evaluators import FRAMEWORKS
    from experiments.core.machine import thread_policy

    default_epochs = cfg.search.epochs
    if architecture is not None:
        space, default_epochs = f"architecture {architecture}", cfg.train.epochs
    elif job == "backbone-search":
        space = f"{cfg.model.backbone} backbone space, {cfg.backbone_search.strategy}"
    else:
        space = f"{cfg.model.head_space} head space, {cfg.search.strategy}"
    data = cfg.data.dataset if cfg.data.root is None else f"{cfg.data.dataset} ({cfg.data.root})"
    if cfg.data.batched_augment and not FRAMEWORKS[cfg.framework].batched_views:
        views = f"per-image views ({cfg.framework} makes its own)"
    else:
        views = "batched views" if cfg.data.batched_augment else "per-image views"
    device = cfg.trainer.accelerator
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    epochs = epochs if epochs is not None else default_epochs
    return (f"{job}: {cfg.framework} on {data}, {space}, {device} ({thread_policy(cfg).short()}), {epochs} epochs, "
            f"{views} -> {out}")


class EpochPrinter:
    """A monitor listener that prints ``epoch_line`` on global rank zero (a class, so it pickles under ddp_spawn)."""

    def __init__(self, log_fn=print):
        self.log_fn = log_fn

    def __call__(self, record: dict) -> None:
        from pytorch_lightning.utilities.rank_zero import rank_zero_only

        if rank_zero_only.rank == 0:
            self.log_fn(epoch_line(record))


def summary(record: dict, path: Path) -> None:
    """The record's choices (with their probabilities), its cost against a budget, its downstream accuracy."""
    from rich.console import Console
    from rich.table import Table

    space = record["space"]
    searched = f"{space['backbone']} backbone · {record['strategy']}" if record.get("kind") == "backbone_search" \
        else f"{space['head_space']} heads"
    table = Table(title=f"{record['framework']} · {searched}")
    table.add_column("choice")
    table.add_column("value")
    probabilities = record.get("probabilities") or {}
    if probabilities:
        table.add_column("probability", justify="right")
    for label, value in record["architecture"].items():
        row = [label, str(value)]
        if probabilities:
            p = probabilities.get(label, {}).get(str(value))
            row.append(f"{p:.3f}" if p is not None else "")
        table.add_row(*row)
    console = Console(soft_wrap=True)  # a result line stays one line in a captured log
    console.print(table)
    chosen = [probabilities[label].get(str(value)) for label, value in record["architecture"].items()
              if isinstance(probabilities.get(label), dict) and probabilities[label]]
    if chosen and all(p is not None for p in chosen):
        uniform = sum(1 / len(probabilities[label]) for label in record["architecture"] if probabilities.get(label))
        console.print(f"how decided: mean probability of the chosen values {sum(chosen) / len(chosen):.2f} "
                      f"(lowest {min(chosen):.2f}; uniform {uniform / len(chosen):.2f})")
    if record.get("cost"):
        c, b = record["cost"], record["budget"]
        console.print(f"backbone {c['flops']:,} FLOPs (budget {b['max_flops']}), {c['params']:,} params "
                      f"(budget {b['max_params']}) at {c['input_size']}x{c['input_size']}")
    if record.get("benchmark"):
        bm = record["benchmark"]
        acc = f", NAS-Bench-Macro mean_acc {bm['mean_acc']:.2f}" if "mean_acc" in bm else ""
        console.print(f"benchmark key {bm['key']}{acc}")
    m = record["metrics"]
    held_out = f"  held-out score {m['held_out_score']:.3f}" if "held_out_score" in m else ""
    untrained = f" (untrained {m['untrained_knn_top1']:.3f})" if "untrained_knn_top1" in m else ""
    console.print(f"kNN top-1 {m['knn_top1']:.3f}{untrained}  linear top-1 {m['linear_top1']:.3f}  "
                  f"collapse {m['collapse']:.3f} (healthy ~1){held_out}  chance {m['chance']:.3f}")
    print(f"results: {path}  (NNI and Lightning messages: {path.parent / 'logs' / 'run.log'})")  # never wrapped
