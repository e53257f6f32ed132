"""Pictures of a run: evolution curve, proxy-vs-accuracy scatter, formula tree.

Rendered with matplotlib's Agg backend (no display needed); the formula tree is a networkx
graph laid out top-down.
"""

from __future__ import annotations

import os
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import networkx as nx
import numpy as np

from primitives import Node

from .io import save_figure

__all__ = ["formula_graph", "plot_evolution", "plot_formula_tree", "plot_scatter"]


def formula_graph(node: Node) -> nx.DiGraph:
    """A directed tree: one vertex per op/input (label = name), edges parent → argument."""
    g = nx.DiGraph()

    def add(n: Node, path: str) -> None:
        g.add_node(path, label=n.name)
        for i, a in enumerate(n.args):
            child = f"{path}.{i}"
            add(a, child)
            g.add_edge(path, child)

    add(node, "0")
    return g


def _tree_layout(g: nx.DiGraph) -> dict[str, tuple[float, float]]:
    pos: dict[str, tuple[float, float]] = {}
    leaves = [0]

    def place(v: str, depth: int) -> float:
        kids = list(g.successors(v))
        if not kids:
            x = float(leaves[0])
            leaves[0] += 1
        else:
            x = float(np.mean([place(k, depth + 1) for k in kids]))
        pos[v] = (x, -depth)
        return x

    place("0", 0)
    return pos


def plot_formula_tree(node: Node, path: str | os.PathLike[str]) -> None:
    g = formula_graph(node)
    pos = _tree_layout(g)
    width = max(4.0, 1.3 * (1 + max(x for x, _ in pos.values())))
    fig, ax = plt.subplots(figsize=(width, 1.2 * (1 + node.height)))
    nx.draw_networkx_edges(g, pos, ax=ax, arrows=False)
    nx.draw_networkx_labels(g, pos, labels=nx.get_node_attributes(g, "label"), ax=ax,
                            font_size=9, bbox={"boxstyle": "round", "fc": "#e8f0fe"})
    ax.margins(x=0.25, y=0.1)
    ax.set_axis_off()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_evolution(history: list[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    gens = [h["generation"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(gens, [h["best"]["fitness"] for h in history], label="best τ (train)")
    ax.plot(gens, [h["median_fitness"] for h in history], label="median τ (train)")
    ax.plot(gens, [h["best"].get("test_tau") for h in history], "--",
            label="best's τ (held-out)")
    base = history[-1]["baselines"]["params"]["test_tau"]
    if base is not None:
        ax.axhline(base, color="grey", lw=1, ls=":", label="#params τ (held-out)")
    ax.set_xlabel("generation")
    ax.set_ylabel("Kendall τ")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_scatter(scores: np.ndarray, y: np.ndarray, params: np.ndarray, test: np.ndarray,
                 title: str, stats: dict[str, str], path: str | os.PathLike[str]) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    is_test = np.zeros(len(y), dtype=bool)
    is_test[test] = True
    for ax, x, name in ((axes[0], scores, "proxy score (oriented)"),
                        (axes[1], params, "#params")):
        ax.scatter(x[~is_test], y[~is_test], s=12, alpha=0.6, label="train")
        ax.scatter(x[is_test], y[is_test], s=16, alpha=0.9, label="held-out")
        ax.set_xlabel(name)
        ax.set_ylabel("ground truth")
        ax.set_title(stats[name], fontsize=9)
        ax.legend(fontsize=8)
    axes[1].set_xscale("log")
    fig.suptitle(title[:110], fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


