# The house of the README's file tour: four layers, each module importing only from its own layer or those below,
# and no import cycles. Read from the source (every import statement, in functions too), not from sys.modules.
import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BESIDE = {"configurator", "files"}  # used by every layer, importing nothing of ours but each other
LAYERS = {  # 0 kernels, 1 the model, 2 the libraries, 3 the scripts
    "model": 1, "tokenizer": 2, "data": 2, "checkpoint": 2, "hf": 2, "lora": 2, "quantize": 2,
    "train": 3, "sample": 3, "eval": 3, "prepare": 3, "bench": 3, "export": 3, "weight_diff": 3,
    "kernels.bench": 3, "kernels.compile_check": 3,
}


def modules():
    files = glob.glob(os.path.join(ROOT, "*.py")) + glob.glob(os.path.join(ROOT, "kernels", "*.py"))
    names = {}
    for f in files:
        rel = os.path.relpath(f, ROOT)[:-3].replace(os.sep, ".")
        names["kernels" if rel == "kernels.__init__" else rel] = f
    return names


def imports(path, ours):
    """The modules of ours that a file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(ours)  # from kernels import rmsnorm
            found |= subs or {node.module}
    return {m for m in found if m in ours}


def layer(name):
    return LAYERS.get(name, 0 if name.startswith("kernels") else None)


def test_every_module_has_a_layer_and_imports_nothing_above_it():
    ours = modules()
    for name, path in ours.items():
        if name in BESIDE:
            assert imports(path, ours) <= BESIDE, f"{name} is imported by every layer and must import nothing of ours"
            continue
        assert layer(name) is not None, f"{name}.py has no layer: add it to LAYERS here and to the README's file tour"
        for dep in imports(path, ours) - BESIDE:
            assert layer(dep) <= layer(name), f"{name} (layer {layer(name)}) imports {dep} (layer {layer(dep)})"
            if name.startswith("kernels.") and layer(name) == 0:  # a kernel file never imports the switch above it
                assert dep != "kernels", f"{name} imports the switch kernels/__init__.py"


def test_no_import_cycles():
    ours = modules()
    graph = {name: imports(path, ours) - {name} for name, path in ours.items()}
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for dep in graph[node]:
            assert state.get(dep) != "open", "import cycle: " + " -> ".join(stack + [node, dep])
            if dep not in state:
                visit(dep, stack + [node])
        state[node] = "done"

    for name in graph:
        if name not in state:
            visit(name, [])
