"""The import layering of the package, read from the source with ``ast`` (every import statement, also those
inside functions: an import deferred to call time is still a dependency).

- ``simdex.dense`` is below ``simdex.quant`` (quant builds on dense), so no module under simdex/dense imports
  simdex.quant, or anything else above it; a dense index names a quant kind through the index registry
  (``simdex.index.index_class``), which imports the module that defines it when it is needed;
- the core modules (errors, validation, ids, file format, the index contract) import no index family, and the
  search cores (simdex.core) import nothing above the ground floor;
- no module imports a private module (``_name``) of another package;
- the modules of simdex.quant import each other without a cycle (the codecs register themselves in
  ``simdex.quant.codec``, which imports none of them);
- every index class is listed in ``simdex.index.KIND_MODULES`` with the module that defines it, so that
  ``simdex.load`` finds it in a fresh process.
"""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import simdex
from simdex.index import KIND_MODULES, BaseIndex

ROOT = Path(simdex.__file__).parent
FAMILIES = ("simdex.dense", "simdex.quant", "simdex.sparse", "simdex.sets", "simdex.multivector", "simdex.store",
            "simdex.server", "simdex.embed", "simdex.bench", "simdex.cli")
ABOVE_DENSE = tuple(f for f in FAMILIES if f != "simdex.dense")
CORE = ("simdex.errors", "simdex._validate", "simdex.idmap", "simdex.fileformat", "simdex.index", "simdex.metrics")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(name: str) -> bool:
    return (ROOT.parent / Path(*name.split(".")) / "__init__.py").exists()


def imports_of(path: Path) -> set[str]:
    """The simdex modules a source file imports, resolved to absolute names (``from . import x`` names the
    submodule x when there is one)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if is_package(sub) or (ROOT.parent / Path(*sub.split("."))).with_suffix(".py").exists()
                        else target)
    return {m for m in out if m == "simdex" or m.startswith("simdex.")}


def all_modules() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(ROOT.rglob("*.py"))}


def within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_dense_never_imports_the_packages_built_on_it():
    bad = [f"{m} imports {i}" for m, imps in all_modules().items() if within(m, ("simdex.dense",))
           for i in sorted(imps) if within(i, ABOVE_DENSE)]
    assert not bad, "\n".join(bad)


def test_search_cores_import_only_the_ground_floor():
    bad = [f"{m} imports {i}" for m, imps in all_modules().items() if within(m, ("simdex.core",))
           for i in sorted(imps) if within(i, FAMILIES)]
    assert not bad, "\n".join(bad)


def test_no_module_imports_a_private_module_of_another_package():
    """Kernels shared by two families live in simdex.core or at the ground floor (simdex._heap, simdex._numba),
    not in one family's private modules."""
    bad = []
    for m, imps in all_modules().items():
        for i in sorted(imps):
            package, _, last = i.rpartition(".")
            if last.startswith("_") and not last.startswith("__") and package != "simdex" \
                    and not within(m, (package,)):
                bad.append(f"{m} imports {i}")
    assert not bad, "\n".join(bad)


def test_core_modules_import_no_index_family():
    bad = [f"{m} imports {i}" for m, imps in all_modules().items() if m in CORE
           for i in sorted(imps) if within(i, FAMILIES)]
    assert not bad, "\n".join(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (or with a self-import): Tarjan's algorithm."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_among_quant_modules():
    modules = all_modules()
    quant = {m: {i for i in imps if within(i, ("simdex.quant",))} for m, imps in modules.items()
             if within(m, ("simdex.quant",))}
    found = cycles(quant)
    assert not found, f"import cycles among simdex.quant modules: {found}"


def test_cycle_finder_finds_the_old_codec_cycle():
    """The check above would have caught the cycle this layering removed (codec.py imported the codec modules
    to make codecs from names; they all import codec.py)."""
    graph = {"simdex.quant.codec": {"simdex.quant.pq", "simdex.quant.scalar"}, "simdex.quant.pq": {"simdex.quant.codec"},
             "simdex.quant.scalar": {"simdex.quant.codec"}, "simdex.quant.ivf": {"simdex.quant.codec"}}
    assert cycles(graph) == [["simdex.quant.codec", "simdex.quant.pq", "simdex.quant.scalar"]]


def test_every_index_class_is_in_the_kind_registry():
    import simdex.multivector
    import simdex.quant
    import simdex.sets
    import simdex.sparse  # noqa: F401 -- every family, so that every index class exists

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)
    missing = [f"{c.kind}: {c.__module__}" for c in subclasses(BaseIndex)
               if c.__module__.startswith("simdex.") and "kind" in c.__dict__ and not inspect.isabstract(c)
               and KIND_MODULES.get(c.kind) != c.__module__]
    assert not missing, f"add these to simdex.index.KIND_MODULES: {missing}"


def test_window_index_works_without_importing_quant_first():
    """The default base of WindowIndex (LVQ-8 HNSW nodes) comes through the registry, in a fresh process that has
    imported only simdex.dense."""
    script = ("import sys, numpy as np\n"
              "from simdex.dense import WindowIndex\n"
              "assert 'simdex.quant' not in sys.modules\n"
              "x = np.random.default_rng(0).random((600, 16)).astype(np.float32)\n"
              "w = WindowIndex(16, leaf_size=128)\n"
              "w.add(x, np.arange(600.0))\n"
              "print(type(w._levels[0][1][0]).__name__, w.search(x[:2], 3, 0, 300)[1][0, 0])\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["HNSWQuantIndex", "0"]
