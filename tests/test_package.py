"""The package's shape: the stub of the compiled core lists what the core
binds, the modules import one another without a circle, and the top level
re-exports every optimizer class."""

import ast
import pathlib
import subprocess
import sys

import fusedopt
from fusedopt import _core, optimizers

PACKAGE = pathlib.Path(fusedopt.__file__).parent


def test_core_stub_lists_every_bound_name():
    tree = ast.parse((PACKAGE / "_core.pyi").read_text())
    stubbed = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            stubbed.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            stubbed.add(node.target.id)
    bound = {name for name in dir(_core) if not name.startswith("_")}
    assert stubbed == bound
    assert set(_core.rules) <= stubbed  # every rule object, by name


def _package_imports(path: pathlib.Path) -> set[str]:
    """The fusedopt modules a module imports at its top level, those for type
    checkers included (a circle there is a circle in the design too)."""
    module = path.relative_to(PACKAGE.parent).with_suffix("").as_posix().replace("/", ".")
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module.removesuffix(".__init__")
    found = set()
    tree = ast.parse(path.read_text())
    top_level = [n for n in tree.body if not isinstance(n, ast.If)]
    top_level += [n for block in tree.body if isinstance(block, ast.If) for n in block.body]
    for node in top_level:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            if base.startswith("fusedopt"):
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("fusedopt"))
    return found


def test_no_import_circle():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = path.relative_to(PACKAGE.parent).with_suffix("").as_posix().replace("/", ".")
        modules[name.removesuffix(".__init__")] = path
    graph = {name: {m for m in _package_imports(path) if m in modules and m != name}
             for name, path in modules.items()}
    # A package imports its submodules on purpose; a circle among the other edges is a design error.
    for name in graph:
        graph[name] = {m for m in graph[name] if not m.startswith(name + ".")}

    def cycle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return path + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    circles = [c for c in map(cycle_from, graph) if c]
    assert not circles, f"import circles: {circles}"


def test_top_level_exports_every_optimizer():
    assert set(optimizers.__all__) <= set(fusedopt.__all__)
    for name in optimizers.__all__:
        assert getattr(fusedopt, name) is getattr(optimizers, name)
    assert {cls.rule.name for cls in map(optimizers.__dict__.get, optimizers.__all__)} == set(_core.rules)


# Run in a fresh interpreter: the test session itself has ml_dtypes imported.
FLOAT32_ONLY = """
import sys, tempfile, os
import numpy as np
import fusedopt
assert "ml_dtypes" not in sys.modules, "import fusedopt imported ml_dtypes"
params = [np.ones(5000, np.float32)]
for options in ({}, {"state_dtype": np.float32}, {"state_bits": 8}):
    opt = fusedopt.AdamW(params, lr=1e-3, **options)
    opt.step([np.full(5000, 0.1, np.float32)])
    ref = fusedopt.reference.AdamW([p.copy() for p in params], lr=1e-3, **options)
    ref.step([np.full(5000, 0.1, np.float32)])
    path = os.path.join(tempfile.mkdtemp(), "run.npz")
    fusedopt.save(path, opt)
    fusedopt.load(path, fusedopt.AdamW(params, lr=1e-3, **options))
assert "ml_dtypes" not in sys.modules, "a float32 run imported ml_dtypes"
opt = fusedopt.AdamW([np.ones(8, np.float32)], state_dtype="bfloat16")  # the name alone brings it in
opt.step([np.full(8, 0.1, np.float32)])
assert str(opt.state[0]["exp_avg"].dtype) == "bfloat16"
"""


def test_float32_runs_never_import_ml_dtypes():
    """ml_dtypes takes about a second to import (NumPy 2.4): `import fusedopt`
    and float32 steps, reference steps and checkpoints leave it unimported;
    asking for bfloat16 by name imports it."""
    result = subprocess.run([sys.executable, "-c", FLOAT32_ONLY], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
