"""Pictures of a run: evolution curve, proxy-vs-accuracy scatter, formula tree, Pareto front.

Drawn on matplotlib ``Figure`` objects (no pyplot, so no global backend or figure state: a
figure is rendered when it is saved, with no display needed); the formula tree is a networkx
graph laid out top-down.
"""

from __future__ import annotations

import math
import os
import textwrap
from typing import Any

import matplotlib
import networkx as nx
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

import primitives
from primitives import Node

from ..core.files import save_figure

__all__ = ["formula_graph", "plot_evolution", "plot_formula_tree", "plot_pareto",
           "plot_scatter"]

#: op family -> node colour of the formula tree
FAMILY_COLOURS = {"input": "#f4b183", "elementwise": "#e8f0fe", "transform": "#d4edda",
                  "distance": "#f8d7da", "instinct": "#e2d9f3", "reduce": "#d1ecf1",
                  "combine": "#ffd966"}


def _wrap(text: str, width: int = 110) -> str:
    """A formula wrapped (never cut) for a title; breaks after commas and parentheses."""
    return "\n".join(textwrap.wrap(text.replace(",", ", "), width)).replace(", ", ",")


def formula_graph(node: Node) -> nx.DiGraph:
    """A directed tree: one vertex per op/input (label = name, its family, and the side it
    is read on: ``pair`` below a teacher-student distance, where inputs are read on both
    sides, ``student`` elsewhere), edges parent → argument."""
    g = nx.DiGraph()

    def add(n: Node, path: str, inside: bool) -> None:
        op = primitives.get(n.name)
        g.add_node(path, label=n.name, family=op.family,
                   side="pair" if inside else "student")
        for i, a in enumerate(n.args):
            child = f"{path}.{i}"
            add(a, child, inside or op.pairwise)
            g.add_edge(path, child)

    add(node, "0", False)
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


def plot_formula_tree(node: Node, path: str | os.PathLike[str], title: str = "") -> None:
    """The formula as a tree: ops coloured by family; inputs below a distance are read on the
    teacher and the student side (T+S), others on the student alone (S)."""
    g = formula_graph(node)
    pos = _tree_layout(g)
    leaves = 1 + max(x for x, _ in pos.values())
    fig = Figure(figsize=(min(4.5 + 1.3 * leaves, 18), 0.6 + 0.6 * (1 + node.height)))
    ax = fig.subplots()
    nx.draw_networkx_edges(g, pos, ax=ax, arrows=False, edge_color="#888888")
    for v, data in g.nodes(data=True):
        text = data["label"]
        if data["family"] == "input":
            text += " (T+S)" if data["side"] == "pair" else " (S)"
        ax.text(*pos[v], text, ha="center", va="center", fontsize=8,
                bbox={"boxstyle": "round", "fc": FAMILY_COLOURS.get(data["family"], "#eeeeee"),
                      "ec": "#c0392b" if data["family"] == "distance" else "#666666"})
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=c, edgecolor="#666666", label=f)
               for f, c in FAMILY_COLOURS.items()
               if any(d["family"] == f for _, d in g.nodes(data=True))]
    ax.legend(handles=handles, fontsize=7, loc="upper left", title="op family",
              title_fontsize=7, frameon=True)
    ax.set_title(title or "formula tree: T+S = read on teacher and student, S = student only",
                 fontsize=9)
    ax.margins(x=0.35, y=0.08)
    ax.set_axis_off()
    fig.tight_layout()
    save_figure(fig, path)


def plot_evolution(history: list[dict[str, Any]], path: str | os.PathLike[str],
                   title: str = "evolution of the campaign") -> None:
    gens = [h["generation"] for h in history]
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    base = history[-1]["baselines"]["params"]["test_tau"]
    if base is not None:  # drawn first and thick, so a curve on top of it stays visible
        ax.axhline(base, color="#bbbbbb", lw=3, label="#params τ (held-out)", zorder=1)
    desc = history[-1]["baselines"].get("descriptors", {}).get("test_tau")
    if desc is not None:
        ax.axhline(desc, color="#999999", lw=1.5, ls="-.", zorder=1,
                   label="descriptor regression τ (held-out)")
    ax.plot(gens, [h["best"]["fitness"] for h in history], marker="o", ms=3,
            label="best fitness (train)", zorder=3)
    ax.plot(gens, [h["median_fitness"] for h in history], label="median fitness (train)",
            zorder=2)
    ax.plot(gens, [h["best"].get("test_tau") for h in history], "--", marker="s", ms=3,
            label="the best's τ (held-out)", zorder=4)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("generation")
    ax.set_ylabel("Kendall τ")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def plot_scatter(scores: np.ndarray, y: np.ndarray, params: np.ndarray, test: np.ndarray,
                 title: str, stats: dict[str, str], path: str | os.PathLike[str],
                 target: str = "ground truth") -> None:
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    is_test = np.zeros(len(y), dtype=bool)
    is_test[test] = True
    for ax, x, name in ((axes[0], scores, "proxy score (oriented)"),
                        (axes[1], params, "#params")):
        ax.scatter(x[~is_test], y[~is_test], s=12, alpha=0.6, label="train")
        ax.scatter(x[is_test], y[is_test], s=16, alpha=0.9, label="held-out")
        ax.set_xlabel(name)
        ax.set_ylabel(target)
        ax.set_title(stats[name], fontsize=9)
        ax.legend(fontsize=8)
    axes[1].set_xscale("log")
    fig.suptitle(_wrap(title), fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)




def plot_pareto(rows: list[dict[str, Any]], params_tau: float | None,
                path: str | os.PathLike[str], title: str = "") -> None:
    """Held-out τ against complexity for the archive's Pareto front (``pareto.csv`` rows),
    #params as a reference line; held-out numbers were never selected on."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    xs = [int(r["complexity"]) for r in rows]
    ys = [float(r["test_tau"]) for r in rows]
    if params_tau is not None:
        ax.axhline(params_tau, color="#bbbbbb", lw=3, label="#params τ (held-out)")
    ax.step(xs, ys, where="post", color="#1f77b4", alpha=0.5)
    ax.scatter(xs, ys, zorder=3, label="Pareto front of the archive")
    for i, (x, y_) in enumerate(zip(xs, ys, strict=True), start=1):  # the row of pareto.csv
        ax.annotate(str(i), (x, y_), fontsize=7, xytext=(4, -9), textcoords="offset points")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("complexity (sum of op complexities)")
    ax.set_ylabel("Kendall τ (held-out)")
    ax.set_title(title or "held-out τ vs complexity (reported, never selected on); "
                          "point n = row n of pareto.csv", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)


def plot_process(pathways: list[str], alpha: list[list[float]], raw: list[list[float]],
                 path: str | os.PathLike[str], steps_per_epoch: int = 0, title: str = "",
                 clip: float = 0.5) -> None:
    """A DistPro process: every pathway's weight α over the search steps (one line each,
    coloured by teacher-student connection, dashed where the pathway is clipped), and the
    share of the loss left to the pathways (1 − Σα goes to the biased softmax's constant)."""
    a, r = np.asarray(alpha), np.asarray(raw)
    x = np.arange(len(a)) / steps_per_epoch if steps_per_epoch else np.arange(len(a))
    fig = Figure(figsize=(10, 7))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    connections = list(dict.fromkeys(p.split("/")[0] for p in pathways))
    colours = matplotlib.colormaps["tab10"]
    styles = ["-", "--", ":", "-."]
    for i, name in enumerate(pathways):
        conn, block = name.split("/")
        colour = colours(connections.index(conn) % 10)
        active = np.where(r[:, i] > clip, a[:, i], np.nan)
        top.plot(x, active, styles[(int(block[1:]) - 1) % 4], color=colour, lw=1.5, label=name)
        top.plot(x, np.where(r[:, i] > clip, np.nan, a[:, i]), color=colour, lw=0.6, alpha=0.4)
    top.set_ylabel("α (pathway weight)")
    top.legend(fontsize=7, ncol=3, loc="upper right")
    top.set_title(_wrap(title or "DistPro: learned distillation process"))
    bottom.plot(x, a.sum(axis=1), color="black")
    bottom.set_ylabel("Σα")
    bottom.set_xlabel("search epoch" if steps_per_epoch else "search step")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def plot_comparison(rows: list[Any], path: str | os.PathLike[str], title: str = "") -> None:
    """Held-out τ of every proxy with its bootstrap interval; names wrapped, never cut;
    #params as a reference line; a proxy that could not be evaluated shows "n/a"."""
    from ..baselines.zerocost import SIZE_STATISTICS

    names = ["\n".join(textwrap.wrap(r.name, 48)) for r in rows]
    tau = [r.metrics.get("test_tau", float("nan")) for r in rows]
    ok = [math.isfinite(t) for t in tau]
    lo = [t - r.metrics.get("test_tau_lo", t) if k else 0.0
          for t, r, k in zip(tau, rows, ok, strict=True)]
    hi = [r.metrics.get("test_tau_hi", t) - t if k else 0.0
          for t, r, k in zip(tau, rows, ok, strict=True)]
    lines = sum(n.count("\n") + 1 for n in names)
    fig = Figure(figsize=(9, 0.3 * lines + 0.25 * len(rows) + 1.6))
    ax = fig.subplots()
    colours = {"size": "#888888", "fitted": "#b58900"}
    ax.barh(names, [t if k else 0.0 for t, k in zip(tau, ok, strict=True)], xerr=[lo, hi],
            color=[colours.get(r.kind, "#4a7") for r in rows])
    for i, k in enumerate(ok):
        if not k:
            ax.text(0.01, i, "n/a (not evaluated)", va="center", fontsize=8, color="#c0392b")
    label = SIZE_STATISTICS["params"].label
    params = next((r.metrics.get("test_tau") for r in rows if r.name == label), None)
    if params is not None and math.isfinite(params):
        ax.axvline(params, color="#555555", ls="--", lw=1, label="#params")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel("held-out Kendall τ (95 % bootstrap interval)")
    ax.set_title(title or "proxies on the same held-out architectures", fontsize=10)
    ax.tick_params(axis="y", labelsize=7)
    ax.invert_yaxis()
    fig.tight_layout()
    save_figure(fig, path)

