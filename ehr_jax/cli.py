"""Command lines of ehr_jax's programs: absl flags, with every user mistake as one `error:` line.

absl parses the flags before main() runs, and ml_collections loads the --config file while it
parses, so a missing config file, an unknown --config.KEY, a value of the wrong type or an
unknown preset used to surface as tracebacks (or absl's exit status 1). `run(main)` parses them
here instead: each mistake is printed as `error: ...` and the program exits with status 2, the
same as an EhrJaxError raised later (`fail`).
"""

from __future__ import annotations

import difflib
import os
import sys
from typing import Callable, NoReturn

from absl import app, flags
from ml_collections.config_dict import ConfigDict
from ml_collections.config_flags import config_flags  # the module: is_config_flag, parsers

from ehr_jax.errors import EhrJaxError

EXIT_USER_ERROR = 2


def fail(message: object) -> NoReturn:
    """Prints `error: message` (no traceback) and exits with status 2."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


def run(main: Callable[[list[str]], None]) -> None:
    """absl's app.run with parse_flags as the flag parser."""
    app.run(main, flags_parser=parse_flags)


def parse_flags(argv: list[str]) -> list[str]:
    """flags.FLAGS(argv), after checking what absl and ml_collections would raise tracebacks for."""
    problems = command_line_problems(argv, flags.FLAGS)
    if problems:
        fail(problems[0] if len(problems) == 1 else
             f"{len(problems)} problems with the command line:\n  " + "\n  ".join(problems))
    try:
        return flags.FLAGS(argv)
    except EhrJaxError as error:  # raised by a config file's get_config (e.g. an unknown preset)
        fail(error)
    except flags.Error as error:  # a value of the wrong type, an unknown flag, a missing one
        fail(error)
    except Exception as error:  # noqa: BLE001 - a config file that does not load: say which
        fail(f"the command line could not be parsed: {type(error).__name__}: {error}")


def command_line_problems(argv: list[str], flag_values: flags.FlagValues) -> list[str]:
    """For each ml_collections config flag: its file exists and loads, its --NAME.KEY exist."""
    problems = []
    for name, flag in flag_values._flags().items():  # noqa: SLF001 - absl has no public walk
        if not config_flags.is_config_flag(flag) or name != flag.name:
            continue
        base, problem = _base_config(name, flag, argv)
        if problem:
            problems.append(problem)
        if base is None:
            continue
        keys = _leaf_keys(base)
        for override in _overrides(name, argv):
            if not _has_path(base, override):
                near = difflib.get_close_matches(override, keys, n=3, cutoff=0.6)
                hint = f"; did you mean {' or '.join(near)}?" if near else ""
                problems.append(f"--{name}.{override}: the config has no key {override!r}{hint} "
                                f"(configs/base.py lists every key)")
    return problems


def _base_config(name: str, flag: flags.Flag, argv: list[str]) -> tuple[ConfigDict | None, str]:
    """The config the overrides apply to: the --NAME file's get_config(), or the flag's default."""
    value = None
    for i, arg in enumerate(argv):  # --config=FILE or --config FILE
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
    if not isinstance(flag.parser, config_flags.ConfigFileFlagParser):
        return (flag.default if isinstance(flag.default, ConfigDict) else None), ""
    if value is None:
        return None, ""  # absl reports a missing required flag itself
    path = value.split(":", 1)[0]
    if not os.path.isfile(path):
        folder = os.path.dirname(path) or "."
        siblings = sorted(f for f in os.listdir(folder) if f.endswith(".py")) if os.path.isdir(
            folder) else []
        known = f"; {folder} has {', '.join(siblings)}" if siblings else ""
        return None, f"--{name}={value}: no such config file {path!r}{known}"
    try:
        config = flag.parser.parse(value)
    except EhrJaxError as error:
        return None, f"--{name}={value}: {error}"
    except Exception as error:  # noqa: BLE001 - the user's file is broken; name it and why
        last = str(error).strip().splitlines()[-1] if str(error).strip() else ""
        return None, f"--{name}={value}: loading the config failed: {type(error).__name__}: {last}"
    if not isinstance(config, ConfigDict):
        return None, f"--{name}={value}: get_config() must return an ml_collections.ConfigDict"
    return config, ""


def _overrides(name: str, argv: list[str]) -> list[str]:
    """KEY of every --NAME.KEY[=VALUE] (also --noNAME.KEY for booleans)."""
    keys = []
    for arg in argv:
        for prefix in (f"--{name}.", f"--no{name}.", f"-{name}."):
            if arg.startswith(prefix):
                keys.append(arg[len(prefix):].split("=", 1)[0])
                break
    return keys


def _has_path(config: ConfigDict, path: str) -> bool:
    node = config
    for part in path.split("."):
        if not isinstance(node, (ConfigDict, dict)) or part not in node:
            return False
        node = node[part]
    return True


def _leaf_keys(config: ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        if isinstance(value, (ConfigDict, dict)):
            keys += _leaf_keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys
