"""The package's layering: no import cycle between loralab's parts (its subpackages and top-level
modules), counting the imports inside functions too (a lazy import is still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "loralab"


def _part(module: str) -> str:
    """loralab.variants.lora -> variants; loralab.train -> train; loralab -> loralab."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(rel.parts).removesuffix(".__init__")


def import_graph() -> dict[str, dict[str, list[str]]]:
    """part -> part it imports -> where (file:line), for every import in every module."""
    graph: dict[str, dict[str, list[str]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                targets = [".".join([*base, node.module] if node.module else base) if node.level else node.module or ""]
            else:
                continue
            for target in targets:
                if target == "loralab" or target.startswith("loralab."):
                    src, dst = _part(module), _part(target)
                    if src != dst:
                        graph.setdefault(src, {}).setdefault(dst, []).append(
                            f"{path.relative_to(PACKAGE)}:{node.lineno}"
                        )
    return graph


def cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """The strongly connected components with more than one part (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(set(graph) | {w for edges in graph.values() for w in edges}):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_between_parts():
    graph = import_graph()
    found = cycles(graph)
    detail = [
        f"{a} -> {b} ({graph[a][b][0]})"
        for component in found
        for a in component
        for b in graph.get(a, {})
        if b in component
    ]
    assert not found, f"import cycles between parts: {found}: {detail}"


def test_the_check_sees_a_cycle():
    """The checker itself: a planted two-part cycle and a three-part one are found, a chain is not."""
    assert cycles({"a": {"b": []}, "b": {"a": []}}) == [["a", "b"]]
    assert cycles({"a": {"b": []}, "b": {"c": []}, "c": {"a": []}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b": []}, "b": {"c": []}}) == []
    graph = import_graph()
    # lazy imports count: the validation imports the variant registry inside validate()
    assert "variants" in graph["validation"] and "config" in graph["variants"]


def test_run_directory_file_names_have_one_owner():
    """Every file name of the run directory is written once, in loralab.rundir; elsewhere it is
    read from there (prose in messages may name the files)."""
    from loralab import rundir

    names = {
        value
        for key, value in vars(rundir).items()
        if key.isupper() and isinstance(value, str) and ("." in value or value in ("adapter", "checkpoints"))
    }
    assert {"summary.json", "run_meta.json", "merge_report.json", "freeze_manifest.json", "config.yaml"} <= names
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "rundir.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names - {"adapter", "checkpoints"}:
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value!r}")
    assert not found, f"run-directory file names written outside loralab.rundir: {found}"


def test_specs_are_keyword_only_and_frozen():
    """A variant is declared by keywords and cannot be changed once registered; what it needs beyond
    LoRA's defaults is a field of its spec (Delta-LoRA's updates_base_weights), not its name
    written into another part."""
    import dataclasses

    import pytest

    from loralab.variants.registry import AdapterInfo, BuildContext, VariantSpec, get_variant, registered_variants

    spec = get_variant("lora")
    with pytest.raises(TypeError):
        VariantSpec("x", spec.schema, spec.build, spec.is_trainable)  # the positional form is refused
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.build = None
    with pytest.raises(TypeError):
        BuildContext(None, None)
    assert all(f.kw_only for cls in (AdapterInfo, BuildContext, VariantSpec) for f in dataclasses.fields(cls))
    moving = {s.name for s in registered_variants() if s.updates_base_weights}
    assert moving == {"delta_lora"}
    # the sharded-strategy refusal reads the spec, not the name
    source = (PACKAGE / "distributed.py").read_text()
    assert '"delta_lora"' not in source and "updates_base_weights" in source
