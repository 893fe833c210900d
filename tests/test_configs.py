"""Every file in configs/ loads (with each of its presets) and starts its docstring with its command;
every key the code reads is one of configs/base.py's (or the sweep's default_grid), each commented."""

import glob
import importlib.util
import inspect
import json
import os
import re

import ml_collections
import pytest

from ehr_jax import config_files, main
from ehr_jax.errors import ConfigError
from ehr_jax.evaluation import __main__ as evaluation_cli
from ehr_jax.evaluation import runner
from ehr_jax.model import transformer
from ehr_jax.sweep import grid, loop

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


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_the_code_reads_only_keys_the_config_has(path, monkeypatch):
    """A `config.x.get(key, default)` would hide a key missing from base.py (users could not set
    it): with a ConfigDict.get that refuses missing keys, the readers of every config still work.
    (Attribute reads, the norm, raise on a missing key anyway.)"""
    get = ml_collections.ConfigDict.get

    def strict_get(self, key, default=None):
        assert key in self, f"the code reads config key {key!r}, which the config lacks"
        return get(self, key, default)

    monkeypatch.setattr(ml_collections.ConfigDict, "get", strict_get)
    module = _load(path)
    for preset in _presets(module):
        config = _get_config(module, preset)
        transformer.model_config(config.model, 50, config.data.seq_len)
        runner.EvalSettings.from_config(config)
        if "grid" in config:
            config.data.meds_dir = config.data.meds_dir or "/meds"  # mimic_iv.py's is the user's
            loop.check_config(config)
            grid.expand(config, vocab_size=600, train_tokens=2_000_000)


@pytest.mark.parametrize("path", [os.path.join(REPO, "configs", "base.py"), grid.__file__], ids=os.path.basename)
def test_every_base_key_has_a_comment(path):
    """Each setting carries a comment at the end of its line or on the line above."""
    with open(path) as f:
        lines = f.read().splitlines()
    settings = [i for i, line in enumerate(lines)
                if re.match(r"\s+(config|grid)(\.\w+)+ = ", line) and "ConfigDict()" not in line]
    assert len(settings) > 8
    assert [lines[i] for i in settings if "  # " not in lines[i] and not lines[i - 1].strip().startswith("#")] == []


def test_a_run_config_from_before_a_key_existed_gets_its_default(tmp_path):
    """`python -m ehr_jax.evaluation` reads the run's config.json over base.py's defaults."""
    config = _load(os.path.join(REPO, "configs", "quickstart.py")).get_config("tiny")
    config.eval.num_rollouts = 3
    saved = json.loads(json.dumps(config.to_dict()))  # what the trainer writes
    del saved["eval"]["prompt_len"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = evaluation_cli.load_run_config(str(tmp_path))
    assert loaded.eval.num_rollouts == 3 and tuple(loaded.grid.budgets) == config.grid.budgets
    assert loaded.eval.prompt_len == config_files.load_sibling(os.path.join(REPO, "configs", "base.py")).eval.prompt_len
    assert runner.EvalSettings.from_config(loaded).prompt_len == config.data.seq_len
