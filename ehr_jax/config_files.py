"""Loading one config file from another: presets build on configs/base.py.

ml_collections' config_flags loads a config by path, not as a package member, so a preset cannot
`import configs.base`; it asks for its sibling file by name instead.
"""

import importlib.util
import os

import ml_collections


def load_sibling(config_file: str, name: str = "base") -> ml_collections.ConfigDict:
    """get_config() of `<name>.py` in the folder of `config_file` (pass the preset's __file__)."""
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"ehr_jax_configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
