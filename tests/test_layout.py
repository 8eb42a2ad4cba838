"""The layout's rules, read from the sources: no script imports another script and no module
imports a script; the run machinery (harness/) and the metrics (metrics/) import nothing above them; the
import graph has no cycle; the top level holds the design card's six scripts and a handful of tools."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DESIGN_CARD = {"train.py", "model.py", "jepa.py", "data.py", "evaluate.py", "probe.py"}
TOOLS = {"sampler.py", "lora.py", "sample.py", "bench.py", "configurator.py"}


def project_modules():
    """{dotted name: path} of every project .py outside tests/ and run folders."""
    found = {}
    for folder, dirs, files in os.walk(ROOT):
        rel = os.path.relpath(folder, ROOT)
        dirs[:] = [d for d in dirs if not d.startswith((".", "out", "__")) and d != "tests"]
        for f in files:
            if f.endswith(".py"):
                name = f[:-3] if rel == "." else f"{rel.replace(os.sep, '.')}.{f[:-3]}"
                found[name] = os.path.join(folder, f)
    return found


def imports(path, modules):
    """The project modules a file imports (import x, import x as y, from x import y, from pkg import mod)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module in modules:
                out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules}
    return out


def is_script(path):
    return 'if __name__ == "__main__":' in open(path, encoding="utf-8").read()


def test_no_script_is_imported():
    modules = project_modules()
    scripts = {m for m, p in modules.items() if is_script(p)}
    assert {"train", "evaluate", "probe", "sample", "bench", "replication.aggregate", "replication.corpus",
            "replication.figures"} <= scripts
    for name, path in modules.items():
        assert not imports(path, modules) & scripts, f"{name} imports the script(s) {imports(path, modules) & scripts}"


def test_lower_layers_import_nothing_above_them():
    modules = project_modules()
    allowed = {"harness": {"harness"}, "metrics": {"metrics", "harness"}}
    for name, path in modules.items():
        layer = name.split(".")[0]
        if layer in allowed:
            above = {m for m in imports(path, modules) if m.split(".")[0] not in allowed[layer]}
            assert not above, f"{name} imports {above}"


def test_no_import_cycle():
    modules = project_modules()
    graph = {m: imports(p, modules) for m, p in modules.items()}
    state = {}

    def visit(m, trail):
        if state.get(m) == "done":
            return
        assert state.get(m) != "open", f"import cycle: {' -> '.join(trail + [m])}"
        state[m] = "open"
        for n in graph[m]:
            visit(n, trail + [m])
        state[m] = "done"
    for m in graph:
        visit(m, [])


def test_the_top_level_shows_the_design():
    top = {f for f in os.listdir(ROOT) if f.endswith(".py")}
    assert DESIGN_CARD <= top and top - DESIGN_CARD <= TOOLS, sorted(top - DESIGN_CARD - TOOLS)
    for folder in ("harness", "metrics", "replication", "training", "lm_harness", "release"):
        assert os.path.exists(os.path.join(ROOT, folder, "README.md")), f"{folder}/ says why it exists"
