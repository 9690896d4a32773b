"""Checks of a loaded base model that its config cannot answer."""

from __future__ import annotations

import torch

from loralab.errors import ModelError


def check_causal(model: torch.nn.Module, name: str) -> None:
    """Refuse a model that sees later tokens as a causal LM: an encoder (BERT, RoBERTa, ...) loads
    as AutoModelForCausalLM with bidirectional attention and would learn to copy the answer it must
    predict. Measured, not looked up: the logits of the first positions must not change when only
    later tokens do, beyond what recomputing the same input changes on this machine."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        vocab = model.get_input_embeddings().num_embeddings
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(0, vocab, (2, 8), generator=generator)
        later = ids.clone()
        later[:, 4:] = (ids[:, 4:] + 1 + torch.randint(0, vocab - 1, (2, 4), generator=generator)) % vocab
        with torch.no_grad():
            first = [model(input_ids=x.to(device)).logits[:, :4].float() for x in (ids, ids, later)]
    finally:
        model.train(was_training)
    scale = first[0].abs().max().clamp_min(1e-12)
    noise = ((first[0] - first[1]).abs().max() / scale).item()
    moved = ((first[0] - first[2]).abs().max() / scale).item()
    if moved > max(100 * noise, 1e-6):
        raise ModelError(
            f"model {name} ({type(model).__name__}) lets each token see the tokens after it (changing later tokens "
            "changes the logits of earlier ones): as a causal LM it would learn from the answer it must predict; "
            "train it on a classification task (data.format=classification), or use a decoder model"
        )
