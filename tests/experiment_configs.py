"""The ConfigDicts of the files in configs/, for tests."""

import os

from rl_sharpen.config import load_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config(name: str, arg: str = ""):
    """configs/<name>.py's get_config(arg)."""
    return load_config_file(os.path.join(ROOT, "configs", f"{name}.py") + (f":{arg}" if arg else ""))
