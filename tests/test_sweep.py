"""Sweep contracts with a fake trainer: grid expansion, names, skip-finished, failures, exactly-once."""

import json
import math
import os
import shlex
import subprocess
import sys

import ml_collections
import pytest

from ehr_jax import main, rundir, sweep
from ehr_jax.errors import ConfigError
from ehr_jax.model import sizes
from ehr_jax.sweep import commands, grid, loop, registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 300
TRAIN_TOKENS = 200_000


def _config(**grid_overrides) -> ml_collections.ConfigDict:
    """A small grid config; prepared data comes from _fake_prepare."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.data = ml_collections.ConfigDict(
        {"meds_dir": "", "prepared_dir": "", "synthetic_subjects": 10, "seq_len": 64})
    config.model = ml_collections.ConfigDict(
        {"size": "d64-l2", "n_kv_heads": 0, "tie_embeddings": False})
    config.train = ml_collections.ConfigDict(
        {"global_batch_size": 4, "steps": 200, "tokens": 0, "flops": 0.0, "schedule": "cosine",
         "warmup_frac": 0.05, "warmup_steps": 0, "cooldown_frac": 0.2})
    config.eval = ml_collections.ConfigDict({"enabled": False})
    config.grid = grid.default_grid()
    config.grid.budgets = (1e11, 3e11)
    config.grid.sizes = ("d32-l1", "d48-l2")
    config.grid.min_steps = 10
    config.grid.max_epochs = 100.0
    config.grid.min_sizes = 0
    config.grid.analysis = False
    config.grid.compilation_cache = False
    for key, value in grid_overrides.items():
        config.grid[key] = value
    return config


def _fake_prepare(config, workdir):
    prepared = os.path.join(workdir, "prepared")
    os.makedirs(prepared, exist_ok=True)
    manifest = {"vocab_size": VOCAB, "splits": {"train": {"num_tokens": TRAIN_TOKENS}},
                "meds_dir": os.path.join(workdir, "meds")}
    with open(os.path.join(prepared, "manifest.json"), "w") as handle:
        json.dump(manifest, handle)
    return prepared


class FakeTrainer:
    """Writes summary.json like the real trainer; can fail or die on chosen runs."""

    def __init__(self, fail=(), die_after_summary=()):
        self.calls, self.fail, self.die_after_summary = [], set(fail), set(die_after_summary)
        self.configs = {}

    def __call__(self, cfg, run_dir, prepared_dir):
        name = os.path.basename(run_dir)
        self.calls.append(name)
        self.configs[name] = cfg
        if name.startswith("stable-"):  # a wsd stable run: no grid point, a step count
            if name in self.fail:
                raise RuntimeError(f"boom in {name}")
            os.makedirs(run_dir, exist_ok=True)
            with open(os.path.join(run_dir, "summary.json"), "w") as handle:
                json.dump({"run_name": name, "steps": cfg.train.steps}, handle)
            return {}
        assert cfg.train.flops == cfg.grid_point.budget and cfg.model.size == cfg.grid_point.size
        assert cfg.seed == cfg.grid_point.seed
        # Both data dirs pinned: a run must not generate synthetic data into its own run dir.
        assert cfg.data.meds_dir == os.path.join(os.path.dirname(os.path.dirname(run_dir)), "meds")
        assert cfg.data.prepared_dir.startswith("/") and cfg.data.prepared_dir == prepared_dir
        if name in self.fail:
            raise RuntimeError(f"boom in {name}")
        os.makedirs(run_dir, exist_ok=True)
        summary = {"run_name": name, "val_loss": 1.0, "flops": cfg.train.flops,
                   "seed": cfg.seed, "grid_point": cfg.grid_point.to_dict()}
        with open(os.path.join(run_dir, "summary.json"), "w") as handle:
            json.dump(summary, handle)
        if name in self.die_after_summary:
            raise KeyboardInterrupt  # a kill between summary.json and results.jsonl
        return summary


def _run(config, workdir, trainer, **kwargs):
    """The sweep as main runs it (minus the analysis): raises SweepFailed when a run failed."""
    outcome = sweep.run(config, str(workdir), _fake_prepare(config, str(workdir)), trainer,
                        **kwargs)
    if "commands" not in outcome:
        sweep.raise_if_failed(outcome, str(workdir))
    return outcome


def _result_names(workdir):
    return [line["run_name"] for line in registry.read_results(str(workdir))]


def test_grid_expansion_names_and_token_budgets():
    runs = grid.expand(_config(), vocab_size=VOCAB, train_tokens=TRAIN_TOKENS)
    assert [r.name for r in runs] == ["c1e11-d32-l1", "c1e11-d48-l2", "c3e11-d32-l1",
                                      "c3e11-d48-l2"]
    for r in runs:
        fpt = sizes.flops_per_token(sizes.get_size(r.size), VOCAB, 64)
        assert r.tokens == pytest.approx(r.budget / fpt)
        assert r.steps == round(r.tokens / (4 * 64))
        assert r.epochs == pytest.approx(r.steps * 4 * 64 / TRAIN_TOKENS)
    assert grid.budget_tag(2.5e11) == "c2.5e11" and grid.budget_tag(9.999e14) == "c1e15"


def test_per_budget_and_auto_sizes():
    per_budget = _config(sizes=(("d32-l1",), ("d48-l2", "d64-l2")))
    names = [r.name for r in grid.expand(per_budget, vocab_size=VOCAB, train_tokens=1)]
    assert names == ["c1e11-d32-l1", "c3e11-d48-l2", "c3e11-d64-l2"]
    auto = _config(sizes=(), budgets=(1e12, 1e15), sizes_per_budget=3, max_epochs=0.0)
    runs = grid.expand(auto, vocab_size=VOCAB, train_tokens=1)
    small, large = [r.n_params for r in runs[:3]], [r.n_params for r in runs[3:]]
    assert len(runs) == 6 and max(small) < min(large)  # auto sizes grow with the budget
    with pytest.raises(ConfigError, match="config.grid.sizes"):
        grid.expand(_config(sizes=(("d32-l1",),)), vocab_size=VOCAB, train_tokens=1)
    with pytest.raises(ConfigError, match="d9-l9"):
        grid.expand(_config(sizes=("d9-l9",)), vocab_size=VOCAB, train_tokens=1)


def test_meaningless_runs_are_left_out_and_listed(tmp_path):
    # d48-l2 at 1e11 has about 860 steps; at 3e11, d32-l1 passes over 200k tokens 10 times.
    config = _config(min_steps=1000, max_epochs=5.0)
    trainer = FakeTrainer()
    _run(config, tmp_path, trainer)
    skipped = json.loads((tmp_path / "skipped.json").read_text())
    reasons = {s["name"]: s["skip_reason"] for s in skipped}
    assert "min_steps" in reasons["c1e11-d48-l2"] and "max_epochs" in reasons["c3e11-d32-l1"]
    assert sorted(trainer.calls) == sorted({"c1e11-d32-l1", "c3e11-d48-l2"})


def test_run_config_is_a_single_run_with_its_grid_point():
    point = grid.expand(_config(), vocab_size=VOCAB, train_tokens=TRAIN_TOKENS)[1]
    cfg = grid.run_config(_config(), point, "/abs/prepared")
    assert "grid" not in cfg and cfg.model.size == "d48-l2"
    assert (cfg.train.steps, cfg.train.tokens, cfg.train.flops) == (0, 0, 1e11)
    assert cfg.grid_point.to_dict() == {"budget": 1e11, "size": "d48-l2", "seed": 0}
    assert cfg.data.prepared_dir == "/abs/prepared"


def test_finished_runs_are_skipped_and_results_hold_each_run_once(tmp_path):
    first = FakeTrainer()
    outcome = _run(_config(), tmp_path, first)
    assert len(first.calls) == 4 and outcome["failed"] == []
    second = FakeTrainer()
    _run(_config(), tmp_path, second)
    assert second.calls == []
    assert sorted(_result_names(tmp_path)) == sorted(first.calls)
    assert all(os.path.isdir(tmp_path / "runs" / name) for name in first.calls)


def test_one_failing_run_does_not_stop_the_others(tmp_path):
    with pytest.raises(sweep.SweepFailed, match="c1e11-d48-l2"):
        _run(_config(), tmp_path, FakeTrainer(fail={"c1e11-d48-l2"}))
    assert len(_result_names(tmp_path)) == 3
    failure = json.loads((tmp_path / "failures.jsonl").read_text().splitlines()[0])
    assert failure["run_name"] == "c1e11-d48-l2" and "boom" in failure["message"]
    retry = FakeTrainer()
    _run(_config(), tmp_path, retry)
    assert retry.calls == ["c1e11-d48-l2"] and len(_result_names(tmp_path)) == 4


def test_kill_between_summary_and_results_then_rerun_is_exactly_once(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _run(_config(), tmp_path, FakeTrainer(die_after_summary={"c1e11-d48-l2"}))
    assert _result_names(tmp_path) == ["c1e11-d32-l1"]
    rerun = FakeTrainer()
    _run(_config(), tmp_path, rerun)
    assert "c1e11-d48-l2" not in rerun.calls  # finished before the kill: not retrained
    names = _result_names(tmp_path)
    assert sorted(names) == sorted(set(names)) and len(names) == 4


def test_kill_during_results_write_keeps_the_old_file(tmp_path, monkeypatch):
    _run(_config(budgets=(1e11,)), tmp_path, FakeTrainer())
    before = (tmp_path / "results.jsonl").read_text()

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(rundir.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        _run(_config(), tmp_path, FakeTrainer())
    assert (tmp_path / "results.jsonl").read_text() == before  # never half a line
    monkeypatch.undo()
    _run(_config(), tmp_path, FakeTrainer())
    names = _result_names(tmp_path)
    assert len(names) == 4 == len(set(names))


def test_evaluation_runs_once_per_finished_run(tmp_path):
    calls = []

    def evaluate(run_dir, cfg, prepared_dir):
        calls.append(os.path.basename(run_dir))
        return {"mortality": {"probe": {"auroc": 0.7}}}

    config = _config(budgets=(1e11,))
    config.eval.enabled = True
    _run(config, tmp_path, FakeTrainer(), evaluate_fn=evaluate)
    _run(config, tmp_path, FakeTrainer(), evaluate_fn=evaluate)
    assert sorted(calls) == ["c1e11-d32-l1", "c1e11-d48-l2"]
    for line in registry.read_results(str(tmp_path)):
        assert line["evaluation"]["mortality"]["probe"]["auroc"] == 0.7
    summary = json.loads((tmp_path / "runs" / "c1e11-d32-l1" / "summary.json").read_text())
    assert "evaluation" in summary


def test_evaluating_a_finished_sweep_updates_its_results_lines(tmp_path):
    config = _config(budgets=(1e11,))
    _run(config, tmp_path, FakeTrainer())
    assert all("evaluation" not in line for line in registry.read_results(str(tmp_path)))
    config.eval.enabled = True
    _run(config, tmp_path, FakeTrainer(), evaluate_fn=lambda run_dir, cfg, prepared_dir: {"mortality": {}})
    lines = registry.read_results(str(tmp_path))
    assert sorted(line["run_name"] for line in lines) == ["c1e11-d32-l1", "c1e11-d48-l2"]
    assert all(line["evaluation"] == {"mortality": {}} for line in lines)


def test_analysis_runs_at_the_end_and_its_failure_is_reported(tmp_path, monkeypatch):
    from analysis import report

    seen = []
    config = _config(budgets=(1e11,), analysis=True)
    outcome = _run(config, tmp_path, FakeTrainer())
    monkeypatch.setattr(report, "main_report",
                        lambda results, out, n: seen.append((results, out, n)))
    main.write_analysis(str(tmp_path), outcome, n="total")
    assert seen == [(str(tmp_path / "results.jsonl"), str(tmp_path / "analysis"), "total")]

    def broken(results, out, n):
        raise ValueError("too few budgets")

    monkeypatch.setattr(report, "main_report", broken)
    main.write_analysis(str(tmp_path), outcome)
    with pytest.raises(sweep.SweepFailed, match="analysis"):
        sweep.raise_if_failed(outcome, str(tmp_path))
    assert "too few budgets" in (tmp_path / "failures.jsonl").read_text()


def test_only_runs_the_named_runs(tmp_path):
    trainer = FakeTrainer()
    _run(_config(only="c3e11-d48-l2"), tmp_path, trainer)
    assert trainer.calls == ["c3e11-d48-l2"]
    with pytest.raises(ConfigError, match="c9e9-d32-l1"):
        _run(_config(only="c9e9-d32-l1"), tmp_path, trainer)


@pytest.mark.slow
def test_dry_run_commands_round_trip_through_config_flags(tmp_path, capsys):
    config = _config(dry_run=True)
    points = [p for p in grid.expand(config, vocab_size=VOCAB, train_tokens=TRAIN_TOKENS)]
    printed = commands.print_commands([p.name for p in points], str(tmp_path), "/abs/prepared",
                                      "configs/quickstart.py:tiny",
                                      {"grid.dry_run": True, "train.lr": 0.001})
    assert capsys.readouterr().out.splitlines() == printed
    assert (tmp_path / "commands.txt").read_text().splitlines() == printed
    argv = shlex.split(printed[2])
    assert argv[:3] == ["python", "-m", "ehr_jax.main"]
    # Parse the command's flags the way main does (config_flags needs the global FLAGS).
    parse = ("import sys, json; from absl import flags; from ml_collections import config_flags;"
             "c = config_flags.DEFINE_config_file('config'); flags.DEFINE_string('workdir', '', '');"
             "flags.FLAGS(sys.argv); print(json.dumps([c.value.grid.only, c.value.grid.dry_run,"
             " c.value.train.lr, c.value.data.prepared_dir, flags.FLAGS.workdir]))")
    out = subprocess.run([sys.executable, "-c", parse] + argv[3:], capture_output=True,
                         text=True, check=True, cwd=REPO).stdout
    assert json.loads(out) == ["c3e11-d32-l1", False, 0.001, "/abs/prepared", str(tmp_path)]


def test_dry_run_trains_nothing(tmp_path):
    trainer = FakeTrainer()
    with pytest.raises(ConfigError, match="--config=FILE"):
        _run(_config(dry_run=True), tmp_path, trainer)
    outcome = _run(_config(dry_run=True), tmp_path, trainer,
                   command_line=("configs/quickstart.py", {}))
    assert trainer.calls == [] and len(outcome["commands"]) == 4


def test_missing_meds_dir_without_synthetic_data_is_a_config_error(tmp_path):
    config = _config()
    config.data.synthetic_subjects = 0
    with pytest.raises(ConfigError, match="config.data.meds_dir"):
        _run(config, tmp_path, FakeTrainer())


def test_compilation_cache_lives_in_the_sweep_dir(tmp_path, monkeypatch):
    import jax

    # Other tests share a persistent cache; the sweep keeps a user's choice, so clear it here.
    previous = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", None)
    updates = {}
    monkeypatch.setattr(jax.config, "update", lambda key, value: updates.__setitem__(key, value))
    try:
        _run(_config(budgets=(1e11,), compilation_cache=True), tmp_path, FakeTrainer())
    finally:
        monkeypatch.undo()
        jax.config.update("jax_compilation_cache_dir", previous)
    assert updates["jax_compilation_cache_dir"] == str(tmp_path / "jax_cache")


@pytest.mark.slow
def test_main_dry_run_prints_one_command_per_run(tmp_path):
    """`--dry_run` through the real entry point: data prepared once, nothing trained."""
    workdir = tmp_path / "sweep"
    done = subprocess.run(
        [sys.executable, "-m", "ehr_jax.main", "--config=configs/quickstart.py:tiny",
         f"--workdir={workdir}", "--dry_run", "--config.train.lr=0.002"],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    commands = [line for line in done.stdout.splitlines() if line.startswith("python ")]
    assert len(commands) == 4 and not (workdir / "runs").exists()
    assert all("--config.grid.only=c" in c and "--config.train.lr=0.002" in c for c in commands)
    assert all("--dry_run" not in c for c in commands)
    assert (workdir / "prepared" / "manifest.json").exists()


def test_eta_separates_per_run_overhead_from_compute():
    def seconds(c):
        return 20.0 + c / 1e10

    timings = [(c, seconds(c)) for c in (6e10, 6e10, 2e11)]
    assert loop._eta_seconds(timings, [6e11, 6e11]) == pytest.approx(2 * seconds(6e11))
    assert loop._eta_seconds(timings[:1], [6e10]) == pytest.approx(seconds(6e10))
    assert loop._eta_seconds([], [6e10]) is None


def test_seeds_are_a_grid_axis_and_one_seed_keeps_todays_names():
    one = grid.expand(_config(budgets=(1e11,)), vocab_size=VOCAB, train_tokens=TRAIN_TOKENS)
    assert [r.name for r in one] == ["c1e11-d32-l1", "c1e11-d48-l2"]
    assert {r.seed for r in one} == {0}
    three = grid.expand(_config(budgets=(1e11,), seeds=(0, 1, 2)), vocab_size=VOCAB,
                        train_tokens=TRAIN_TOKENS)
    assert [r.name for r in three][:3] == ["c1e11-d32-l1-s0", "c1e11-d32-l1-s1",
                                           "c1e11-d32-l1-s2"]
    cfg = grid.run_config(_config(), three[2], "/abs/prepared")
    assert cfg.seed == 2 and cfg.grid_point.seed == 2
    for bad in ((), (1, 1), (-1,)):
        with pytest.raises(ConfigError, match="config.grid.seeds"):
            grid.expand(_config(seeds=bad), vocab_size=VOCAB, train_tokens=TRAIN_TOKENS)


def test_seeded_sweep_keeps_one_results_line_per_seed(tmp_path):
    trainer = FakeTrainer()
    _run(_config(budgets=(1e11,), seeds=(0, 1)), tmp_path, trainer)
    lines = registry.read_results(str(tmp_path))
    assert sorted((line["run_name"], line["seed"], line["grid_point"]["seed"]) for line in lines) \
        == [("c1e11-d32-l1-s0", 0, 0), ("c1e11-d32-l1-s1", 1, 1), ("c1e11-d48-l2-s0", 0, 0),
            ("c1e11-d48-l2-s1", 1, 1)]


def _wsd(**grid_overrides):
    config = _config(**grid_overrides)
    config.train.schedule = "wsd"
    config.train.cooldown_frac = 0.2
    config.train.warmup_frac = 0.05
    config.data.seq_len = 64
    return config


def test_wsd_points_branch_from_one_stable_run_per_size_and_seed():
    config = _wsd(budgets=(1e11, 2e11, 4e11), seeds=(0, 1))
    points, stables = grid.branches(config, grid.expand(config, vocab_size=VOCAB,
                                                        train_tokens=TRAIN_TOKENS))
    assert [s.name for s in stables] == ["stable-d32-l1-s0", "stable-d48-l2-s0",
                                         "stable-d32-l1-s1", "stable-d48-l2-s1"]
    for stable in stables:
        family = [p for p in points if p.stable == stable.name]
        assert len(family) == 3 and {p.seed for p in family} == {stable.seed}
        starts = [round(p.steps * 0.8) for p in family]
        assert [p.branch_step for p in family] == starts
        assert stable.steps == max(starts) and stable.keep_steps == tuple(sorted(starts))
        assert {p.warmup_steps for p in family} == {stable.warmup_steps}
        assert stable.warmup_steps == round(0.05 * min(p.steps for p in family))
        for p in family:  # a branch costs its cooldown
            assert p.cost == pytest.approx(p.budget * (p.steps - p.branch_step) / p.steps,
                                           rel=1e-3)
    total = sum(s.cost for s in stables) + sum(p.cost for p in points)
    assert total == pytest.approx(4 * (0.8 * 4e11 + 0.2 * 7e11), rel=0.01)  # vs 4 * 7e11
    cosine = _config(budgets=(1e11, 2e11))
    same, none = grid.branches(cosine, grid.expand(cosine, vocab_size=VOCAB, train_tokens=1))
    assert none == [] and all(not p.stable for p in same)
    config.train.cooldown_frac = 0.0
    with pytest.raises(ConfigError, match="train.cooldown_frac"):
        grid.branches(config, points)


def test_wsd_sweep_trains_stable_runs_then_branches_and_resumes(tmp_path):
    config = _wsd(budgets=(1e11, 2e11))
    trainer = FakeTrainer()
    _run(config, tmp_path, trainer)
    # The costliest stable run first (sweep processes sharing the workdir end together).
    assert trainer.calls == ["stable-d48-l2", "c1e11-d48-l2", "c2e11-d48-l2",
                             "stable-d32-l1", "c1e11-d32-l1", "c2e11-d32-l1"]
    stable = trainer.configs["stable-d32-l1"]
    branch = trainer.configs["c1e11-d32-l1"]
    assert "grid_point" not in stable and stable.train.cooldown_frac == 0.0
    assert stable.train.schedule == branch.train.schedule == "wsd"
    assert stable.train.warmup_steps == branch.train.warmup_steps > 0
    assert branch.train.branch_from == str(tmp_path / "runs" / "stable-d32-l1")
    assert branch.train.branch_step in stable.train.keep_steps
    assert max(stable.train.keep_steps) == stable.train.steps
    assert sorted(_result_names(tmp_path)) == sorted(n for n in trainer.calls
                                                     if not n.startswith("stable"))
    rerun = FakeTrainer()
    _run(config, tmp_path, rerun)
    assert rerun.calls == []
    # A larger budget: the stable runs continue (from their last checkpoint) to the new step.
    grown = FakeTrainer()
    _run(_wsd(budgets=(1e11, 2e11, 4e11)), tmp_path, grown)
    assert grown.calls == ["stable-d48-l2", "c4e11-d48-l2", "stable-d32-l1", "c4e11-d32-l1"]
    assert grown.configs["stable-d32-l1"].train.steps > stable.train.steps
    assert len(_result_names(tmp_path)) == 6


def test_a_failed_stable_run_fails_its_branches_only(tmp_path):
    with pytest.raises(sweep.SweepFailed, match="c1e11-d32-l1"):
        _run(_wsd(budgets=(1e11,)), tmp_path, FakeTrainer(fail={"stable-d32-l1"}))
    assert _result_names(tmp_path) == ["c1e11-d48-l2"]
    failures = [json.loads(line)["run_name"]
                for line in (tmp_path / "failures.jsonl").read_text().splitlines()]
    assert failures == ["stable-d32-l1", "c1e11-d32-l1"]
    retry = FakeTrainer()
    _run(_wsd(budgets=(1e11,)), tmp_path, retry)
    assert retry.calls == ["stable-d32-l1", "c1e11-d32-l1"]


def test_wsd_only_and_dry_run_order_stable_runs_first(tmp_path):
    trainer = FakeTrainer()
    _run(_wsd(only="c3e11-d48-l2"), tmp_path, trainer)
    assert trainer.calls == ["stable-d48-l2", "c3e11-d48-l2"]
    outcome = _run(_wsd(dry_run=True), tmp_path, FakeTrainer(),
                   command_line=("configs/quickstart.py", {}))
    names = [c.split("--config.grid.only=")[1] for c in outcome["commands"]]
    assert names == ["stable-d32-l1", "stable-d48-l2", "c1e11-d32-l1", "c1e11-d48-l2",
                     "c3e11-d32-l1", "c3e11-d48-l2"]


def _auto(**overrides):
    config = _config(sizes=(), sizes_per_budget=5, max_epochs=20.0, min_steps=50, **overrides)
    return config


def _kept_by_budget(runs):
    out = {}
    for r in runs:
        out.setdefault(r.budget, []).append(r)
    return {c: [r.size for r in rs if not r.skip_reason] for c, rs in out.items()}


def test_auto_sizes_surround_the_expected_optimum_or_the_budget_is_left_out():
    ladder = list(sizes.LADDER)
    runs = grid.expand(_auto(budgets=(1e13, 1e14)), vocab_size=VOCAB, train_tokens=10**9)
    for budget, kept in _kept_by_budget(runs).items():
        expected = next(r.expected for r in runs if r.budget == budget)
        positions = [ladder.index(n) for n in kept]
        assert len(kept) == 5 and positions == list(range(positions[0], positions[0] + 5))
        assert positions[2] == ladder.index(expected)  # centred: two on each side
        ratio = {r.size: r.tokens / r.n_params for r in runs if r.budget == budget}
        assert abs(math.log(ratio[expected] / 20)) < abs(math.log(ratio[kept[1]] / 20))
    # 2e5 train tokens: at 1e14 the D = 20 N optimum would pass over the data far more than 20
    # times; the whole budget is left out, saying why.
    runs = grid.expand(_auto(budgets=(1e11, 1e14)), vocab_size=VOCAB, train_tokens=TRAIN_TOKENS)
    kept = _kept_by_budget(runs)
    assert len(kept[1e11]) == 5 and kept[1e14] == []
    reasons = {r.skip_reason for r in runs if r.budget == 1e14}
    assert any("expected optimum" in r and "max_epochs" in r for r in reasons)


def test_a_fitted_law_places_the_sizes(tmp_path):
    fit = {"settings": {"n_key": "total", "flops_key": "flops"},
           "isoflop": {"n_opt": {"k": {"value": 1.0}, "a": {"value": 0.5}}}}
    path = tmp_path / "fit.json"
    path.write_text(json.dumps(fit))
    runs = grid.expand(_auto(budgets=(1e13,), optimum_law=str(path)), vocab_size=VOCAB,
                       train_tokens=10**9)
    expected = {r.expected for r in runs}.pop()
    n = {r.size: r.n_params for r in runs}
    closest = min(sizes.LADDER, key=lambda name: abs(math.log(
        sizes.n_params(sizes.get_size(name), VOCAB)[0] / math.sqrt(1e13))))
    assert expected == closest and n[expected] > 0
    with pytest.raises(ConfigError, match="config.grid.optimum_law"):
        grid.expand(_auto(budgets=(1e13,), optimum_law=str(tmp_path / "none.json")),
                    vocab_size=VOCAB, train_tokens=10**9)


def test_named_sizes_need_min_sizes_kept_per_budget():
    config = _config(sizes=("d16-l1", "d24-l1", "d32-l1", "d48-l2", "d64-l2"), budgets=(1e11,),
                     min_sizes=5, min_steps=1000)  # the larger sizes get too few steps
    runs = grid.expand(config, vocab_size=VOCAB, train_tokens=TRAIN_TOKENS)
    assert all(r.skip_reason for r in runs)
    assert any("config.grid.min_sizes=5" in r.skip_reason for r in runs)


def test_dry_run_prints_sizes_per_budget_and_wsd_savings(tmp_path, capsys):
    config = _wsd(budgets=(1e11, 3e11), dry_run=True)
    _run(config, tmp_path, FakeTrainer(), command_line=("configs/quickstart.py", {}))
    out = capsys.readouterr().out
    assert "C=1e+11: 2 sizes kept: [d32-l1] d48-l2; expected optimum d32-l1 has 0 kept sizes" in out
    assert "wsd cooldown branches from 2 stable runs" in out and "H100-seconds" in out
    assert "40% MFU" in out
