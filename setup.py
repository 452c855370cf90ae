"""rl_sharpen: does RL teach new skills or only sharpen the base model?"""

from setuptools import find_packages, setup

setup(
    name="rl_sharpen",
    version="0.1.0",
    description="KL-regularized RL post-training of LLMs on math in JAX: task rewards vs distribution sharpening.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["rl_sharpen", "rl_sharpen.*"]),
    install_requires=[
        "jax>=0.6",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "ml-collections>=1.0",
        "absl-py>=2.1",
        "numpy>=1.26",
        "safetensors>=0.4",
        "transformers>=4.50",
        "tokenizers>=0.21",
        "datasets>=3.0",
        "sympy>=1.13",
        "math-verify[antlr4_13_2]>=0.7",
        "matplotlib>=3.8",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
    ],
    extras_require={
        # Parity references (transformers on torch) and the SmolLM2 GGUF checkpoint used by the tests, which
        # build reference models with the transformers 5 API (config rope_parameters=, from_pretrained dtype=).
        # pytest-xdist runs the suite in two processes (`-n 2`), one per core of a small CI machine.
        "test": ["pytest>=8", "pytest-xdist>=3.5", "transformers>=5.0", "torch>=2.4", "gguf>=0.10",
                 "accelerate>=1.0"],
        # gs:// workdirs (checkpoints, metrics, saved models on Google Cloud Storage).
        "gcs": ["gcsfs"],
    },
)
