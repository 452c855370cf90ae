"""Stop strings: the automaton ends a sample at the first token whose text completes one, checked
against searching the decoded text; the sampler keeps everything before the stop; bad requests are
named; a run's rollouts and validation stop alike."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from rl_sharpen import experiment, models, sampling
from rl_sharpen import sharding as shd
from rl_sharpen.sampling.stops import compile_stops, first_stop
from tests.experiment_configs import get_config
from tests.test_sampling import random_params

ALPHABET = list("ab:\n")


def _random_texts(rng, vocab):
    return ["".join(rng.choice(ALPHABET, rng.integers(0, 4))) for _ in range(vocab)]


def _first_stop_step(texts, tokens, strings):
    """The index of the first token after which the text holds a stop string (None: none)."""
    text = ""
    for t, token in enumerate(tokens):
        text += texts[token] if token < len(texts) else ""
        if first_stop(text, strings) is not None:
            return t
    return None


def test_the_automaton_stops_where_the_decoded_text_first_holds_a_stop_string():
    rng = np.random.default_rng(0)
    for _ in range(300):
        vocab = int(rng.integers(2, 30))
        texts = _random_texts(rng, vocab - int(rng.integers(0, 2)))  # ids past the list have no text
        strings = tuple({"".join(rng.choice(ALPHABET, rng.integers(1, 5))) for _ in range(rng.integers(1, 4))})
        stops = compile_stops(strings, texts, vocab)
        tokens = rng.integers(0, vocab, 30)
        state, stopped_at = 0, None
        for t, token in enumerate(tokens):
            if stops.hit[state, token]:
                stopped_at = t
                break
            state = stops.next_state[state, token]
        assert stopped_at == _first_stop_step(texts, tokens, strings), (strings, texts, tokens)


def test_a_stop_string_split_over_tokens_in_any_way_stops_on_a_real_tokenizer(smollm2_tokenizer_dir):
    from rl_sharpen.tasks.prompts import load_tokenizer, token_texts

    tokenizer = load_tokenizer(smollm2_tokenizer_dir)
    texts = token_texts(tokenizer)
    stops = compile_stops(("\n\nQuestion:",), texts, len(tokenizer) + 3)
    ids = tokenizer.convert_tokens_to_ids
    for pieces in (["Ċ", "Ċ", "Question", ":"], ["ĊĊ", "Question", ":"], ["ĊĊ", "Question", ":\""]):
        tokens = tokenizer.encode("So 4.") + ids(pieces) + tokenizer.encode(" What")
        state = 0
        hits = []
        for token in tokens:
            hits.append(bool(stops.hit[state, token]))
            state = stops.next_state[state, token]
        assert hits.index(True) == len(tokenizer.encode("So 4.")) + len(pieces) - 1, pieces
    assert texts[tokenizer.eos_token_id] == ""  # special tokens have no text


def test_a_character_no_token_holds_is_warned_of(smollm2_tokenizer_dir, caplog):
    from rl_sharpen.tasks.prompts import load_tokenizer, token_texts

    texts = token_texts(load_tokenizer(smollm2_tokenizer_dir))
    with caplog.at_level("WARNING"):
        compile_stops(("\n\nQuestion:", "π"), texts, len(texts))
    assert "no token" not in caplog.text
    with caplog.at_level("WARNING"):
        compile_stops(("∞", "答案"), texts, len(texts))
    assert "no token's text holds ['∞', '案', '答']" in caplog.text


def test_a_stop_string_with_backslash_escapes_kept_is_warned_of(smollm2_tokenizer_dir, caplog):
    """`--config.sampling.stop_strings="\\n\\nQuestion:"` (a plain string) keeps its backslashes: such a
    string never matches a newline, so the run says how to write one."""
    import types

    from rl_sharpen.task_setup import task_stops
    from rl_sharpen.tasks.prompts import load_tokenizer

    task = types.SimpleNamespace(tokenizer=load_tokenizer(smollm2_tokenizer_dir))
    model_cfg = types.SimpleNamespace(vocab_size=len(task.tokenizer))
    with caplog.at_level("WARNING"):
        task_stops(task, ("\n\nQuestion:",), model_cfg)
    assert "backslash" not in caplog.text
    with caplog.at_level("WARNING"):
        task_stops(task, ("\\n\\nQuestion:",), model_cfg)
    assert "holds '\\\\n\\\\nQuestion:', with a backslash before n, t or r" in caplog.text
    assert "--config.sampling.stop_strings=\"('\\n\\nQuestion:',)\"" in caplog.text


def test_stop_strings_are_read_alike_by_the_config_and_the_automaton():
    """A bare string is one stop string, and a repeat is dropped, in both."""
    texts = ["a", "b", ":"]
    for strings in ("ab:", ("ab:", "ab:")):
        assert compile_stops(strings, texts, 3).strings == ("ab:",)
        assert sampling.SamplingConfig(max_new_tokens=2, stop_strings=strings).stop_strings == ("ab:",)


def _tiny_model(vocab=16, mesh=None):
    cfg = models.ModelConfig("llama", vocab, 32, 64, 2, 4, 2, 8, max_position_embeddings=128)
    return cfg, random_params(cfg, 3, 0.3, mesh)


def test_the_sampler_keeps_everything_before_the_stop_and_pads_after_it():
    cfg, params = _tiny_model()
    texts = _random_texts(np.random.default_rng(1), cfg.vocab_size)
    strings = ("a:", "\nb")
    sc = sampling.SamplingConfig(max_new_tokens=20, num_samples=64, eos_ids=(3,), stop_strings=strings)
    free = sampling.generate(params, cfg, [[1, 2, 5]], jax.random.key(3), dataclasses.replace(sc, stop_strings=()))
    out = sampling.generate(params, cfg, [[1, 2, 5]], jax.random.key(3), sc,
                            stops=compile_stops(strings, texts, cfg.vocab_size))
    free_tokens, free_lengths = np.asarray(free.tokens), np.asarray(free.lengths)
    tokens, lengths, finished = np.asarray(out.tokens), np.asarray(out.lengths), np.asarray(out.finished)
    stopped = 0
    for row in range(len(tokens)):
        step = _first_stop_step(texts, free_tokens[row, :free_lengths[row]], strings)
        length = free_lengths[row] if step is None else step + 1
        stopped += step is not None
        assert lengths[row] == length and finished[row] == (step is not None or free.finished[row])
        np.testing.assert_array_equal(tokens[row, :length], free_tokens[row, :length])
        np.testing.assert_array_equal(np.asarray(out.logprobs)[row, :length], np.asarray(free.logprobs)[row, :length])
        assert (tokens[row, length:] == sc.pad_id).all() and (np.asarray(out.logprobs)[row, length:] == 0).all()
    assert 10 < stopped < 60  # both kinds of rows are checked


def test_sharded_generation_with_stop_strings_equals_single_device():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (tests/conftest.py forces 8 fake CPU devices)")
    mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    cfg, params = _tiny_model(vocab=64)
    _, sharded = _tiny_model(vocab=64, mesh=mesh)
    strings = ("ab:", "::b")
    stops = compile_stops(strings, _random_texts(np.random.default_rng(2), 64), 64)
    sc = sampling.SamplingConfig(max_new_tokens=12, num_samples=4, stop_strings=strings)
    prompts = [[3, 9, 27], [5], [7, 7, 7, 7, 7], [1, 2]]
    ref = sampling.generate(params, cfg, prompts, jax.random.key(5), sc, stops=stops)
    out = sampling.generate(sharded, cfg, prompts, jax.random.key(5), sc, mesh=mesh, stops=stops.placed(mesh))
    np.testing.assert_array_equal(shd.host_array(out.tokens), np.asarray(ref.tokens))
    np.testing.assert_array_equal(shd.host_array(out.lengths), np.asarray(ref.lengths))
    assert 0 < np.mean(np.asarray(ref.finished)) < 1  # some rows stop, some run on


@pytest.mark.parametrize("fields, message", [
    (dict(stop_strings=("a", "")), r"SamplingConfig.stop_strings=\('a', ''\); allowed: a string or a tuple of "
                                   r"non-empty strings"),
    (dict(stop_strings=("a",), ignore_eos=True), r"SamplingConfig.stop_strings=\('a',\); allowed: \(\) with "
                                                 r"ignore_eos=True"),
])
def test_bad_stop_strings_are_named(fields, message):
    with pytest.raises(ValueError, match=message):
        sampling.SamplingConfig(max_new_tokens=4, **fields)


def test_stop_strings_and_their_automaton_must_agree():
    cfg, params = _tiny_model()
    texts = ["a", "b"] * 8
    assert sampling.SamplingConfig(max_new_tokens=4, stop_strings="ab").stop_strings == ("ab",)
    sc = sampling.SamplingConfig(max_new_tokens=4, stop_strings=("ab",))
    for stops, message in [(None, r"stop_strings=\('ab',\) with stops for None"),
                           (compile_stops(("ba",), texts, 16), r"with stops for \('ba',\)"),
                           (compile_stops(("ab",), texts, 17), "stops cover 17 token ids; the model has "
                                                               "vocab_size=16")]:
        with pytest.raises(ValueError, match=message):
            sampling.generate(params, cfg, [[1, 2]], jax.random.key(0), sc, stops=stops)
    with pytest.raises(ValueError, match=r"stop_strings=\(\) with stops for \('ab',\)"):
        sampling.generate(params, cfg, [[1, 2]], jax.random.key(0), sampling.SamplingConfig(max_new_tokens=4),
                          stops=compile_stops(("ab",), texts, 16))
    with pytest.raises(ValueError, match="a non-empty string or tuple of non-empty strings"):
        compile_stops((), texts, 16)


def test_a_run_s_rollouts_and_validation_stop_on_its_stop_strings(tmp_path, monkeypatch):
    calls, tables = [], []
    generate = sampling.generate

    def recording_generate(*args, stops=None, **kwargs):
        out = generate(*args, stops=stops, **kwargs)
        calls.append((stops.strings if stops is not None else None, np.asarray(out.lengths)))
        tables.append(stops)
        return out

    monkeypatch.setattr(sampling, "generate", recording_generate)
    c = get_config("qwen3_4b_math", "task_reward,tiny")
    c.sampling.stop_strings = ("+",)
    c.train.steps, c.train.eval_every, c.train.checkpoint_every = 1, 0, 1
    c.data.validation_limit, c.eval.batch_size, c.eval.keep_texts, c.eval.greedy = 4, 4, c.eval.num_samples, False
    experiment.run(c, str(tmp_path))
    assert [strings for strings, _ in calls] == [("+",)] * 3  # validation, rollout, validation
    assert all(t is tables[0] for t in tables)  # one copy of the tables on the devices, built once
    with open(tmp_path / "eval" / "eval_step1.json") as f:
        saved = json.load(f)
    texts = [t for problem in saved["problems"] for t in problem["texts"]]
    assert all("+" not in t[:-1] for t in texts)
    assert any(t.endswith("+") for t in texts)  # the random model writes "+" (else nothing is checked)
    lengths = calls[-1][1]
    assert all(len(t) <= n for t, n in zip(texts, lengths))
