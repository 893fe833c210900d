"""Every file in configs/ loads (with each of its presets) and starts its docstring with its command."""

import glob
import importlib.util
import inspect
import os

import pytest

from ehr_jax import main
from ehr_jax.errors import ConfigError
from ehr_jax.sweep import grid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))
GRID_FILES = ("quickstart.py", "mimic_iv.py", "synthetic_large.py")


def _load(path):
    spec = importlib.util.spec_from_file_location(f"config_{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _presets(module):
    takes_arg = bool(inspect.signature(module.get_config).parameters)
    return getattr(module, "PRESETS", ("",)) if takes_arg else (None,)


def _get_config(module, preset):
    return module.get_config() if preset is None else module.get_config(preset)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_config_loads_with_every_preset_and_documents_its_command(path):
    module = _load(path)
    command = f"python -m ehr_jax.main --config=configs/{os.path.basename(path)}"
    head = [line.strip() for line in (module.__doc__ or "").splitlines()[:4]]
    assert any(line.startswith(command) for line in head), f"{path}: docstring must start with {command}"
    for preset in _presets(module):
        config = _get_config(module, preset)
        for group in ("data", "model", "train", "mesh", "eval"):
            assert group in config, f"{path}:{preset} lacks config.{group}"
    if _presets(module) != (None,):
        with pytest.raises(ConfigError, match="preset"):
            module.get_config("no-such-preset")


def test_the_grid_presets_exist():
    names = {os.path.basename(p) for p in CONFIG_FILES}
    assert set(GRID_FILES) <= names


@pytest.mark.parametrize("name", GRID_FILES)
def test_grid_configs_expand_into_kept_runs(name):
    module = _load(os.path.join(REPO, "configs", name))
    for preset in _presets(module):
        config = _get_config(module, preset)
        points = grid.expand(config, vocab_size=600 if name == "quickstart.py" else 8000,
                             train_tokens=1_500_000_000 if name != "quickstart.py" else 2_000_000)
        kept = [p for p in points if not p.skip_reason]
        assert len({p.budget for p in kept}) >= 2, f"{name}:{preset} keeps fewer than 2 budgets"
        assert len({p.name for p in points}) == len(points)


def test_mimic_iv_spans_the_papers_range_and_requires_meds_dir(tmp_path):
    config = _load(os.path.join(REPO, "configs", "mimic_iv.py")).get_config()
    kept = [p for p in grid.expand(config, vocab_size=8000, train_tokens=1_500_000_000)
            if not p.skip_reason]
    assert min(p.n_params for p in kept) < 3e6 and max(p.n_params for p in kept) > 5e8

    with pytest.raises(ConfigError, match="config.data.meds_dir"):
        main.run(config, str(tmp_path))
    assert not os.listdir(tmp_path)  # refused before any data was made
