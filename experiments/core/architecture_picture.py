"""A picture of a chosen architecture, drawn from its record alone (no space is built).

- heads (``projector.*``, ``predictor.*``): a column per head, a box per layer with its chosen
  operation and, for a differentiable search, the probability the search gave it;
- backbone blocks (``backbone.layer3.op``, ``backbone.stage2.width``, ...): a box per block with
  its choice (and probability when the search had one);
- cells (``backbone.normal/op_3_1`` with ``backbone.normal/input_3_1``): the derived graph of each
  cell type, its two inputs, its nodes, an edge per chosen input labelled with its operation,
  every intermediate node feeding the cell's output (DARTS concatenates them).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

CELL_LABEL = re.compile(r"^(?P<prefix>.+)\.(?P<cell>[^./]+)/(?P<kind>op|input)_(?P<node>\d+)_(?P<slot>\d+)$")


def _natural(label: str) -> list:
    """Sort key that puts layer2 before layer10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", label)]


def _probability(probabilities: dict, label: str, value: Any) -> Optional[float]:
    choices = probabilities.get(label)
    if not isinstance(choices, dict):
        return None
    p = choices.get(str(value), choices.get(value) if isinstance(value, (str, int)) else None)
    return float(p) if isinstance(p, (int, float)) else None


def cell_graphs(architecture: dict) -> dict[str, dict[int, list[tuple[int, str]]]]:
    """``{cell type: {node: [(input node, operation), ...]}}`` from a cell space's labels, any number of slots
    per node, ``none`` pads left out."""
    ops: dict[tuple[str, int, int], str] = {}
    inputs: dict[tuple[str, int, int], list] = {}
    for label, value in architecture.items():
        m = CELL_LABEL.match(label)
        if not m:
            continue
        key = (m["cell"], int(m["node"]), int(m["slot"]))
        if m["kind"] == "op":
            ops[key] = str(value)
        else:
            inputs[key] = list(value) if isinstance(value, (list, tuple)) else [value]
    graphs: dict[str, dict[int, list[tuple[int, str]]]] = {}
    for (cell, node, slot), op in sorted(ops.items()):
        if op == "none":  # a free slot's pad (a node keeping fewer inputs than slots): no input to draw
            continue
        for source in inputs.get((cell, node, slot), []):
            graphs.setdefault(cell, {}).setdefault(node, []).append((int(source), op))
    return graphs


def block_groups(architecture: dict) -> dict[str, list[tuple[str, Any]]]:
    """Non-cell labels grouped by their first part (``projector``, ``predictor``, ``backbone``), in layer order."""
    groups: dict[str, list[tuple[str, Any]]] = {}
    for label in sorted(architecture, key=_natural):
        if CELL_LABEL.match(label):
            continue
        head, _, rest = label.partition(".")
        groups.setdefault(head, []).append((rest or head, architecture[label]))
    return groups


def _value_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _draw_blocks(ax, title: str, items: list[tuple[str, Any]], full_labels: list[str], probabilities: dict) -> None:
    ax.set_title(title, fontsize=10)
    ax.axis("off")
    n = len(items)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.5, n - 0.5)
    for i, ((name, value), label) in enumerate(zip(items, full_labels)):
        y = n - 1 - i
        p = _probability(probabilities, label, value)
        text = f"{name}: {_value_text(value)}" + (f"  (p {p:.2f})" if p is not None else "")
        ax.text(0.5, y, text, ha="center", va="center", fontsize=8,
                bbox=dict(boxstyle="round,pad=0.35", facecolor="#e8f0fb", edgecolor="#4a6fa5"))
        if i + 1 < n:
            ax.annotate("", xy=(0.5, y - 0.62), xytext=(0.5, y - 0.38), arrowprops=dict(arrowstyle="->", lw=0.8))


def plt_colour(i: int):
    import matplotlib.pyplot as plt

    return plt.get_cmap("tab10")(i % 10)


def _draw_cell(ax, cell: str, graph: dict[int, list[tuple[int, str]]]) -> None:
    ax.set_title(f"{cell} cell", fontsize=10)
    ax.axis("off")
    nodes = sorted(graph)
    positions = {0: (0.0, 1.0), 1: (0.0, -1.0)}
    for i, node in enumerate(nodes):
        positions[node] = (1.0 + i, 0.9 if i % 2 == 0 else -0.9)
    output = (len(nodes) + 1.0, 0.0)
    names = {0: "c[k-2]", 1: "c[k-1]"}
    for node, (x, y) in positions.items():
        ax.text(x, y, names.get(node, str(node)), ha="center", va="center", fontsize=9, zorder=3,
                bbox=dict(boxstyle="circle,pad=0.3" if node > 1 else "round,pad=0.3",
                          facecolor="#fdf1d8" if node > 1 else "#dfeedd", edgecolor="#555"))
    ax.text(*output, "c[k]", ha="center", va="center", fontsize=9, zorder=3,
            bbox=dict(boxstyle="round,pad=0.3", facecolor="#f6d6d6", edgecolor="#555"))
    operations = sorted({op for edges in graph.values() for _, op in edges})
    colours = {op: plt_colour(i) for i, op in enumerate(operations)}
    for node, edges in graph.items():
        for slot, (source, op) in enumerate(edges):
            start, end = positions.get(source, (0.0, 0.0)), positions[node]
            bend = 0.2 if slot % 2 == 0 else -0.2
            ax.annotate("", xy=end, xytext=start, zorder=1,
                        arrowprops=dict(arrowstyle="->", lw=1.4, color=colours[op], shrinkA=12, shrinkB=12,
                                        connectionstyle=f"arc3,rad={bend}"))
            # the arc's own midpoint (matplotlib's arc3 bends by rad times the chord, to its right)
            dx, dy = end[0] - start[0], end[1] - start[1]
            mx, my = (start[0] + end[0]) / 2 + 0.5 * bend * dy, (start[1] + end[1]) / 2 - 0.5 * bend * dx
            ax.text(mx, my, op, ha="center", va="center", fontsize=6.5, color=colours[op], zorder=2,
                    bbox=dict(boxstyle="round,pad=0.1", facecolor="white", edgecolor="none", alpha=0.85))
    for node in nodes:
        ax.annotate("", xy=output, xytext=positions[node], zorder=1,
                    arrowprops=dict(arrowstyle="->", lw=0.6, color="#999", shrinkA=12, shrinkB=12, linestyle="--"))
    ax.set_xlim(-0.6, output[0] + 0.6)
    ax.set_ylim(-1.7, 1.7)


def draw_architecture(record: dict, path: str | Path, title: str = "") -> Path:
    """One PNG of the record's chosen architecture: head columns, backbone blocks, cell graphs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    architecture = record.get("architecture") or {}
    probabilities = record.get("probabilities") or {}
    groups = block_groups(architecture)
    graphs = cell_graphs(architecture)
    if not groups and not graphs:
        raise ValueError("the architecture has no choices to draw")
    order = {"backbone": 0, "projector": 1, "predictor": 2}  # the way the data flows
    panels = [("blocks", name) for name in sorted(groups, key=lambda g: (order.get(g, 3), g))] + [("cell", name) for name in graphs]
    widths = [1.0 if kind == "blocks" else 2.2 for kind, _ in panels]
    tallest = max([len(items) for items in groups.values()] + [4])
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6.5, 3.4 * sum(widths)), 0.55 * tallest + 1.6),
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    for ax, (kind, name) in zip(axes[0], panels):
        if kind == "blocks":
            items = groups[name]
            labels = [f"{name}.{rest}" if rest != name else name for rest, _ in items]
            _draw_blocks(ax, name, items, labels, probabilities)
        else:
            _draw_cell(ax, name, graphs[name])
    fig.suptitle(title or "chosen architecture", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def architecture_title(record: dict) -> str:
    """``backbone_search: spos on nas_bench_macro (simsiam), kNN 0.550`` from a record."""
    space = record.get("space") or {}
    what = space.get("backbone", "?")
    if record.get("kind") == "ssl_head_search":
        what = f"{space.get('head_space', '?')} heads on {what}"
    knn = (record.get("metrics") or {}).get("knn_top1")
    strategy = f"{record['strategy']} on " if record.get("strategy") else ""
    return f"{record.get('kind', 'architecture')}: {strategy}{what} ({record.get('framework', '?')})" + (
        f", kNN {knn:.3f}" if isinstance(knn, (int, float)) else "")


PICTURE_FILE = "architecture.png"


def write_run_picture(record: dict, out: Path) -> tuple[Optional[Path], str]:
    """A finished search's picture in its run directory: ``(path, "")``, or ``(None, why not)``.

    The record is already written when this runs, so a picture that cannot be drawn or written
    (nothing searched; a full disk) is said, never a failure of the run.
    """
    try:
        return draw_architecture(record, Path(out) / PICTURE_FILE, architecture_title(record)), ""
    except ValueError as err:
        return None, str(err)
    except OSError as err:
        return None, f"cannot write {Path(out) / PICTURE_FILE} ({err.strerror or type(err).__name__})"
