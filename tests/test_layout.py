"""The stage layout of docs/CONTRACTS.md, checked on the source: main.py alone wires stages."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Each stage's entry points: a module importing these runs (part of) that stage.
STAGES = {
    "prepare": ("ehr_jax.data.prepare", "ehr_jax.data.beam_prepare"),
    "synthetic": ("ehr_jax.synthetic",),
    "train": ("ehr_jax.train.trainer",),
    "evaluation": ("ehr_jax.evaluation.runner", "ehr_jax.evaluation.__main__"),
    "sweep": ("ehr_jax.sweep.loop",),
    "analysis": ("analysis",),
}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (`from a import b` counts a and a.b)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def _stages_used(modules: set[str]) -> set[str]:
    return {stage for stage, entries in STAGES.items()
            if any(m == e or m.startswith(e + ".") for m in modules for e in entries)}


def _sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_only_main_wires_more_than_one_stage():
    for path in _sources("ehr_jax"):
        if path.name == "main.py" and path.parent.name == "ehr_jax":
            continue
        own = {stage for stage, entries in STAGES.items()
               if any(str(path.relative_to(ROOT)).replace("/", ".").startswith(e) for e in entries)}
        assert len(_stages_used(imported_modules(path)) - own) <= 1, path


@pytest.mark.parametrize("folder, forbidden", [
    ("ehr_jax/train", ("ehr_jax.data.prepare", "ehr_jax.synthetic", "ehr_jax.evaluation")),
    ("ehr_jax/evaluation", ("ehr_jax.data.prepare", "ehr_jax.synthetic", "ehr_jax.train.trainer",
                            "ehr_jax.train.optim")),
    ("ehr_jax/sweep", ("analysis", "ehr_jax.train.trainer", "ehr_jax.evaluation")),
    ("ehr_jax/model", ("ehr_jax.data", "ehr_jax.train", "ehr_jax.evaluation", "ehr_jax.sweep")),
])
def test_stage_folders_do_not_reach_into_other_stages(folder, forbidden):
    for path in _sources(folder):
        bad = {m for m in imported_modules(path) for f in forbidden if m == f or m.startswith(f + ".")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
