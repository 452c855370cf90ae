"""Math tasks: problem sets, prompts, the answer verifier (task reward), and a synthetic task.

`rl_sharpen.tasks.answers` extracts and canonicalizes final answers; `rl_sharpen.tasks.verify` is the
module of the reward function (`grade_batch` / `verify_batch`; the one-completion `verify` is
imported from it by name: `from rl_sharpen.tasks.verify import verify`).
"""

from rl_sharpen.tasks.datasets import FORMATS, SOURCES, LoadStats, Problem, load_problems
from rl_sharpen.tasks.prompts import PromptConfig, encode_prompts, load_tokenizer, render_prompt
from rl_sharpen.tasks.answers import canonical_answer, extract_answer
from rl_sharpen.tasks.verify import VerifierPool, VerifyStats, grade_batch, verify_batch

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
    "grade_batch",
    "verify_batch",
]
