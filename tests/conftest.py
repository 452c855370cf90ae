"""Suite-wide settings, before JAX starts: eight fake CPU devices (for sharding tests), and one
compilation cache for the session, so that a program compiled by one test (or by a `python -m
rl_sharpen.main` the tests start) is not compiled again by the next. The cache is a temporary folder,
removed at exit, unless JAX_COMPILATION_CACHE_DIR names one."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # environment variables: subprocesses share it
    _cache = tempfile.mkdtemp(prefix="rl_sharpen_jax_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # the suite's programs compile in < 1 s
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import jax  # noqa: E402

jax.config.update("jax_enable_x64", False)


# --- Fixtures for the math-task tests (tasks/, evaluation). -----------------------------------

import pathlib  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def math_data_dir() -> pathlib.Path:
    """/work/shared/data (gsm8k/, math/, aime24/) beside the checkout, or $RL_SHARPEN_DATA."""
    default = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
    path = pathlib.Path(os.environ.get("RL_SHARPEN_DATA", default))
    if not path.is_dir():
        pytest.skip(f"real math data not found at {path} (set RL_SHARPEN_DATA)")
    return path


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir() -> str:
    """SmolLM2-135M-Instruct (tokenizer with chat template, and weights) as a local HF folder."""
    from tests import hf_models

    try:
        return hf_models.smollm2_folder()
    except FileNotFoundError as e:
        pytest.skip(str(e))
