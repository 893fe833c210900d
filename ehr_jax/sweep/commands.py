"""Dry runs for launchers: one `ehr_jax.main` command per run of the sweep.

Each command goes through the sweep (not a bare single run), so its run lands in
<workdir>/runs/<name>, is skipped when finished, and reaches results.jsonl exactly once.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from ehr_jax import rundir

# Overrides a per-run launcher command must not repeat: it sets them itself.
LAUNCH_OWNED_KEYS = ("grid.dry_run", "grid.only", "data.prepared_dir")


def launch_command(name: str, workdir: str, prepared_dir: str, config_file: str,
                   overrides: dict) -> str:
    """The `ehr_jax.main` command that trains one run of this sweep (same grid, grid.only=name)."""
    args = sweep_args("python", workdir, config_file, overrides,
                      {"data.prepared_dir": prepared_dir, "grid.only": name})
    return " ".join(shlex.quote(a) for a in args)


def sweep_args(python: str, workdir: str, config_file: str, overrides: dict,
               owned: dict[str, object]) -> list[str]:
    """argv of `python -m ehr_jax.main` for this sweep's config and overrides, with the keys in
    `owned` (and LAUNCH_OWNED_KEYS) set by the caller instead of repeated."""
    args = [python, "-m", "ehr_jax.main", f"--config={config_file}", f"--workdir={workdir}"]
    for key, value in overrides.items():
        if key not in LAUNCH_OWNED_KEYS and key not in owned:
            args.append(f"--config.{key}={value}")
    return args + [f"--config.{key}={value}" for key, value in owned.items()]


def print_commands(names: list[str], workdir: str, prepared_dir: str, config_file: str,
                   overrides: dict, *, write: bool = True) -> list[str]:
    """Prints one command per run and (when `write`) puts them in <workdir>/commands.txt."""
    commands = [launch_command(name, workdir, prepared_dir, config_file, overrides)
                for name in names]
    for command in commands:
        print(command, flush=True)
    if write:
        rundir.write_text_atomic(Path(workdir) / rundir.COMMANDS,
                                 "".join(c + "\n" for c in commands))
    return commands
