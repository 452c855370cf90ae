"""Model configuration: one frozen dataclass for every supported decoder family.

A `ModelConfig` is built from a Hugging Face `config.json` (`from_hf_config`), from a named preset
(`preset(name)`), or by hand for tiny test models. `architectures` in the HF config picks the family:

  llama  LlamaForCausalLM   Llama 3.x (llama3 rope scaling), SmolLM2
  qwen2  Qwen2ForCausalLM   Qwen2.5 (q/k/v projections carry a bias)
  qwen3  Qwen3ForCausalLM   Qwen3 (per-head RMSNorm on q and k, explicit head_dim, default 128)

Settings these decoders do not implement (biases on Llama/Qwen3 projections, activations other than
SiLU, sliding-window attention) raise ValueError naming the config.json key rather than being ignored.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Family:
    """What tells a decoder family apart, in one place: its config.json reading and its two steps
    between the q/k/v projections and rope (`layers.qkv_bias_and_norm`). The parameters are declared
    in the family's own file (llama.py, qwen2.py, qwen3.py; `registry.FAMILIES`)."""

    architecture: str  # config.json `architectures` entry
    max_positions: int  # transformers' max_position_embeddings when config.json has none
    kv_heads: int | None = None  # transformers' num_key_value_heads default (None: num_attention_heads)
    head_dim: int | None = None  # transformers' head_dim default (None: hidden_size / num_attention_heads)
    qkv_bias: bool = False  # q/k/v projections carry a bias (config.json's attention_bias is then ignored)
    qk_norm: bool = False  # per-head RMSNorm on q and k before rope
    has_mlp_bias_key: bool = False  # config.json may set mlp_bias (only False is implemented)
    sliding_window_keys: bool = False  # config.json may turn on sliding-window attention (refused)


FAMILY_TRAITS = {
    "llama": Family("LlamaForCausalLM", max_positions=2048, has_mlp_bias_key=True),
    "qwen2": Family("Qwen2ForCausalLM", max_positions=32768, kv_heads=32, qkv_bias=True, sliding_window_keys=True),
    "qwen3": Family("Qwen3ForCausalLM", max_positions=32768, kv_heads=32, head_dim=128, qk_norm=True,
                    sliding_window_keys=True),
}
ARCHITECTURES = {traits.architecture: family for family, traits in FAMILY_TRAITS.items()}
FAMILIES = tuple(sorted(FAMILY_TRAITS))
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama-3 frequency-dependent rope scaling ("rope_type": "llama3")."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    family: str  # one of FAMILIES
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-6
    tie_embeddings: bool = False
    max_position_embeddings: int = 4096
    param_dtype: str = "float32"  # storage dtype of the weights
    compute_dtype: str = "float32"  # dtype of matmuls; norms, softmax and log-probs stay float32
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"ModelConfig.family={self.family!r}; allowed: {FAMILIES}")
        for field in ("param_dtype", "compute_dtype"):
            if getattr(self, field) not in DTYPES:
                raise ValueError(f"ModelConfig.{field}={getattr(self, field)!r}; allowed: {tuple(DTYPES)}")
        for field in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
            if not getattr(self, field) >= 1:
                raise ValueError(f"ModelConfig.{field}={getattr(self, field)!r}; allowed: an integer >= 1")
        if self.head_dim < 2 or self.head_dim % 2:
            raise ValueError(f"ModelConfig.head_dim={self.head_dim}; allowed: an even integer >= 2 "
                             "(rope rotates pairs of dimensions)")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"ModelConfig.num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")

    @property
    def qkv_bias(self) -> bool:
        return FAMILY_TRAITS[self.family].qkv_bias

    @property
    def qk_norm(self) -> bool:
        return FAMILY_TRAITS[self.family].qk_norm

    @property
    def dtype(self):
        return DTYPES[self.compute_dtype]

    @property
    def weight_dtype(self):
        return DTYPES[self.param_dtype]

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)


def _rope_fields(hf: Mapping[str, Any], max_positions: int) -> tuple[float, RopeScaling | None]:
    """Rope settings read as transformers reads them: the `rope_scaling` dict (pre-v5 key), else
    `rope_parameters`; theta from that dict, else the top-level `rope_theta`, else 10000; the type
    from its `rope_type`, else `type`; llama3's missing original_max_position_embeddings is
    `max_positions`."""
    rope = dict(hf.get("rope_scaling") or hf.get("rope_parameters") or {})
    if any(isinstance(value, Mapping) for value in rope.values()):
        raise ValueError(f"config.json rope_parameters per layer type ({', '.join(map(repr, rope))}) is not "
                         "supported; allowed: one dict for every layer")
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        return float(theta), None
    if kind != "llama3":
        raise ValueError(f"config.json rope_scaling.rope_type={kind!r}; supported: 'default', 'llama3'")
    rope.setdefault("original_max_position_embeddings", max_positions)
    keys = ("factor", "low_freq_factor", "high_freq_factor")
    missing = [key for key in keys if rope.get(key) is None]
    if missing:
        raise ValueError(f"config.json rope_scaling (rope_type 'llama3') is missing {', '.join(map(repr, missing))}")
    return float(theta), RopeScaling(
        factor=float(rope["factor"]),
        low_freq_factor=float(rope["low_freq_factor"]),
        high_freq_factor=float(rope["high_freq_factor"]),
        original_max_position_embeddings=int(rope["original_max_position_embeddings"]),
    )


def _ids(value) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (int(value),)


def _check_supported(hf: Mapping[str, Any], family: str, source: str) -> None:
    """ValueError for a config.json setting the decoder of `family` does not implement."""
    traits = FAMILY_TRAITS[family]
    checks = [("hidden_act", "silu", ("silu", "swish"))]  # transformers defaults; swish is SiLU
    if not traits.qkv_bias:  # a family with q/k/v biases always has them and ignores attention_bias
        checks.append(("attention_bias", False, (False,)))
    if traits.has_mlp_bias_key:
        checks.append(("mlp_bias", False, (False,)))
    for key, default, allowed in checks:
        value = hf.get(key, default)
        if value not in allowed:
            raise ValueError(f"{source}: {key}={value!r} is not supported; allowed: {' or '.join(map(repr, allowed))}")
    if traits.sliding_window_keys and hf.get("use_sliding_window"):
        window = hf.get("sliding_window", 4096)  # transformers' default when the key is absent (null: no window)
        longest = hf.get("max_position_embeddings", traits.max_positions)
        n, first = int(hf.get("num_hidden_layers", 0)), int(hf.get("max_window_layers", 28))
        kinds = hf.get("layer_types") or ["sliding_attention" if i >= first else "full_attention" for i in range(n)]
        if window is not None and window < longest and "sliding_attention" in kinds:
            raise ValueError(f"{source}: use_sliding_window=True with sliding_window={window} < "
                             f"max_position_embeddings={longest} is not supported; allowed: False "
                             "(or a sliding_window >= max_position_embeddings)")


def from_hf_config(hf: Mapping[str, Any] | str, *, param_dtype="float32", compute_dtype=None) -> ModelConfig:
    """ModelConfig from a parsed HF config dict, or from the path of a folder / config.json.

    Missing keys take transformers' defaults where it has one (head_dim: 128 for Qwen3, else
    hidden_size / num_attention_heads; max_position_embeddings: 2048 for Llama, 32768 for Qwen;
    num_key_value_heads: 32 for Qwen, num_attention_heads for Llama or when null; rope as in
    `_rope_fields`); a missing required key or an unsupported setting raises ValueError naming the key."""
    source = "config.json"
    if isinstance(hf, (str, os.PathLike)):
        source = os.path.join(hf, "config.json") if os.path.isdir(hf) else str(hf)
        if not os.path.exists(source):
            raise FileNotFoundError(f"{source}: no such file (expected a Hugging Face config.json)")
        with open(source) as f:
            hf = json.load(f)
    archs = hf.get("architectures") or []
    known = [ARCHITECTURES[a] for a in archs if a in ARCHITECTURES]
    if not known:
        raise ValueError(f"{source}: architectures={archs}; supported: {sorted(ARCHITECTURES)}")
    family = known[0]
    traits = FAMILY_TRAITS[family]

    def required(key: str) -> int:
        if hf.get(key) is None:
            raise ValueError(f"{source}: missing required key {key!r}")
        return int(hf[key])

    _check_supported(hf, family, source)
    max_positions = int(hf.get("max_position_embeddings", traits.max_positions))
    theta, scaling = _rope_fields(hf, max_positions)
    heads, hidden = required("num_attention_heads"), required("hidden_size")
    kv_heads = int(hf.get("num_key_value_heads", traits.kv_heads) or heads)
    if heads % kv_heads:
        raise ValueError(f"{source}: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}")
    return ModelConfig(
        family=family,
        vocab_size=required("vocab_size"),
        hidden_size=hidden,
        intermediate_size=required("intermediate_size"),
        num_layers=required("num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=int(hf.get("head_dim") or traits.head_dim or hidden // heads),
        rope_theta=theta,
        rope_scaling=scaling,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_position_embeddings=max_positions,
        param_dtype=param_dtype,
        compute_dtype=compute_dtype or param_dtype,
        bos_token_id=hf.get("bos_token_id"),
        eos_token_ids=_ids(hf.get("eos_token_id")),
    )


def to_hf_config(cfg: ModelConfig) -> dict[str, Any]:
    """The config.json that transformers needs to rebuild `cfg` (written by `save_hf`)."""
    traits = FAMILY_TRAITS[cfg.family]
    hf = {
        "architectures": [traits.architecture],
        "model_type": cfg.family,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_embeddings,
        "max_position_embeddings": cfg.max_position_embeddings,
        "torch_dtype": cfg.param_dtype,
        "attention_bias": cfg.qkv_bias,
        "attention_dropout": 0.0,
        "use_cache": True,
    }
    if traits.has_mlp_bias_key:
        hf["mlp_bias"] = False
    if cfg.rope_scaling is not None:
        hf["rope_scaling"] = {"rope_type": "llama3", **dataclasses.asdict(cfg.rope_scaling)}
    if cfg.bos_token_id is not None:
        hf["bos_token_id"] = cfg.bos_token_id
    if cfg.eos_token_ids:
        hf["eos_token_id"] = list(cfg.eos_token_ids) if len(cfg.eos_token_ids) > 1 else cfg.eos_token_ids[0]
    return hf


_LLAMA32_ROPE = RopeScaling(32.0, 1.0, 4.0, 8192)

# Published architectures; `published_params` is the count from the model card, checked by the tests.
PRESETS: dict[str, tuple[ModelConfig, float]] = {
    "llama-3.2-1b-instruct": (ModelConfig(
        "llama", 128256, 2048, 8192, 16, 32, 8, 64, 500000.0, _LLAMA32_ROPE, 1e-5, True, 131072,
        bos_token_id=128000, eos_token_ids=(128001, 128008, 128009)), 1.236e9),
    "llama-3.2-3b-instruct": (ModelConfig(
        "llama", 128256, 3072, 8192, 28, 24, 8, 128, 500000.0, _LLAMA32_ROPE, 1e-5, True, 131072,
        bos_token_id=128000, eos_token_ids=(128001, 128008, 128009)), 3.213e9),
    "qwen2.5-0.5b-instruct": (ModelConfig(
        "qwen2", 151936, 896, 4864, 24, 14, 2, 64, 1000000.0, None, 1e-6, True, 32768,
        eos_token_ids=(151645, 151643)), 0.494e9),
    "qwen2.5-1.5b-instruct": (ModelConfig(
        "qwen2", 151936, 1536, 8960, 28, 12, 2, 128, 1000000.0, None, 1e-6, True, 32768,
        eos_token_ids=(151645, 151643)), 1.54e9),
    "qwen2.5-3b-instruct": (ModelConfig(
        "qwen2", 151936, 2048, 11008, 36, 16, 2, 128, 1000000.0, None, 1e-6, True, 32768,
        eos_token_ids=(151645, 151643)), 3.09e9),
    "qwen3-0.6b": (ModelConfig(
        "qwen3", 151936, 1024, 3072, 28, 16, 8, 128, 1000000.0, None, 1e-6, True, 40960,
        eos_token_ids=(151645, 151643)), 0.596e9),
    "qwen3-4b-instruct-2507": (ModelConfig(
        "qwen3", 151936, 2560, 9728, 36, 32, 8, 128, 5000000.0, None, 1e-6, True, 262144,
        eos_token_ids=(151645, 151643)), 4.02e9),
    "smollm2-135m-instruct": (ModelConfig(
        "llama", 49152, 576, 1536, 30, 9, 3, 64, 100000.0, None, 1e-5, True, 8192,
        bos_token_id=1, eos_token_ids=(2,)), 0.1348e9),
}


def preset(name: str, **overrides) -> ModelConfig:
    """A published architecture by name (see PRESETS), e.g. preset("qwen2.5-3b-instruct")."""
    if name not in PRESETS:
        raise ValueError(f"model preset {name!r}; allowed: {sorted(PRESETS)}")
    return PRESETS[name][0].replace(**overrides)
