"""The report CLI on the shipped example, and clear messages for bad results files."""

import json
import os
import subprocess
import sys

import pytest

from analysis import report, results, study
from analysis.synthetic_results import Law, law_summaries, write_jsonl
from ehr_jax.errors import DataError

EXAMPLE = os.path.join(os.path.dirname(results.__file__), "example_results.jsonl")
FAST = ["--n_boot=100", "--n_boot_parametric=10"]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "analysis.report", *args], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(results.__file__)), timeout=120)


@pytest.mark.slow
def test_cli_on_example_writes_everything(tmp_path):
    out = tmp_path / "analysis"
    proc = _cli(f"--results={EXAMPLE}", f"--out={out}", "--unique_tokens=1e6,4e6", *FAST)
    assert proc.returncode == 0, proc.stderr
    for name in ("fit.json", "report.md", "report.txt", "isoflop.png", "isoflop.svg", "optimal.png",
                 "optimal.svg", "frontier.png", "frontier.svg", "utility.png", "utility.svg", "repetition.png"):
        assert (out / name).stat().st_size > 0, name
    fit = json.loads((out / "fit.json").read_text())  # strict JSON: NaN would not parse back as None
    assert fit["settings"]["n_key"] == "n_params_non_embedding" and fit["settings"]["flops_key"] == "flops"
    for law, exponent in (("n_opt", "a"), ("d_opt", "b")):
        value, (lo, hi) = fit["isoflop"][law][exponent]["value"], fit["isoflop"][law][exponent]["ci"]
        assert lo < value < hi
    assert sum(p["interior"] for p in fit["isoflop"]["profiles"]) >= 3
    headline = fit["headline"]
    assert headline["a"] == fit["isoflop"]["n_opt"]["a"] and headline["b"] == fit["isoflop"]["d_opt"]["b"]
    assert headline["n_budgets_interior"] == 4 and headline["loss_opt_falls_with_c"] is True
    assert fit["parametric"]["a"]["ci"][0] is not None
    assert len(fit["planner"]) == 3 and all(p["budget"] > max(fit["data"]["budgets"]) for p in fit["planner"])
    assert fit["utility"]
    # The example repeats its 4e6 tokens up to ~6 times with no penalty in its law: R*_D has no upper limit.
    assert fit["settings"]["noise_model"] == "residual" and fit["isoflop"]["bootstrap"]["n_boot"] == 100
    assert fit["data_constrained"]["R_star_D"]["value"] > 100
    plans = fit["planner_data_constrained"]
    assert [p["unique_tokens"] for p in plans] == [1e6] * 3 + [4e6] * 3  # --unique_tokens, per default budget
    assert plans[0]["epochs"]["value"] > plans[3]["epochs"]["value"]
    text = (out / "report.txt").read_text()
    assert "a = " in proc.stdout and "Planner" in text and "subject" not in text.lower()
    assert "subject" not in (out / "fit.json").read_text().lower()


def test_total_n_and_6nd_are_selectable():
    s = study.analyze(EXAMPLE, n="total", flops_key="flops_6nd", n_boot=50, n_boot_parametric=0, budgets=[1e13])
    fit = json.loads(json.dumps(s.to_json(), allow_nan=False))
    assert fit["settings"]["n_key"] == "n_params" and fit["settings"]["flops_key"] == "flops_6nd"
    assert [p["budget"] for p in fit["planner"]] == [1e13]
    assert s.dataset.points.n.min() > results.read_dataset(EXAMPLE).points.n.max() / 100  # total N includes 2 V d
    assert (s.dataset.points.c != s.dataset.points.budget).any()  # 6ND varies inside an IsoFLOP group


@pytest.mark.slow
def test_cli_names_file_and_line_of_malformed_input(tmp_path):
    path = tmp_path / "results.jsonl"
    lines = [json.dumps(r) for r in law_summaries(Law(), (1e15, 1e16), sizes_per_budget=3)]
    path.write_text("\n".join(lines[:2] + ["{not json"] + lines[2:]) + "\n")
    proc = _cli(f"--results={path}", f"--out={tmp_path / 'out'}")
    assert proc.returncode != 0
    assert f"{path}:3: not valid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("content, message", [
    ("", "no run summaries (the file is empty)"),
    ("\n\n", "no run summaries (the file is empty)"),
    ("[1, 2]\n", ":1: expected a JSON object"),
    ('{"run_name": "x", "val_loss": 2.0}\n', ":1: run summary lacks n_params"),
    ('{"run_name": "x", "val_loss": 2.0, "n_params": 10, "n_params_non_embedding": 5, "tokens_seen": -1, '
     '"flops": 1e9}\n', ":1: tokens_seen=-1"),
    ('{"run_name": "x", "val_loss": NaN, "n_params": 10}\n', "none of 1 run(s) has a finite val_loss"),
])
def test_bad_results_files_raise_clear_errors(tmp_path, content, message):
    path = tmp_path / "results.jsonl"
    path.write_text(content)
    with pytest.raises(DataError) as info:
        results.read_dataset(str(path))
    assert str(path) in str(info.value) and message in str(info.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="results file not found"):
        results.read_dataset(str(tmp_path / "nope.jsonl"))


def test_one_budget_reports_instead_of_fitting_nonsense(tmp_path):
    path = tmp_path / "results.jsonl"
    write_jsonl(law_summaries(Law(), (1e16,), sizes_per_budget=7, noise=0.002), str(path))
    s = study.analyze(str(path), n_boot=50, n_boot_parametric=5)
    assert s.isoflop.n_opt is None and not s.plans
    text = report.text_report(s)
    assert "share one budget" in text and "not fitted" in text
    written = report.write_report(s, str(tmp_path / "out"))
    assert not any("optimal" in p for p in written)
    fit = json.loads((tmp_path / "out" / "fit.json").read_text())
    assert fit["isoflop"]["n_opt"] is None and fit["planner"] == []


def test_failed_and_duplicate_runs_are_counted(tmp_path):
    rows = law_summaries(Law(), (1e15, 1e16, 1e17), sizes_per_budget=5)
    rows.append({"run_name": "c1e17-broken", "error": "OOM at step 3"})
    rows.append(dict(rows[0]))
    path = tmp_path / "results.jsonl"
    write_jsonl(rows, str(path))
    dataset = results.read_dataset(str(path))
    assert dataset.excluded == {"failed": 1, "non_finite_loss": 0, "duplicate": 1}
    assert len(dataset.points) == 15


@pytest.mark.slow
def test_main_report_is_the_sweeps_hook(tmp_path, capsys):
    """ehr_jax.sweep calls report.main_report(results, out_dir) after the last run."""
    rows = law_summaries(Law(), (1e15, 1e16, 1e17), sizes_per_budget=5, noise=0.002)
    for r in rows:  # the trainer may leave grid_point only inside the saved config
        r["config"] = {"grid_point": r.pop("grid_point")}
    path = tmp_path / "results.jsonl"
    write_jsonl(rows, str(path))
    s = report.main_report(str(path), str(tmp_path / "analysis"), n_boot=100, n_boot_parametric=10)
    assert sorted(set(s.dataset.points.budget)) == [1e15, 1e16, 1e17]
    assert (tmp_path / "analysis" / "fit.json").exists() and "N_opt = k C^a" in capsys.readouterr().out
