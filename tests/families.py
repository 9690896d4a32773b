"""Tiny random-weight models of several transformers families (2 layers, width 64), saved in
transformers' format with loralab's small tokenizer: what a user passes as model=hub
model.name_or_path=<dir>. Each family names the structure it stands for."""

from __future__ import annotations

from pathlib import Path

# family -> (config values, tasks it is built for, what it covers)
WIDTH = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
FAMILIES: dict[str, tuple[dict, tuple[str, ...], str]] = {
    "llama": (
        {"model_type": "llama", **WIDTH, "num_key_value_heads": 2, "tie_word_embeddings": True},
        ("causal_lm", "seq_cls"),
        "decoder; grouped-query attention; tied embeddings; head `score`",
    ),
    "gpt2": (
        {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "n_inner": 128, "n_positions": 512},
        ("causal_lm", "seq_cls"),
        "decoder; transformers' Conv1D instead of Linear (fan_in_fan_out); tied embeddings",
    ),
    "phi3": (
        {"model_type": "phi3", **WIDTH, "num_key_value_heads": 4, "tie_word_embeddings": False},
        ("causal_lm",),
        "decoder; fused projections qkv_proj and gate_up_proj",
    ),
    "qwen2": (
        {"model_type": "qwen2", **WIDTH, "num_key_value_heads": 2, "tie_word_embeddings": False},
        ("causal_lm", "seq_cls"),
        "decoder; biases on q/k/v; untied output head",
    ),
    "gpt_neox": (
        {"model_type": "gpt_neox", **WIDTH, "tie_word_embeddings": False},
        ("causal_lm",),
        "decoder; fused query_key_value; output head embed_out",
    ),
    "opt": (
        {
            "model_type": "opt",
            "hidden_size": 64,
            "ffn_dim": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "word_embed_proj_dim": 64,
            "max_position_embeddings": 512,
        },
        ("seq_cls",),
        "decoder; learned positions; head `score`",
    ),
    "roberta": (
        {"model_type": "roberta", **WIDTH, "max_position_embeddings": 520, "type_vocab_size": 1},
        ("seq_cls",),
        "encoder; head nested in a module (classifier.dense, classifier.out_proj)",
    ),
    "bert": (
        {"model_type": "bert", **WIDTH, "max_position_embeddings": 512},
        ("seq_cls",),
        "encoder; pooler inside the base model, head `classifier` a Linear",
    ),
    "deberta_v2": (
        {
            "model_type": "deberta-v2",
            **WIDTH,
            "max_position_embeddings": 512,
            "relative_attention": True,
            "pos_att_type": ["p2c", "c2p"],
            "position_buckets": 32,
        },
        ("seq_cls",),
        "encoder; disentangled attention; pooler and classifier outside the base model",
    ),
    "electra": (
        {"model_type": "electra", **WIDTH, "embedding_size": 32, "max_position_embeddings": 512},
        ("seq_cls",),
        "encoder; embeddings_project; head nested in a module (classifier.dense, classifier.out_proj)",
    ),
    "distilbert": (
        {
            "model_type": "distilbert",
            "dim": 64,
            "hidden_dim": 128,
            "n_layers": 2,
            "n_heads": 4,
            "max_position_embeddings": 512,
        },
        ("seq_cls",),
        "encoder; a second head layer pre_classifier beside classifier",
    ),
    "xlnet": (
        {"model_type": "xlnet", "d_model": 64, "n_layer": 2, "n_head": 4, "d_inner": 128},
        ("seq_cls",),
        "encoder; head named neither classifier nor score (sequence_summary, logits_proj)",
    ),
    "t5": (
        {
            "model_type": "t5",
            "d_model": 64,
            "d_kv": 16,
            "d_ff": 128,
            "num_layers": 2,
            "num_decoder_layers": 2,
            "num_heads": 4,
            "relative_attention_num_buckets": 8,
            "feed_forward_proj": "gated-gelu",
        },
        ("seq2seq", "seq_cls"),
        "encoder-decoder; no biases; relative position buckets; gated FFN wi_0/wi_1; tied shared embedding",
    ),
    "bart": (
        {
            "model_type": "bart",
            "d_model": 64,
            "encoder_layers": 2,
            "decoder_layers": 2,
            "encoder_attention_heads": 4,
            "decoder_attention_heads": 4,
            "encoder_ffn_dim": 128,
            "decoder_ffn_dim": 128,
            "max_position_embeddings": 512,
        },
        ("seq2seq", "seq_cls"),
        "encoder-decoder; biases; learned positions; cross-attention encoder_attn; decoder starts from eos",
    ),
}


def save_family(family: str, task: str, root: Path, labels: list[str] | None = None, seed: int = 0) -> Path:
    """Build `family`'s tiny model for `task` (any task transformers has a class for, not only the
    ones the matrix trains) with random weights drawn from `seed` and save it, with loralab's small
    tokenizer, under root/<family>-<task> (once)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from loralab.models.sources import TINY_TOKENIZER_DIR
    from loralab.tasks import get_task

    target = Path(root) / f"{family}-{task}"
    if (target / "config.json").is_file():
        return target
    values = dict(FAMILIES[family][0])
    tokenizer = AutoTokenizer.from_pretrained(TINY_TOKENIZER_DIR)
    model_type = values.pop("model_type")
    ids = {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    extra = {}
    if task == "seq_cls":
        labels = labels or ["label_0", "label_1"]
        extra = {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {n: i for i, n in enumerate(labels)},
        }
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), **ids, **values, **extra)
    if config.is_encoder_decoder and getattr(config, "decoder_start_token_id", None) is None:
        config.decoder_start_token_id = tokenizer.pad_token_id  # T5's convention
    cls = get_task(task).model_class()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls.from_config(config)
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)
    return target
