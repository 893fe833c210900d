"""Every command in README.md and docs/*.md runs as written (shrunk to seconds where it is long).

The commands are read from the files (```bash blocks and inline `python -m ...` spans), so a
command the docs change is tested at once, and a new one must be given a way to run here
(`_invocation`) or a reason it cannot (NOT_RUN). Cheap commands run for real on 40 synthetic
patients; long trainings run with --validate_only (config, flags and workdir checked, nothing
written); tensorboard reads the event files the smoke run wrote.
"""

import glob
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

import train_fixtures

REPO = train_fixtures.REPO
DOC_FILES = ["README.md"] + sorted(os.path.relpath(p, REPO)
                                   for p in glob.glob(os.path.join(REPO, "docs", "*.md")))
# Commands that cannot run in a test, by prefix, and why.
NOT_RUN = {
    "python -m venv ~/venvs/mimic-meds": "makes a venv for the MIMIC-IV ETL (credentialed data)",
    ". ~/venvs/mimic-meds/bin/activate": "enters that venv",
    "pip install MIMIC_IV_MEDS": "the MIMIC-IV ETL, installed in its own venv",
    "export DATASET_DOWNLOAD_USERNAME": "PhysioNet credentials",
    "MEDS_extract-MIMIC_IV": "downloads credentialed MIMIC-IV",
    "python3 -m pytest": "this test suite itself",
    "python -m ehr_jax.data.prepare --meds_dir=DIR --out_dir=DIR --engine=beam":
        "the Beam engine on DirectRunner: tests/test_beam_prepare.py runs it",
    "python -m ehr_jax.data.prepare --meds_dir=gs://": "Google Cloud Dataflow",
}
TINY_RUN = ["--config.train.steps=2", "--config.train.checkpoint_every=1",
            "--config.data.synthetic_subjects=40", "--config.train.eval_tokens=512"]
TINY_EVAL = ["--config.eval.max_cases=8",
             "--config.eval.num_rollouts=2", "--config.eval.max_new_tokens=16",
             "--config.eval.bootstrap=10", "--config.eval.probe=False"]


def doc_commands() -> list[tuple[str, str]]:
    """(file, command) for each ```bash line (continuations joined, && split) and inline span."""
    found = []
    for name in DOC_FILES:
        text = open(os.path.join(REPO, name)).read()
        for block in re.findall(r"```bash\n(.*?)```", text, re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"\s+#.*$", "", line).strip()
                if line.startswith(("#", "...")):  # a comment, or a fragment of the line above
                    continue
                found += [(name, part.strip()) for part in line.split("&&") if part.strip()]
        for span in re.findall(r"`((?:python3? -m|tensorboard) [^`]+)`", text):
            found.append((name, span))
    return found


def _args(command: str) -> list[str]:
    """The command's words with [optional] flags kept and [--KEY=VALUE ...] placeholders dropped."""
    command = re.sub(r"(?<=\s)\[([^\]]*)\]", lambda m: "" if "..." in m.group(1) else m.group(1), command)
    return shlex.split(command)


def _invocation(command: str, tmp) -> tuple[str, list[str]] | None:
    """(stage, argv to run) with paths moved into tmp and sizes shrunk; None for NOT_RUN."""
    if any(command.startswith(prefix) for prefix in NOT_RUN):
        return None
    if " --engine=beam" in command:
        return None  # Apache Beam jobs: tests/test_beam_prepare.py runs the engines on DirectRunner
    words = _args(command.replace("$HOME/mimic/MEDS_cohort", f"{tmp}/meds")
                  .replace("$HOME/mimic/prepared", f"{tmp}/prepared"))
    if words[0] == "tensorboard":
        return "tensorboard", ["tensorboard", "--inspect", f"--logdir={tmp}/runs"]
    assert words[0] in ("python", "python3") and words[1] == "-m", command
    module, flags = words[2], words[3:]
    if module == "pip":
        return "pip", flags
    if module == "ruff":
        return "ruff", [sys.executable, "-m", "ruff", *flags]
    out = []
    for flag in flags:
        key, _, value = flag.partition("=")
        if module == "ehr_jax.synthetic" and key == "--out":
            value = f"{tmp}/meds"
        elif module == "ehr_jax.synthetic" and key == "--num_subjects":
            value = "40"
        elif key in ("--meds_dir", "--out_dir") or module == "ehr_jax.synthetic" and value in (
                "N", "S"):
            value = {"--meds_dir": f"{tmp}/meds", "--out_dir": f"{tmp}/prepared"}.get(key, "0")
        elif key == "--workdir" and module == "ehr_jax.evaluation":
            value = f"{tmp}/runs/smoke"
        elif key == "--write_labels":
            value = f"{tmp}/labels"
        elif key == "--config.eval.labels_dir":
            value = f"{tmp}/aces_tasks"  # test_docs_commands_run_as_written links its tasks
        elif key == "--workdir":
            value = f"{tmp}/runs/{os.path.basename(value)}"
        elif key == "--results":
            value = os.path.join(REPO, "analysis", "example_results.jsonl")
        elif key == "--out":
            value = f"{tmp}/analysis"
        elif key in ("--a", "--b"):  # two sweeps: test_docs_commands_run_as_written fills them
            value = f"{tmp}/sweep_{key[2:]}"
        out.append(f"{key}={value}" if value else key)
    if module == "ehr_jax.synthetic" and "--overwrite" not in out:
        out.append("--overwrite")  # the docs' commands share one output folder here
    if module == "ehr_jax.prepare" and not out:
        out = [f"--meds_dir={tmp}/meds", f"--out_dir={tmp}/prepared"]
    if module == "ehr_jax.sweep.compare" and not out:
        out = [f"--a={tmp}/sweep_a", f"--b={tmp}/sweep_b"]
    argv = [sys.executable, "-m", module, *out]
    if module == "ehr_jax.main":
        smoke = "configs/smoke.py" in command and "runs/smoke" in command
        return ("train", argv + TINY_RUN) if smoke else ("validate", argv + ["--validate_only"])
    if module == "ehr_jax.evaluation":
        tasks = [] if "--config.eval.tasks" in command else ["--config.eval.tasks=mortality"]
        return "evaluate", argv + TINY_EVAL + tasks
    return {"ehr_jax.synthetic": "generate", "ehr_jax.data.prepare": "prepare",
            "ehr_jax.prepare": "prepare", "analysis.report": "report",
            "ehr_jax.sweep.compare": "compare"}[module], argv


def _check_pip(flags: list[str]) -> None:
    """The install command names files and extras that exist (installing is CI's job)."""
    constraints = flags[flags.index("-c") + 1]
    assert os.path.exists(os.path.join(REPO, constraints)), constraints
    target = flags[flags.index("-e") + 1]
    match = re.fullmatch(r"\.(?:\[(.*)\])?", target)
    assert match, f"pip install -e {target}: expected . or .[extra,...]"
    extras = match.group(1).split(",") if match.group(1) else []
    setup = open(os.path.join(REPO, "setup.py")).read()
    assert all(f'"{extra}":' in setup for extra in extras), extras


@pytest.mark.slow
def test_docs_commands_run_as_written(tmp_path):
    commands = doc_commands()
    assert len(commands) >= 15, commands  # the extraction still finds the docs' commands
    plan: dict[str, list] = {}
    source = {}  # argv -> where the docs have it, for failure messages
    for name, command in commands:
        invocation = _invocation(command, tmp_path)
        if invocation is not None:
            stage, argv = invocation
            source.setdefault(tuple(argv), f"{name}: {command}")
            if argv not in plan.setdefault(stage, []):
                plan[stage].append(argv)
    for flags in plan.pop("pip"):
        _check_pip(flags)
    env = train_fixtures.child_env(1)
    order = ["generate", "prepare", "train", "evaluate", "tensorboard", "ruff", "report",
             "compare"]
    for name in ("sweep_a", "sweep_b"):  # two sweeps' results for ehr_jax.sweep.compare
        os.makedirs(tmp_path / name)
        shutil.copy(os.path.join(REPO, "analysis", "example_results.jsonl"),
                    tmp_path / name / "results.jsonl")
    assert set(plan) <= set(order) | {"validate"}, plan.keys()
    running = []
    for stage in order:
        if stage == "train":  # the data the docs' commands name exists now; checks only read
            running = [subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
                       for argv in plan.pop("validate")]
        for argv in plan.get(stage, []):
            if f"--config.eval.labels_dir={tmp_path}/aces_tasks" in argv:  # the docs' ACES tasks:
                for task in ("inhospital_mortality", "death_30d"):  # the labels written above
                    os.makedirs(tmp_path / "aces_tasks", exist_ok=True)
                    os.symlink(tmp_path / "labels" / "mortality", tmp_path / "aces_tasks" / task)
            done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True,
                                  timeout=600)
            assert done.returncode == 0, (source[tuple(argv)], argv,
                                          (done.stdout + done.stderr)[-3000:])
            if stage == "tensorboard":
                assert "Found event files in" in done.stdout and "loss" in done.stdout
    for process in running:
        output = process.communicate(timeout=600)[0]
        assert process.returncode == 0 and "ok: the config is valid" in output, (
            source[tuple(process.args)], output[-3000:])
    assert os.path.exists(tmp_path / "analysis" / "fit.json")
    assert "evaluation" in open(tmp_path / "runs" / "smoke" / "summary.json").read()
