"""Runtime code stands on torch, safetensors, sentencepiece, tokenizers, gguf, huggingface-hub, numpy, tqdm,
matplotlib, fastapi, uvicorn and bm25s alone (the test clients openai and httpx are no runtime dependency); no module
imports a program; and no two modules import each other, however indirectly."""

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_DEPENDENCIES = {
    "torch",
    "safetensors",
    "sentencepiece",
    "tokenizers",
    "gguf",
    "huggingface-hub",
    "numpy",
    "tqdm",
    "matplotlib",
    "fastapi",
    "uvicorn",
    "bm25s",
}
ORACLES = ["transformers", "peft", "accelerate", "openai", "httpx", "torchao"]


PROGRAMS = {"convert", "train", "sample", "evaluate", "serve", "export"}
NOT_RUNTIME = {"tests", "bench", "examples"}


def runtime_modules() -> list[str]:
    """Every module of twin: the top-level files and those of its packages (the folders with an __init__.py),
    a package inside a package (model.gguf) too, by its own name where its __init__.py imports anything."""
    top = [p.stem for p in ROOT.glob("*.py")]
    packages = [
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for init in ROOT.glob("*/__init__.py")
        if init.parent.name not in NOT_RUNTIME
        for p in init.parent.rglob("*.py")
        if p.parent != init.parent or p.stem != "__init__"
    ]
    return sorted(top + packages)


def imports_of(module: str, modules: set[str]) -> set[str]:
    """The modules of twin that `module` imports anywhere in its file (inside functions too)."""
    path = ROOT / (module.replace(".", "/") + ".py")
    if not path.exists():  # a package's own name: its __init__.py
        path = path.with_suffix("") / "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found - {module}


def test_requirements_are_exactly_the_runtime_dependencies():
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    names = {
        re.split(r"[<>=!~\[; ]", line.strip())[0].lower() for line in lines if line.strip() and not line.startswith("#")
    }
    assert names == RUNTIME_DEPENDENCIES


def test_no_runtime_module_imports_the_test_oracles():
    modules = runtime_modules()
    assert {"train", "sample", "model.lora", "model.transformer", "data.telegram"} <= set(modules)
    # A None entry in sys.modules makes any import of that name fail, however deep it happens.
    code = (
        f"import sys\nfor name in {ORACLES!r}:\n    sys.modules[name] = None\n"
        f"import importlib\nfor module in {modules!r}:\n    importlib.import_module(module)\nprint('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr


def test_no_module_imports_a_program():
    modules = set(runtime_modules())
    importers = {module: sorted(imports_of(module, modules) & PROGRAMS) for module in modules}
    assert {module: programs for module, programs in importers.items() if programs} == {}


def test_no_import_circle():
    modules = set(runtime_modules())
    graph = {module: imports_of(module, modules) for module in modules}
    done, path = set(), []

    def visit(module: str) -> None:  # depth first; a module met again on the current path closes a circle
        assert module not in path, "import circle: " + " -> ".join(path[path.index(module) :] + [module])
        if module in done:
            return
        path.append(module)
        for imported in sorted(graph[module]):
            visit(imported)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


# The rooms of twin from the bottom up. A module imports from its own package and from rooms below its own,
# never from a room beside or above it: a newcomer reads each room knowing only the rooms under it.
LAYERS = [
    {"core"},
    {"model"},
    {"data"},
    {"memory"},
    {"fidelity", "chat"},  # the report's mechanics, and a conversation with a twin
    {"training"},  # which ends a run with the report's pictures
    {"serving"},
    {"lora", "fsdp"},  # the training recipes, which train.py runs
    PROGRAMS,  # the programs
]


def room_of(module: str) -> str:
    return module.split(".")[0]


def layer_of(module: str) -> int:
    room = room_of(module)
    return next(index for index, rooms in enumerate(LAYERS) if room in rooms)


def test_every_runtime_module_has_a_room():
    assert {room_of(module) for module in runtime_modules()} <= set().union(*LAYERS)


def test_imports_flow_down_the_rooms():
    modules = set(runtime_modules())
    wrong = {
        f"{module} -> {imported}"
        for module in modules
        for imported in imports_of(module, modules)
        if room_of(imported) != room_of(module) and layer_of(imported) >= layer_of(module)
    }
    assert sorted(wrong) == []


def test_no_private_name_is_imported_from_another_module():
    modules = set(runtime_modules())
    private = []
    for module in sorted(modules):
        path = ROOT / (module.replace(".", "/") + ".py")
        if not path.exists():
            path = path.with_suffix("") / "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module in modules:
                private += [
                    f"{module}: {node.module}.{alias.name}" for alias in node.names if alias.name.startswith("_")
                ]
    assert private == []


def test_nothing_outside_the_tests_imports_them():
    # The tests' fixtures and tiny-model builders are theirs alone: the benches build from bench/bases.py.
    outside = [path for folder in ("bench", "examples") for path in (ROOT / folder).rglob("*.py")]
    outside += [path for path in ROOT.glob("*.py")]
    importing = [
        str(path.relative_to(ROOT))
        for path in outside
        if re.search(r"^\s*(from|import) tests\b", path.read_text(encoding="utf-8"), re.M)
    ]
    assert importing == []


# Each bench script as `python bench/NAME.py --help` starts it, in one process: before each, the repository's
# modules are forgotten and only bench/ is on the path, so a script that imports the packages before putting
# the repository on the path fails as it would alone; torch, imported once, keeps it quick.
BENCH_STARTS = """
import runpy, sys
from pathlib import Path
root, failed = Path(sys.argv[1]), []
for script in sorted((root / "bench").glob("*.py")):
    sys.path[:] = [str(root / "bench")] + [p for p in sys.path if Path(p or ".").resolve() != root]
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(root)):
            del sys.modules[name]
    sys.argv = [str(script), "--help"]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as stop:
        if stop.code not in (0, None):
            failed.append(f"{script.name}: exit {stop.code}")
    except Exception as error:
        failed.append(f"{script.name}: {type(error).__name__}: {error}")
print(failed)
"""


def test_every_bench_script_starts_from_the_repository_root():
    result = subprocess.run(
        [sys.executable, "-c", BENCH_STARTS, str(ROOT)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.stdout.strip().splitlines()[-1:] == ["[]"], result.stdout[-2000:] + result.stderr[-2000:]


# train.py --help (and a mistyped flag) needs only the settings: torch, numpy and BM25 load once the flags are
# good, so that it answers in a fraction of a second instead of after torch's import (1.7 s on 2 cores).
HELP_IMPORTS = """
import runpy, sys
sys.argv = ["train.py", "--help"]
try:
    runpy.run_path("train.py", run_name="__main__")
except SystemExit:
    pass
print(sorted(name for name in ("torch", "numpy", "bm25s") if name in sys.modules))
"""


def test_train_help_loads_neither_torch_nor_numpy():
    result = subprocess.run([sys.executable, "-c", HELP_IMPORTS], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "--lora" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stderr[-2000:]
