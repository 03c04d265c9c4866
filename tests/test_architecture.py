"""The package's layers point one way (DESIGN.md, "Layers import downwards only"):

    cli -> loop -> runner -> stages and train (side by side) -> evaluate -> verifiers/engines/tasks
        -> models/adapters/store/config/recipe/rows -> errors

Every import counts, including those inside functions (the heavy ones are there), so a lazy import cannot
hide a cycle. The graph is read from the source with `ast`; nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pipeline"


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the package modules it imports (anywhere in the file), e.g. 'pipeline.stages.mine'."""
    files = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        files[".".join(parts).removesuffix(".__init__")] = path

    def module_of(name: str) -> str | None:  # 'pipeline.store.StageStore' -> 'pipeline.store'
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                target = module_of(name) if name.split(".")[0] == root.name else None
                # a module importing its own package's __init__ (or itself) is not an edge upwards
                if target and target != module and not module.startswith(target + "."):
                    graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def edges_between(graph: dict[str, set[str]], source: str, target: str) -> list[str]:
    def under(module: str, prefix: str) -> bool:
        return module == prefix or module.startswith(prefix + ".")

    return sorted(
        f"{m} -> {t}" for m, targets in graph.items() if under(m, source) for t in targets if under(t, target)
    )


def test_the_checker_sees_imports_inside_functions_and_cycles(tmp_path):
    pkg = tmp_path / "pipeline"
    (pkg / "stages").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pipeline import b\n")
    (pkg / "b.py").write_text("from pipeline.a import f\n")
    (pkg / "stages" / "__init__.py").write_text("from . import x\n")
    (pkg / "stages" / "x.py").write_text("def g():\n    import pipeline.train.evaluate\n")
    (pkg / "train.py").write_text("")
    graph = import_graph(pkg)
    assert cycles(graph) == [["pipeline.a", "pipeline.b"]]
    assert edges_between(graph, "pipeline.stages", "pipeline.train") == [
        "pipeline.stages.x -> pipeline.train"
    ]
    assert "pipeline.stages.x" in graph["pipeline.stages"]


def test_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 40, "the checker found too few modules; is PACKAGE right?"
    assert cycles(graph) == []


def test_stages_never_import_training():
    assert edges_between(import_graph(), "pipeline.stages", "pipeline.train") == []


def test_recipe_is_plain_config():
    """recipe.py imports nothing that runs a recipe: no stages, runner, engines, training or executors."""
    above = ("runner", "loop", "cli", "stages", "train", "engines", "verifiers", "executors", "student")
    graph = import_graph()
    assert [t for t in graph["pipeline.recipe"] if t.split(".")[1] in above] == []


def test_engines_and_evaluation_do_not_import_training():
    graph = import_graph()
    for layer in ("pipeline.engines", "pipeline.evaluate", "pipeline.verifiers", "pipeline.tasks"):
        assert edges_between(graph, layer, "pipeline.train") == []
        assert edges_between(graph, layer, "pipeline.stages") == []
        assert edges_between(graph, layer, "pipeline.runner") == []


def test_only_the_store_reads_its_private_files():
    """`shards/progress.json`, `input.arrow` and `stage.pkl` are the store's: other modules ask it."""
    private = ("progress.json", "input.arrow", "stage.pkl")
    readers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "store.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in private:
                readers.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.value}")
    assert readers == []


def test_the_writer_a_missing_column_error_names_declares_that_column():
    """`require_columns` names the stage that writes a missing column (stages.WRITTEN_BY); that stage's
    declared `writes` must hold it, so the error never sends a user to the wrong stage."""
    import importlib

    from pipeline.recipe import STAGE_MODULES
    from pipeline.stages import WRITTEN_BY, Stage

    writes = {}
    for name, module in STAGE_MODULES.items():
        mod = importlib.import_module(f"pipeline.stages.{module}")
        classes = [
            c for c in vars(mod).values() if isinstance(c, type) and issubclass(c, Stage) and c is not Stage
        ]
        writes[name] = {col for c in classes if c.__module__ == mod.__name__ for col in c.writes}
    wrong = {col: stage for col, stage in WRITTEN_BY.items() if col not in writes[stage.split(" ")[0]]}
    assert wrong == {}


def test_every_stage_opens_through_the_base_class():
    """The opening and close every stage repeats (its folder, the shards, freeing engines) is written once, in
    `Stage.open` / `Stage.run_shards`; a stage module that builds a StageStore or calls run_sharded is a copy."""
    copies = []
    for path in sorted((PACKAGE / "stages").glob("*.py")):
        if path.name == "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            name = (
                node.attr
                if isinstance(node, ast.Attribute)
                else node.id
                if isinstance(node, ast.Name)
                else None
            )
            if name in ("run_sharded", "StageStore"):
                copies.append(f"{path.name}:{node.lineno} {name}")
    assert copies == []


def test_a_stage_loads_each_engine_once_frees_it_and_leaves_a_ready_one_open():
    """`Stage.engine`: the load-on-first-use helper rephrase, regenerate and self-distill share."""
    import pickle

    from pipeline.stages import Stage

    class Engine:
        def __init__(self):
            self.closed = 0

        def close(self):
            self.closed += 1

    ready, loaded = Engine(), []

    def load():
        loaded.append(Engine())
        return loaded[-1]

    stage = Stage()
    stage._engines = {"teacher": ready}  # given ready, as a test's shared engine is
    assert stage.engine("teacher", load) is ready and loaded == []
    critic = stage.engine("critic", load)
    assert stage.engine("critic", load) is critic and loaded == [critic]
    assert "_engines" not in pickle.loads(pickle.dumps(stage)).__dict__  # a worker loads its own
    stage.close()
    assert critic.closed == 1 and ready.closed == 0
    assert stage.engine("teacher", load) is ready  # still there: the caller owns it
    assert stage.engine("critic", load) is not critic and len(loaded) == 2  # loaded afresh after close
