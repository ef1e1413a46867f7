"""No module imports from a layer above its own (deferred imports inside functions included)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import skymoe

# Bottom to top. A module may import from its own layer and the layers below it. suites holds only
# YAML files; config validates conversion options with data.convert, so it sits above data; demo
# drives train and eval for cli.
LAYERS = ("errors", "yaml_settings", "suites", "assets", "data", "model", "train", "eval", "infer", "serve", "demo", "cli")
PACKAGE = Path(skymoe.__file__).parent
FACADE = {"__init__", "__main__"}  # the package itself: `skymoe.Pipeline`, `python -m skymoe`; above every layer
METADATA = {"skymoe.__version__"}  # no layer: any module may read it
ARCHITECTURE_DOC = Path(__file__).resolve().parents[1] / "docs" / "ARCHITECTURE.md"


def layer_of(module: str) -> str:
    """``skymoe.model.install`` -> ``model``; a name the package itself exports (``skymoe.Pipeline``) -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "__init__"


def skymoe_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute ``skymoe`` import in ``path``; relative imports are refused."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import; write `from skymoe.... import`"
            # `from skymoe import data` imports a layer, `from skymoe import Pipeline` the package's facade
            names = [f"skymoe.{a.name}" for a in node.names] if node.module == "skymoe" else [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [(node.lineno, name) for name in names if name == "skymoe" or name.startswith("skymoe.")]
    return found


def upward_imports(package: Path) -> list[str]:
    """``file:line imports module (layer X above layer Y)`` for each import that runs up."""
    problems = []
    for path in sorted(package.rglob("*.py")):
        own = path.relative_to(package).parts[0].removesuffix(".py")
        if own in FACADE:
            continue
        assert own in LAYERS, f"{path}: {own!r} is in no layer; add it to LAYERS"
        for line, module in skymoe_imports(path):
            if module in METADATA:
                continue
            target = layer_of(module)
            if target == "__init__" or LAYERS.index(target) > LAYERS.index(own):
                problems.append(f"{path.relative_to(package)}:{line} imports {module} (layer {target} is above {own})")
    return problems


def test_no_module_imports_from_a_layer_above_it():
    assert upward_imports(PACKAGE) == []


def test_an_upward_import_is_reported_with_its_file_and_line(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "reader.py").write_text("import json\n\ndef f():\n    from skymoe.model.install import install_experts\n")
    (tmp_path / "model.py").write_text("from skymoe.data.schema import Sample\nfrom skymoe import __version__, data\n")
    (tmp_path / "serve.py").write_text("import skymoe.infer\nfrom skymoe import Pipeline\n")
    assert upward_imports(tmp_path) == [
        "data/reader.py:4 imports skymoe.model.install (layer model is above data)",
        "serve.py:2 imports skymoe.Pipeline (layer __init__ is above serve)",
    ]


def doc_section(heading: str) -> str:
    """The text under ``## heading`` in docs/ARCHITECTURE.md, up to the next ``## `` heading."""
    text = ARCHITECTURE_DOC.read_text(encoding="utf-8")
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_the_architecture_doc_draws_these_layers_in_this_order():
    block = doc_section("Layers").split("```")[1]  # the section's first fenced block, top layer first
    drawn = [line.split()[0] for line in block.splitlines()[1:] if line.strip()]  # [0] is the info string
    assert drawn[::-1] == list(LAYERS)


def test_every_file_the_architecture_doc_places_an_idea_in_exists():
    rows = [line for line in doc_section("Where each idea lives").splitlines() if line.startswith("| ")]
    paths = re.findall(r"`([\w./-]+(?:\.py|/))`", "\n".join(rows))
    assert len(paths) > 40  # the table was parsed, not skipped
    assert [p for p in paths if not (PACKAGE / p).exists()] == []
