"""Suite-wide settings: eight fake CPU devices (for sharding tests) before JAX starts."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

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
