"""Prompt rendering through the SmolLM2 chat template, the plain fallback, and left padding."""

import numpy as np
import pytest

from rl_sharpen.tasks import PromptConfig, encode_prompts, load_tokenizer, render_prompt
from rl_sharpen.tasks.prompts import pad_id, user_message

PROBLEM = "What is $1+1$?"


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer_dir):
    return load_tokenizer(smollm2_tokenizer_dir)


def test_default_instruction_wraps_the_problem():
    text = user_message(PROBLEM)
    assert text == "What is $1+1$?\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert user_message("x", PromptConfig(template="Q: {problem}\nA:")) == "Q: x\nA:"


def test_template_must_hold_one_placeholder():
    with pytest.raises(ValueError, match="exactly once"):
        PromptConfig(template="no placeholder")
    with pytest.raises(ValueError, match="exactly once"):
        PromptConfig(template="{problem} {problem}")


def test_chat_template_renders_user_turn_and_generation_prompt(tokenizer):
    text = render_prompt(tokenizer, PROBLEM)
    default_system = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                      "<|im_end|>\n")
    assert text == (default_system + "<|im_start|>user\n" + user_message(PROBLEM) + "<|im_end|>\n"
                    "<|im_start|>assistant\n")
    custom = render_prompt(tokenizer, PROBLEM, PromptConfig(system_prompt="Be brief."))
    assert custom.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")


def test_a_template_that_prints_the_date_gets_a_fixed_one(tokenizer, monkeypatch):
    """Llama 3.x templates write "Today Date: <date_string, else strftime_now>" into the system turn:
    the prompt must not change with the day a run (or its resume) renders it."""
    import copy
    import datetime

    import transformers.utils.chat_template_utils as chat_utils

    dated = copy.deepcopy(tokenizer)
    dated.chat_template = (
        "{{ bos_token }}{% if date_string is not defined %}{% set date_string = strftime_now('%d %b %Y') %}"
        "{% endif %}<|im_start|>system\nToday Date: {{ date_string }}<|im_end|>\n"
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

    def rendered_on(day):
        class Clock(datetime.datetime):
            @classmethod
            def now(cls, tz=None):
                return day

        monkeypatch.setattr(chat_utils, "datetime", Clock)
        return render_prompt(dated, PROBLEM)

    first, later = rendered_on(datetime.datetime(2026, 12, 6)), rendered_on(datetime.datetime(2031, 1, 2))
    assert "Today Date: 26 Jul 2024" in first and first == later


def test_stop_ids_read_a_hub_checkpoint_as_they_read_a_local_folder(tokenizer, tmp_path, monkeypatch):
    """The paper configs name hub ids: the `eos_token_id`s of their generation config stop a sample too."""
    import json

    import huggingface_hub

    from rl_sharpen.tasks.prompts import stop_token_ids

    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))

    def download(repo_id, filename, **kwargs):
        assert repo_id == "Org/Model"
        if not (tmp_path / filename).exists():
            raise huggingface_hub.errors.EntryNotFoundError(filename)
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    assert stop_token_ids(tokenizer, [str(tmp_path)]) == stop_token_ids(tokenizer, ["Org/Model"]) == (0, 2)
    assert stop_token_ids(tokenizer) == (2,)


def test_plain_fallback_without_chat_template(tokenizer):
    assert render_prompt(tokenizer, PROBLEM, PromptConfig(use_chat_template=False)) == user_message(PROBLEM) + "\n"
    assert (render_prompt(tokenizer, PROBLEM, PromptConfig(use_chat_template=False, system_prompt="S"))
            == "S\n\n" + user_message(PROBLEM) + "\n")

    class NoTemplate:  # a tokenizer object without a chat template takes the same path
        chat_template = None

    assert render_prompt(NoTemplate(), PROBLEM) == user_message(PROBLEM) + "\n"


def test_encode_prompts_left_pads_int32(tokenizer):
    problems = [PROBLEM, "A much longer problem statement " * 5]
    batch = encode_prompts(tokenizer, problems)
    b, t = batch.tokens.shape
    real = batch.segment_ids != 0
    assert batch.tokens.dtype == np.int32 and batch.segment_ids.dtype == np.int32
    lengths = []
    for row, problem in enumerate(problems):
        ids = tokenizer(render_prompt(tokenizer, problem), add_special_tokens=False)["input_ids"]
        lengths.append(len(ids))
        np.testing.assert_array_equal(batch.tokens[row, t - len(ids):], ids)  # right-aligned
        assert (batch.tokens[row, :t - len(ids)] == pad_id(tokenizer)).all()
        np.testing.assert_array_equal(real[row], np.arange(t) >= t - len(ids))
    assert t == max(lengths)
    assert encode_prompts(tokenizer, problems, width=t + 5).tokens.shape == (2, t + 5)
    # The chat template already writes <|im_start|> (the BOS of this tokenizer) once.
    assert (batch.tokens[real] == tokenizer.bos_token_id).sum() == 2 * 3  # 3 turns per prompt
    assert tokenizer.decode(batch.tokens[0][real[0]]) == render_prompt(tokenizer, PROBLEM)
    with pytest.raises(ValueError, match="padded width is 3"):
        encode_prompts(tokenizer, problems, width=3)
    with pytest.raises(ValueError, match="at least one problem"):
        encode_prompts(tokenizer, [])


def test_model_and_tokenizer_sources_that_cannot_be_read_name_their_config_field(tmp_path, monkeypatch):
    import huggingface_hub
    import transformers

    from rl_sharpen.config import ConfigError
    from rl_sharpen.models.hf_io import checkpoint_folder

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    with pytest.raises(ConfigError, match=r"model.checkpoint='/no/such/folder': no such folder"):
        checkpoint_folder("/no/such/folder")
    with pytest.raises(ConfigError, match=r"model.checkpoint='Org/Model' is not a local folder, and the Hugging Face "
                                          r"hub did not provide it \(OSError: We couldn't connect.*"
                                          r"--config.model.checkpoint=/path"):
        checkpoint_folder("Org/Model")
    assert checkpoint_folder(str(tmp_path)) == str(tmp_path)  # a local folder is used as it is
    with pytest.raises(ConfigError, match=r"data.tokenizer='.*': the folder has no tokenizer"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(ConfigError, match=r"model.checkpoint='Org/Model' is not a local folder.*OSError"):
        load_tokenizer("Org/Model", "model.checkpoint")
    with pytest.raises(ConfigError, match=r"data.tokenizer='\./missing': no such folder"):
        load_tokenizer("./missing")


def test_pad_id_prefers_the_pad_token_then_eos_then_0():
    class Stub:
        def __init__(self, pad, eos):
            self.pad_token_id, self.eos_token_id = pad, eos

    assert (pad_id(Stub(5, 7)), pad_id(Stub(None, 7)), pad_id(Stub(None, None))) == (5, 7, 0)
