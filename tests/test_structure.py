"""The house rules that the code itself can be held to: no module over 300 lines, and imports that form floors
(no cycle, so no module imports one that imports it back), lazy imports inside functions included."""

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "llmft"
MAX_LINES = 300


def modules() -> Dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: Dict[str, Path], lazy: bool) -> Set[str]:
    """The llmft modules that ``name`` imports: at its top level, or anywhere when ``lazy`` (inside functions, and
    modules named by their dotted path in a string, as ``importlib.import_module`` takes them)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree) if lazy else tree.body:
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = (name if path.name == "__init__.py" else name.rpartition(".")[0]).split(".")
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names]  # each a submodule, or a name defined in ``base``
        elif lazy and isinstance(node, ast.Constant) and node.value in known and "." in node.value:
            targets = [node.value]  # a bare "llmft" is the distribution's or the logger's name, not an import
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def cycles(graph: Dict[str, Set[str]]) -> List[Set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found: List[Set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_module_is_over_300_lines():
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules (a module past ~300 lines becomes a folder of smaller ones): {long}"


def test_imports_form_floors_without_cycles():
    known = modules()
    top = {name: imports(name, path, known, lazy=False) for name, path in known.items()}
    assert cycles(top) == []
    everywhere = {name: imports(name, path, known, lazy=True) for name, path in known.items()}
    assert cycles(everywhere) == [], "these modules import each other (lazily, inside a function, or both): " \
        "move what they share to one module below them"


def test_the_import_reader_sees_every_kind_of_import(tmp_path):
    (tmp_path / "pkg").mkdir()
    known = {name: tmp_path / "pkg" / "x.py" for name in ("llmft.data", "llmft.data.splits", "llmft.data.mixture",
                                                          "llmft.data.reading", "llmft.models", "llmft.models.tiny")}
    source = tmp_path / "pkg" / "x.py"
    source.write_text("from llmft.data import splits, mixture\n"  # two modules from one package
                      "def f():\n    import llmft.models.tiny as t\n    from . import reading\n"
                      "EXPORTS = {'a': 'llmft.models', 'b': 'llmft'}\n")
    assert imports("llmft.data.x", source, known, lazy=False) == {"llmft.data.splits", "llmft.data.mixture"}
    assert imports("llmft.data.x", source, known, lazy=True) == {"llmft.data.splits", "llmft.data.mixture",
                                                                "llmft.models.tiny", "llmft.data.reading",
                                                                "llmft.models"}


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_the_model_adapter_and_evaluators_are_built_in_one_place():
    """pipeline, runs (export, chat), reevaluate: one builders module (issue 14), not a sequence each."""
    builders = PACKAGE / "builders.py"
    assert all(sign in builders.read_text() for sign in ("build(cfg.model", "PeftModel.from_pretrained(loaded",
                                                        "apply_lora(loaded", "run_evaluators(evaluators, model"))
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if path != builders and path.name != "__main__.py":  # python -m llmft.models only fetches weights
            for sign in ("build(cfg.model", "build(cfg.quantization", "PeftModel.from_pretrained(loaded",
                         "apply_lora(loaded", "evaluation_precision", "run_evaluators(evaluators, model"):
                assert sign not in text, f"{path.relative_to(PACKAGE.parent)} builds {sign!r} itself: use llmft.builders"


def test_an_evaluator_restores_the_training_mode_it_found():
    import torch

    from llmft.evaluation.data import evaluating, longest_first

    model = torch.nn.Linear(2, 2)
    for mode in (True, False):
        model.train(mode)
        with pytest.raises(RuntimeError), evaluating(model) as device:
            assert not model.training and device == torch.device("cpu")
            raise RuntimeError  # a failing evaluator leaves the mode as it was too
        assert model.training is mode
    assert longest_first([3, 9, 1, 9]) == [1, 3, 0, 2]
