"""Prompts: the instruction around a problem, rendered by a tokenizer's chat template.

The default instruction asks for step-by-step reasoning and a boxed final answer:

  {problem}
  Please reason step by step, and put your final answer within \\boxed{}.

A prompt is rendered as one user turn (plus an optional system turn) through the tokenizer's
chat template, with the generation prompt for the assistant appended. A tokenizer without a chat
template (or `use_chat_template=False`) gets the plain format "{system}\\n\\n{user}\\n".
Templates that write a date into the system turn (Llama 3.x: "Today Date: ...") get the fixed
`TEMPLATE_DATE`, so a prompt, and every log-prob given it, is the same on every day a run or its
resume happens to run. Templates with a thinking switch (Qwen3's hybrid models) take
`enable_thinking` when `thinking` is set: "off" writes the empty think block, so the model answers
at once.
`encode_prompts` returns the sampler's left-padded `PromptBatch`, so every row's last prompt token
is at column T - 1 and generation appends at the same position for all rows.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

from rl_sharpen.sampling.prompts import PromptBatch, left_pad

PROBLEM_PLACEHOLDER = "{problem}"
DEFAULT_TEMPLATE = (
    "{problem}\nPlease reason step by step, and put your final answer within \\boxed{}."
)
# The date handed to chat templates that print one (their `date_string`); Llama 3.x's own default.
TEMPLATE_DATE = "26 Jul 2024"
THINKING = {"": None, "on": True, "off": False}  # PromptConfig.thinking -> the template's enable_thinking


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    template: str = DEFAULT_TEMPLATE  # must contain "{problem}" exactly once
    system_prompt: str | None = None  # None: the chat template's default system turn, if any
    use_chat_template: bool = True
    thinking: str = ""  # a chat template's thinking switch (Qwen3): "" its default, "on" or "off"

    def __post_init__(self):
        if self.template.count(PROBLEM_PLACEHOLDER) != 1:
            raise ValueError(f"template must contain {PROBLEM_PLACEHOLDER!r} exactly once, got {self.template!r}")
        if self.thinking not in THINKING or (self.thinking and not self.use_chat_template):
            raise ValueError(f"thinking={self.thinking!r}; allowed: one of {sorted(THINKING)}, and '' without a chat "
                             "template (use_chat_template=False): the switch is a chat template's")


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def load_tokenizer(name_or_path: str, field: str = "data.tokenizer", **kwargs: Any):
    """`transformers.AutoTokenizer` from a local folder or a hub id; errors name the config `field`."""
    import transformers

    from rl_sharpen.config import SourceError
    from rl_sharpen.models.hf_io import from_hub

    load = lambda name: transformers.AutoTokenizer.from_pretrained(name, **kwargs)  # noqa: E731
    if not os.path.isdir(name_or_path):
        return from_hub(name_or_path, field, load)
    if not any(os.path.exists(os.path.join(name_or_path, f)) for f in _TOKENIZER_FILES):
        raise SourceError(f"{field}={name_or_path!r}: the folder has no tokenizer (none of "
                          f"{', '.join(_TOKENIZER_FILES)})")
    return load(name_or_path)


def user_message(problem: str, cfg: PromptConfig = PromptConfig()) -> str:
    return cfg.template.replace(PROBLEM_PLACEHOLDER, problem)


def _has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer, problem: str, cfg: PromptConfig = PromptConfig()) -> str:
    """The prompt text the model continues: chat-templated user turn + assistant header."""
    user = user_message(problem, cfg)
    if cfg.use_chat_template and _has_chat_template(tokenizer):
        messages = [{"role": "user", "content": user}]
        if cfg.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": cfg.system_prompt})
        switch = {"enable_thinking": THINKING[cfg.thinking]} if cfg.thinking else {}
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                             date_string=TEMPLATE_DATE, **switch)
    return f"{cfg.system_prompt}\n\n{user}\n" if cfg.system_prompt else f"{user}\n"


def check_thinking_switch(tokenizer, cfg: PromptConfig) -> None:
    """Refuses `thinking` set for a tokenizer whose chat template ignores it (it would change nothing,
    silently): the template must render a different prompt with the switch on and off. The error
    names the config field, data.thinking."""
    from rl_sharpen.config import ConfigError

    if not cfg.thinking:
        return
    setting = f"data.thinking={cfg.thinking!r}"
    if not _has_chat_template(tokenizer):
        raise ConfigError(f"{setting}: the tokenizer has no chat template; allowed: '' (none set: "
                          "--config.data.thinking=)")
    on, off = (render_prompt(tokenizer, "q", dataclasses.replace(cfg, thinking=v)) for v in ("on", "off"))
    if on == off:
        raise ConfigError(f"{setting}: this tokenizer's chat template has no thinking switch (it renders the same "
                          "prompt with enable_thinking True and False); allowed: '' (none set: "
                          "--config.data.thinking=)")


def pad_id(tokenizer) -> int:
    """The tokenizer's pad id, else its eos id, else 0 (pad positions are masked anyway)."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return 0


def token_texts(tokenizer) -> list[str]:
    """Each token id's text decoded alone, special tokens as "": what stop strings are matched on
    (`sampling.compile_stops`)."""
    ids = [[i] for i in range(len(tokenizer))]
    if hasattr(tokenizer, "batch_decode"):
        return tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return [tokenizer.decode(i) for i in ids]


def stop_token_ids(tokenizer, sources: Sequence[str] = ()) -> tuple[int, ...]:
    """Ids that end a completion: the tokenizer's EOS, the `eos_token_id`s of `generation_config.json` /
    `config.json` of the checkpoint `sources` (local folders or hub ids), and the token a chat template
    writes after an assistant turn (e.g. <|im_end|> where the tokenizer's EOS is <|endoftext|>), so that
    a sample stops where its turn ends instead of running into turns it invents."""
    ids = {tokenizer.eos_token_id}
    for source in sources:
        for name in ("generation_config.json", "config.json"):
            file = _checkpoint_file(source, name)
            if file is not None:
                with open(file) as f:
                    eos = json.load(f).get("eos_token_id")
                ids.update(eos if isinstance(eos, list) else [eos])
    ids.add(_end_of_turn_id(tokenizer))
    return tuple(sorted(int(i) for i in ids if i is not None))


def _checkpoint_file(source: str, name: str) -> str | None:
    """A local folder's file `name`, or the hub repository's (downloaded, or from the cache), or None."""
    if os.path.isdir(source):
        file = os.path.join(source, name)
        return file if os.path.isfile(file) else None
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(source, name)
    except Exception:  # the repository has no such file, or the hub is unreachable and nothing is cached
        return None


def _end_of_turn_id(tokenizer) -> int | None:
    """The special token a chat template writes right after an assistant message, if any."""
    if not _has_chat_template(tokenizer):
        return None
    marker = "rl_sharpen end of turn marker"
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, date_string=TEMPLATE_DATE)
    except Exception:  # templates that refuse this conversation: no end-of-turn token to learn
        return None
    at = text.rfind(marker)
    if at < 0:  # the template does not render assistant turns
        return None
    after = tokenizer(text[at + len(marker):], add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return after[0] if after and after[0] in special else None


def encode_prompts(tokenizer, problems: Sequence[str], cfg: PromptConfig = PromptConfig(),
                   width: int | None = None) -> PromptBatch:
    """Renders and tokenizes problems into the sampler's left-padded int32 `PromptBatch`
    (width: the longest prompt unless given).

    A chat template writes its own special tokens (e.g. BOS), so they are not added again; the
    plain format gets the tokenizer's usual special tokens.
    """
    chat = cfg.use_chat_template and _has_chat_template(tokenizer)
    ids = [tokenizer(render_prompt(tokenizer, p, cfg), add_special_tokens=not chat)["input_ids"] for p in problems]
    if not ids or min(map(len, ids)) == 0:
        raise ValueError("encode_prompts needs at least one problem, and no prompt may be empty")
    return left_pad(ids, pad_id(tokenizer), width)
