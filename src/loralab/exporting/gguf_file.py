"""A merged Llama-family causal LM and its tokenizer as one GGUF file (llama.cpp, Ollama).

The file follows llama.cpp's own converter: architecture `llama`, its tensor names, the query
and key projections permuted from Hugging Face's rotary layout (the two halves of each head) to
GGML's (interleaved pairs), 1-D tensors (the norms) in F32, and the tokenizer as a byte-level
BPE vocabulary (`tokenizer.ggml.model = gpt2`). transformers reads it back with
`from_pretrained(dir, gguf_file=name)` and undoes the permutation.

What the llama architecture or transformers' GGUF reader would not reproduce (rope scaling,
biases, another activation, a tokenizer that is not byte-level BPE) is refused up front in one
line, rather than written into a file that loads and then answers differently.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from loralab.errors import ConfigError

SUPPORTED = ("llama",)  # config.model_type values that can be exported
DTYPES = {
    "f32": (torch.float32, gguf.GGMLQuantizationType.F32),
    "f16": (torch.float16, gguf.GGMLQuantizationType.F16),
    "bf16": (torch.bfloat16, getattr(gguf.GGMLQuantizationType, "BF16", None)),  # None: a gguf without BF16
}
ARCH = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA]
FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "bf16": getattr(gguf.LlamaFileType, "MOSTLY_BF16", None),
}
# how each is handed to the writer: BF16 as its raw 16 bits, since numpy has no bfloat16
NUMPY_DTYPES = {
    torch.float32: np.dtype(np.float32),
    torch.float16: np.dtype(np.float16),
    torch.bfloat16: np.dtype(np.int16),
}
OTHER_FORMAT = "export with --to merged (transformers' format) instead"

# Hugging Face's names inside a decoder layer -> the GGUF tensor kind
LAYER_TENSORS = {
    "self_attn.q_proj": gguf.MODEL_TENSOR.ATTN_Q,
    "self_attn.k_proj": gguf.MODEL_TENSOR.ATTN_K,
    "self_attn.v_proj": gguf.MODEL_TENSOR.ATTN_V,
    "self_attn.o_proj": gguf.MODEL_TENSOR.ATTN_OUT,
    "mlp.gate_proj": gguf.MODEL_TENSOR.FFN_GATE,
    "mlp.up_proj": gguf.MODEL_TENSOR.FFN_UP,
    "mlp.down_proj": gguf.MODEL_TENSOR.FFN_DOWN,
    "input_layernorm": gguf.MODEL_TENSOR.ATTN_NORM,
    "post_attention_layernorm": gguf.MODEL_TENSOR.FFN_NORM,
}
TOP_TENSORS = {
    "model.embed_tokens.weight": gguf.MODEL_TENSOR.TOKEN_EMBD,
    "model.norm.weight": gguf.MODEL_TENSOR.OUTPUT_NORM,
    "lm_head.weight": gguf.MODEL_TENSOR.OUTPUT,
}
LAYER_NAME = re.compile(r"model\.layers\.(\d+)\.(.+)\.weight")

# llama.cpp's pre-tokenizer names (tokenizer.ggml.pre) for the two splits this writer reproduces:
# GPT-2's regex, and the same regex after every digit is split off on its own (SmolLM's).
PRE_GPT2, PRE_DIGITS = "gpt-2", "smollm"
PROBE_TEXT = "Hello world"  # encoded with and without special tokens, to see what the tokenizer adds


def check_dtype(dtype: str) -> None:
    """Raise ConfigError for a dtype this writer cannot write, or transformers cannot read back."""
    if dtype not in DTYPES:
        raise ConfigError(f"GGUF dtype {dtype!r}: choose one of {list(DTYPES)}")
    if dtype == "bf16" and not _bf16_readable():
        raise ConfigError(
            f"the installed gguf {version('gguf')} cannot write or dequantize BF16 tensors, so transformers could "
            "not load a bf16 GGUF back: use --dtype f16 or f32"
        )


def _bf16_readable() -> bool:
    """Whether gguf-py (which transformers' GGUF reader calls) turns BF16 data back into floats."""
    try:
        one = np.array([0x80, 0x3F], dtype=np.uint8)  # 1.0 in bfloat16, little-endian
        return float(gguf.quants.dequantize(one, gguf.GGMLQuantizationType.BF16).ravel()[0]) == 1.0
    except Exception:
        return False


def check_exportable(config: Any) -> None:
    """Raise ConfigError (one line: what is wrong and what to do) for a model config that cannot be
    exported to GGUF. Runs from the config alone, before any weights load."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED:
        raise ConfigError(f"GGUF export handles model_type {list(SUPPORTED)}, not {model_type!r}: {OTHER_FORMAT}")
    problems = []
    heads = getattr(config, "architectures", None) or []
    if any(not head.endswith("ForCausalLM") for head in heads):
        problems.append(f"the model is a {heads[0]}, not a causal LM")
    if getattr(config, "quantization_config", None):
        problems.append("the weights are quantized (merge into a full-precision base first)")
    rope = _rope_parameters(config)
    if rope.get("rope_type", "default") != "default" or set(rope) - {"rope_type", "rope_theta"}:
        problems.append(f"rope scaling {rope} is not written (llama.cpp and transformers would read plain RoPE)")
    if getattr(config, "attention_bias", False):
        problems.append("attention_bias=True (the llama GGUF layout has no attention biases)")
    if getattr(config, "mlp_bias", False):
        problems.append("mlp_bias=True (the llama GGUF layout has no MLP biases)")
    if getattr(config, "hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={config.hidden_act!r} (the llama architecture computes SiLU)")
    n_head, n_kv = _head_counts(config)
    if n_head % n_kv:
        problems.append(f"{n_head} attention heads do not split into {n_kv} key-value groups")
    if _head_dim(config) % 2:
        problems.append(f"head_dim {_head_dim(config)} is odd (RoPE rotates pairs)")
    if problems:
        raise ConfigError(f"this {model_type} model cannot be exported to GGUF: {'; '.join(problems)}: {OTHER_FORMAT}")


def check_tokenizer(tokenizer: Any, vocab_size: int) -> None:
    """Raise ConfigError for a tokenizer this writer does not reproduce (before any weights load)."""
    _vocabulary(tokenizer, vocab_size)


def write_gguf(model: Any, tokenizer: Any, path: str | Path, dtype: str = "f16", name: str | None = None) -> dict:
    """Write `model` (a transformers LlamaForCausalLM, merged, any dtype) and its fast tokenizer into
    the GGUF file `path`, atomically (`path.tmp`, then renamed). Returns facts about the file."""
    check_dtype(dtype)
    config = model.config
    check_exportable(config)
    vocab = _vocabulary(tokenizer, config.vocab_size)
    plan = _tensor_plan(model, dtype)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(tmp, ARCH)
    try:
        _add_model_keys(writer, config, dtype, name or _default_name(config))
        _add_tokenizer_keys(writer, vocab)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for item in plan:
            writer.add_tensor_info(item.name, item.shape, item.np_dtype, item.nbytes, raw_dtype=item.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for item in plan:  # one tensor converted at a time: the model is not copied whole
            writer.write_tensor_data(item.array())
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return {
        "path": str(path),
        "bytes": path.stat().st_size,
        "tensors": len(plan),
        "dtype": dtype,
        "architecture": ARCH,
        "vocab_size": len(vocab.tokens),
    }


# ---- the model ---------------------------------------------------------------------------------


def _rope_parameters(config: Any) -> dict:
    """The RoPE settings as one dict: transformers 5's `rope_parameters`, or 4's `rope_scaling` + `rope_theta`."""
    rope = getattr(config, "rope_parameters", None)
    if rope is None:
        rope = dict(getattr(config, "rope_scaling", None) or {})
        rope.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    rope = dict(rope)
    if "type" in rope:  # the older spelling of rope_type
        rope.setdefault("rope_type", rope.pop("type"))
    return rope


def _head_counts(config: Any) -> tuple[int, int]:
    n_head = config.num_attention_heads
    return n_head, getattr(config, "num_key_value_heads", None) or n_head


def _head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _default_name(config: Any) -> str:
    where = str(getattr(config, "_name_or_path", "") or getattr(config, "name_or_path", "") or "")
    return Path(where).name or "model"


def _add_model_keys(writer: gguf.GGUFWriter, config: Any, dtype: str, name: str) -> None:
    n_head, n_kv = _head_counts(config)
    head_dim = _head_dim(config)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(float(_rope_parameters(config)["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    if head_dim != config.hidden_size // n_head:  # llama.cpp assumes hidden_size / heads otherwise
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_file_type(FILE_TYPES[dtype])
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)  # transformers reads head_dim from this


@dataclass
class _Tensor:
    """One tensor of the file: where it comes from and how it is stored."""

    name: str
    source: torch.Tensor
    qtype: gguf.GGMLQuantizationType
    torch_dtype: torch.dtype
    rope_heads: int = 0  # > 0: a query or key projection, permuted for GGML's RoPE over this many heads

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.source.shape)

    @property
    def np_dtype(self) -> np.dtype:
        return NUMPY_DTYPES[self.torch_dtype]

    @property
    def nbytes(self) -> int:
        return self.source.numel() * self.np_dtype.itemsize

    def array(self) -> np.ndarray:
        values = self.source.detach().to("cpu", torch.float32)
        if self.rope_heads:
            values = _to_ggml_rope_layout(values, self.rope_heads)
        values = values.to(self.torch_dtype).contiguous()
        return values.view(torch.int16).numpy() if self.torch_dtype == torch.bfloat16 else values.numpy()


def _to_ggml_rope_layout(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder each head's output rows from HF's rotary layout, where dimension i pairs with i + d/2,
    to GGML's, where 2i pairs with 2i + 1 (llama.cpp's converter does the same; transformers'
    GGUF loader undoes it)."""
    rows, cols = weight.shape
    return weight.reshape(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def _tensor_plan(model: Any, dtype: str) -> list[_Tensor]:
    """Every tensor of the file, in state-dict order, with the conversion it needs."""
    config = model.config
    torch_dtype, qtype = DTYPES[dtype]
    n_head, n_kv = _head_counts(config)
    state = model.state_dict()
    tied = bool(getattr(config, "tie_word_embeddings", False))
    head, embedding = state.get("lm_head.weight"), state.get("model.embed_tokens.weight")
    if tied and head is not None and embedding is not None and not torch.equal(head, embedding):
        raise ConfigError(
            "tie_word_embeddings is set but lm_head differs from the embedding: the GGUF file would lose "
            f"lm_head; set config.tie_word_embeddings=False or {OTHER_FORMAT}"
        )
    plan = []
    for hf_name, tensor in state.items():
        if hf_name == "lm_head.weight" and tied:
            continue  # llama.cpp reuses token_embd when there is no output.weight
        kind, block, rope_heads = _gguf_kind(hf_name, n_head, n_kv)
        if kind is None:
            raise ConfigError(
                f"the model has a tensor {hf_name!r} that the llama GGUF layout has no place for "
                f"(merge the adapter first, or {OTHER_FORMAT})"
            )
        gguf_name = gguf.TENSOR_NAMES[kind].format(bid=block) + ".weight"
        if tensor.ndim == 1:  # norms stay F32, as llama.cpp writes them
            plan.append(_Tensor(gguf_name, tensor, gguf.GGMLQuantizationType.F32, torch.float32))
        else:
            plan.append(_Tensor(gguf_name, tensor, qtype, torch_dtype, rope_heads))
    return plan


def _gguf_kind(hf_name: str, n_head: int, n_kv: int) -> tuple[gguf.MODEL_TENSOR | None, int | None, int]:
    """(GGUF tensor kind, block number, heads to permute over or 0) for a HF parameter name."""
    if hf_name in TOP_TENSORS:
        return TOP_TENSORS[hf_name], None, 0
    match = LAYER_NAME.fullmatch(hf_name)
    if match is None or match[2] not in LAYER_TENSORS:
        return None, None, 0
    rope_heads = {"self_attn.q_proj": n_head, "self_attn.k_proj": n_kv}.get(match[2], 0)
    return LAYER_TENSORS[match[2]], int(match[1]), rope_heads


# ---- the tokenizer -----------------------------------------------------------------------------


@dataclass
class _Vocabulary:
    """What the GGUF file says about the tokenizer."""

    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    special_ids: dict[str, int] = field(default_factory=dict)  # bos/eos/unk/pad -> id, where set
    add_bos: bool = False
    add_eos: bool = False
    chat_template: Any = None


def _refuse_tokenizer(what: str) -> ConfigError:
    return ConfigError(f"GGUF export writes byte-level BPE tokenizers (GPT-2 style) only: {what}; {OTHER_FORMAT}")


def _vocabulary(tokenizer: Any, vocab_size: int) -> _Vocabulary:
    """The tokenizer as GGUF's vocabulary, or ConfigError for one this writer cannot reproduce."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise _refuse_tokenizer(f"{type(tokenizer).__name__} is not a fast (tokenizers) tokenizer")
    spec = json.loads(backend.to_str())
    model = spec["model"]
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        kind = "BPE with byte fallback (SentencePiece style)" if model.get("type") == "BPE" else model.get("type")
        raise _refuse_tokenizer(f"this one is {kind}")
    if spec.get("normalizer") is not None:
        raise _refuse_tokenizer(f"this one has a {spec['normalizer'].get('type')} normalizer")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix") or model.get("ignore_merges"):
        raise _refuse_tokenizer("this BPE model uses subword affixes or ignore_merges")
    digits_split = _splits_digits(spec.get("pre_tokenizer"))

    alphabet = set(_byte_alphabet())
    tokens: list[str | None] = [None] * vocab_size
    types = [int(gguf.TokenType.NORMAL)] * vocab_size
    for token, index in model["vocab"].items():
        if index >= vocab_size:
            raise ConfigError(
                f"the tokenizer has token id {index} but the model's embedding has {vocab_size} rows: "
                "resize the embedding to the tokenizer before exporting"
            )
        if not set(token) <= alphabet:
            raise _refuse_tokenizer(f"vocabulary token {token!r} is not in the byte-level alphabet")
        tokens[index] = token
    for added in spec.get("added_tokens", []):
        index = added["id"]
        if index >= vocab_size:
            raise ConfigError(
                f"added token {added['content']!r} has id {index} but the model's embedding has {vocab_size} rows: "
                "resize the embedding to the tokenizer before exporting"
            )
        tokens[index] = added["content"]
        types[index] = int(gguf.TokenType.CONTROL if added["special"] else gguf.TokenType.USER_DEFINED)
    for index, token in enumerate(tokens):
        if token is None:  # rows of a padded embedding: named as llama.cpp's converter names them
            tokens[index] = f"[PAD{index}]"
            types[index] = int(gguf.TokenType.UNUSED)

    merges = []
    for merge in model.get("merges", []):
        pair = merge.split(" ") if isinstance(merge, str) else list(merge)
        if len(pair) != 2 or any(" " in part for part in pair):
            raise _refuse_tokenizer(f"merge {merge!r} cannot be written as 'a b'")
        merges.append(" ".join(pair))

    # GPT-2's regex, or SmolLM's (each digit split off first). Without an explicit digit split the
    # vocabulary tells: one with no token holding a digit next to anything else was trained with
    # digits split (SmolLM's, whose tokenizer transformers rebuilds from a GGUF without that step).
    pre = PRE_DIGITS if digits_split or not _has_merged_digits(model["vocab"]) else PRE_GPT2

    special_ids = {}
    for key in ("bos", "eos", "unk", "pad"):
        index = getattr(tokenizer, f"{key}_token_id", None)
        if index is not None:
            special_ids[key] = int(index)
    add_bos, add_eos = _added_specials(tokenizer)
    return _Vocabulary(
        tokens=tokens,
        types=types,
        merges=merges,
        pre=pre,
        special_ids=special_ids,
        add_bos=add_bos,
        add_eos=add_eos,
        chat_template=getattr(tokenizer, "chat_template", None) or None,
    )


def _splits_digits(pre_tokenizer: dict | None) -> bool:
    """Whether the pre-tokenizer splits off single digits before GPT-2's byte-level regex; ConfigError
    for one that is neither that nor the plain byte-level regex."""
    steps = [pre_tokenizer] if pre_tokenizer and pre_tokenizer.get("type") != "Sequence" else []
    if pre_tokenizer and pre_tokenizer.get("type") == "Sequence":
        steps = pre_tokenizer.get("pretokenizers", [])
    kinds = [step.get("type") for step in steps]
    byte_level = steps[-1] if steps else {}
    if (
        kinds not in (["ByteLevel"], ["Digits", "ByteLevel"])
        or not byte_level.get("use_regex", True)
        or byte_level.get("add_prefix_space")
        or (kinds[0] == "Digits" and not steps[0].get("individual_digits"))
    ):
        shown = " + ".join(str(kind) for kind in kinds) or "none"
        raise _refuse_tokenizer(f"its pre-tokenizer ({shown}) is not GPT-2's byte-level split, with or without digits")
    return kinds[0] == "Digits"


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:  # whitespace and control bytes move to 256 and up, in order
            chars[byte] = chr(256 + extra)
            extra += 1
    return [chars[byte] for byte in range(256)]


def _has_merged_digits(vocab: dict[str, int]) -> bool:
    """Whether any token holds a digit (Unicode category N) together with other characters."""
    to_byte = {char: byte for byte, char in enumerate(_byte_alphabet())}
    for token in vocab:
        try:
            text = bytes(to_byte[char] for char in token).decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            continue  # part of a multi-byte character: not a digit run
        if len(text) > 1 and any(unicodedata.category(char)[0] == "N" for char in text):
            return True
    return False


def _added_specials(tokenizer: Any) -> tuple[bool, bool]:
    """(adds bos, adds eos) as the tokenizer behaves; ConfigError if it adds anything else."""
    plain = tokenizer.encode(PROBE_TEXT, add_special_tokens=False)
    full = tokenizer.encode(PROBE_TEXT)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    for add_bos in (False, True):
        for add_eos in (False, True):
            if (add_bos and bos is None) or (add_eos and eos is None):
                continue
            if full == [bos] * add_bos + plain + [eos] * add_eos:
                return add_bos, add_eos
    raise _refuse_tokenizer("its post-processor adds tokens other than a leading bos and a trailing eos")


def _add_tokenizer_keys(writer: gguf.GGUFWriter, vocab: _Vocabulary) -> None:
    writer.add_add_space_prefix(False)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    adders = {
        "bos": writer.add_bos_token_id,
        "eos": writer.add_eos_token_id,
        "unk": writer.add_unk_token_id,
        "pad": writer.add_pad_token_id,
    }
    for key, index in vocab.special_ids.items():
        adders[key](index)
    template = vocab.chat_template
    if isinstance(template, dict):  # named templates: "default" is the plain key, the others by name
        template = [{"name": key, "template": value} for key, value in template.items()]
    if template:
        writer.add_chat_template(template)
