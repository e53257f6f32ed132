"""Pictures: the formula tree marks families and sides."""

from __future__ import annotations

from pathlib import Path

import primitives


def test_formula_tree_marks_families_and_sides(tmp_path: Path) -> None:
    from gp_proxy.report import pictures as report

    node = primitives.parse("rank_sub_w2(cosine(tanh(k2)),sum_layers(l1_norm(weight)))")
    g = report.formula_graph(node)
    by_label = {d["label"]: d for _, d in g.nodes(data=True)}
    assert by_label["k2"]["side"] == "pair" and by_label["weight"]["side"] == "student"
    assert by_label["cosine"]["family"] == "distance"
    assert by_label["rank_sub_w2"]["family"] == "combine"
    report.plot_formula_tree(node, tmp_path / "tree.png")
    report.plot_pareto([{"complexity": "3", "test_tau": "0.7", "formula": "l1(k2)"}], 0.6,
                       tmp_path / "pareto.png")
    assert (tmp_path / "tree.png").stat().st_size > 5000
    assert (tmp_path / "pareto.png").stat().st_size > 5000
