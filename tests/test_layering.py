"""The three packages form layers, imports go downward only, and no modules import each other.

Layers, top to bottom: ``mlx_assets`` -> ``mlx_resources`` -> ``mlx_plugins``. The import graph
is grimp's (every ``import`` statement, including ones inside functions); imports under
``if TYPE_CHECKING:`` are left out, as they never run.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

LAYERS = ("mlx_assets", "mlx_resources", "mlx_plugins")  # top to bottom


@functools.cache
def _graph():  # type: ignore[no-untyped-def]
    grimp = pytest.importorskip("grimp")
    return grimp.build_graph(*LAYERS, exclude_type_checking_imports=True, cache_dir=None)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        component.append(m)
                        if m == node:
                            break
                    if len(component) > 1:
                        out.append(sorted(component))
    return out


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_imports_go_downward_only() -> None:
    graph = _graph()
    bad = []
    for lower_i, lower in enumerate(LAYERS):
        for upper in LAYERS[:lower_i]:
            for imp in graph.find_illegal_dependencies_for_layers(layers=(upper, lower)):
                bad.append(f"{imp.importer} -> {imp.imported}")
            for m in graph.find_children(lower) | {lower} | graph.find_descendants(lower):
                for imported in graph.find_modules_directly_imported_by(m):
                    if imported.split(".")[0] == upper:
                        bad.append(f"{m} imports {imported} ({lower} is below {upper})")
    assert not bad, "upward imports:\n" + "\n".join(sorted(set(bad)))


def test_no_import_cycles() -> None:
    graph = _graph()
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    edges = {m: {i for i in imps if i in edges} for m, imps in edges.items()}
    assert _cycles(edges) == [], "modules that import each other"


def _old_metrics():  # type: ignore[no-untyped-def]
    """The numpy implementations the scikit-learn ones replaced (commit 5562926)."""

    def roc_auc(y, p):  # type: ignore[no-untyped-def]
        y = np.asarray(y, bool)
        n_pos, n_neg = int(y.sum()), int((~y).sum())
        if n_pos == 0 or n_neg == 0:
            return 0.5
        order = np.argsort(p, kind="mergesort")
        sorted_p = np.asarray(p)[order]
        ranks = np.empty(len(p), np.float64)
        _, first, counts = np.unique(sorted_p, return_index=True, return_counts=True)
        avg = first + (counts - 1) / 2.0 + 1.0
        ranks[order] = np.repeat(avg, counts)
        return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))

    def log_loss(y, p):  # type: ignore[no-untyped-def]
        p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
        y = np.asarray(y, np.float64)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))

    def brier(y, p):  # type: ignore[no-untyped-def]
        return float(np.mean((np.asarray(p, np.float64) - np.asarray(y, np.float64)) ** 2))

    return roc_auc, log_loss, brier


@pytest.mark.parametrize("case", ["random", "ties", "extremes", "one_class"])
def test_metrics_agree_with_the_former_numpy_code(case: str) -> None:
    from mlx_assets.evaluation import metrics

    rng = np.random.default_rng(7)
    n = 5000
    y = (rng.random(n) < 0.3).astype(np.int8)
    p = rng.random(n)
    if case == "ties":
        p = np.round(p, 1)  # many tied scores across both classes
    elif case == "extremes":
        p = np.where(rng.random(n) < 0.2, rng.choice([0.0, 1.0, 1e-12, 1 - 1e-12], n), p)
    elif case == "one_class":
        y = np.ones(n, np.int8)
    old_auc, old_ll, old_brier = _old_metrics()
    assert metrics.roc_auc(y, p) == pytest.approx(old_auc(y, p), abs=1e-12)
    assert metrics.log_loss(y, p) == pytest.approx(old_ll(y, p), abs=1e-12)
    assert metrics.brier(y, p) == pytest.approx(old_brier(y, p), abs=1e-12)
