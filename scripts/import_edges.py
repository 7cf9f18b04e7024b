"""Import edges between the project's packages and layers, for the layering note (README, Layout).

    .venv/bin/python scripts/import_edges.py

Counts every import statement (module level and inside functions) from one package into another,
with grimp (the graph import-linter checks the layer contracts on), and lists 2-cycles."""

from __future__ import annotations

import importlib.util
from collections import Counter

import grimp

PACKAGES = ("routenlp", "routenlp_core", "bls_router", "export", "coopt", "clients", "gateway")


SHARED = ("routenlp.metrics", "routenlp.portfolio", "routenlp.data", "routenlp.table")  # a layer of its own


def _group(module: str) -> str:
    """The package; routenlp split into its CLI, its shared layer and the rest (deployment helpers)."""
    if module == "routenlp.cli" or module.startswith("routenlp.commands"):
        return "routenlp CLI"
    if module.startswith(SHARED):
        return "routenlp shared"
    return module.split(".")[0]


def main() -> None:
    present = [p for p in PACKAGES if importlib.util.find_spec(p)]  # an older checkout has no routenlp_core
    graph = grimp.build_graph(*present, cache_dir=None)
    edges: Counter[tuple[str, str]] = Counter()
    for importer in graph.modules:
        for imported in graph.find_modules_directly_imported_by(importer):
            a, b = _group(importer), _group(imported)
            if a != b:
                lines = graph.get_import_details(importer=importer, imported=imported)
                edges[(a, b)] += max(1, len(lines))
    print("| from | to | import statements |\n|---|---|---|")
    for (a, b), n in sorted(edges.items()):
        print(f"| {a} | {b} | {n} |")
    cycles = sorted((a, b) for a, b in edges if a < b and (b, a) in edges)
    print(f"\n2-cycles: {', '.join(f'{a} <-> {b}' for a, b in cycles) or 'none'}")


if __name__ == "__main__":
    main()
