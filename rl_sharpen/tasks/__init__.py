"""Math tasks: problem sets, prompts, the answer verifier (task reward), and a synthetic task.

`rl_sharpen.tasks.verify` is the reward function; its module is imported by name, e.g.
`from rl_sharpen.tasks.verify import VerifierPool`.
"""

from rl_sharpen.tasks.datasets import FORMATS, SOURCES, LoadStats, Problem, load_problems
from rl_sharpen.tasks.prompts import PromptConfig, encode_prompts, load_tokenizer, render_prompt
from rl_sharpen.tasks.verify import (
    VerifierPool,
    VerifyStats,
    canonical_answer,
    extract_answer,
    verify,
    verify_batch,
)

__all__ = [
    "FORMATS",
    "SOURCES",
    "LoadStats",
    "Problem",
    "load_problems",
    "PromptConfig",
    "encode_prompts",
    "load_tokenizer",
    "render_prompt",
    "VerifierPool",
    "VerifyStats",
    "canonical_answer",
    "extract_answer",
    "verify",
    "verify_batch",
]
