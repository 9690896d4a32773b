"""Causal LM: a decoder continues the prompt; the loss counts the answer's tokens only (prompt
positions get IGNORE_INDEX). With a chat template, the prompt is a user turn and the answer the
assistant's."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from loralab.errors import ModelError
from loralab.tasks.base import CHAT_NEEDS_TEMPLATE, IGNORE_INDEX, Item, Task

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


# the most logits (positions x vocabulary) one piece of the labelled loss computes at once: 32M
# floats, 128 MB (SmolLM2's 49,152-word vocabulary: 682 positions)
LOGITS_PER_CHUNK = 1 << 25
# the labelled loss against the model's own, on a probe batch: relative tolerance per compute dtype
HEAD_CHECK_TOLERANCE = {"float32": 1e-4, "low": 2e-2}
_HEAD_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# a shared prefix shorter than this is computed with each prompt (one more forward would not pay)
MIN_SHARED_PREFIX = 4
# models whose loss from a once-computed prefix was checked against their loss over whole rows
_PREFIX_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# config flags under which a model's loss or logits are more than the head's projection at the
# labelled positions (soft-capping, scaling, a router's auxiliary loss): full logits, no probe
HEAD_CHANGING_FLAGS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_router_logits")


def head_parts(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(the decoder stack, the output head) of a causal LM (inside a peft model too), or None
    when the model does not expose them the way transformers' causal LMs do."""
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(hf, "base_model", None)
    head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
    if backbone is None or backbone is hf or head is None:
        return None
    return backbone, head


def shared_prefix_length(batch: dict) -> int:
    """How many first tokens every row of a right-padded batch shares (unpadded), stopping at the
    first position whose hidden state the loss reads (it predicts a labelled token): those tokens
    can go through the model once for the whole batch. 0 below MIN_SHARED_PREFIX, for one row, and
    for packed batches (their own position ids)."""
    ids, mask = batch["input_ids"], batch.get("attention_mask")
    if ids.dim() != 2 or ids.shape[0] < 2 or mask is None or set(batch) - {"input_ids", "attention_mask", "labels"}:
        return 0
    same = ((ids == ids[:1]) & (mask == 1)).all(0)
    length = int(same.int().cumprod(0).sum())
    if "labels" in batch:
        needed = (batch["labels"][:, 1:] != IGNORE_INDEX).any(0)
        if bool(needed.any()):
            length = min(length, int(needed.int().argmax()))
    return length if length >= MIN_SHARED_PREFIX else 0


def _cache_key(output: Any) -> str:
    # transformers names the key/value cache `cache` (earlier 5.x: `past_key_values`)
    return "cache" if "cache" in output else "past_key_values"


def prefix_states(backbone: torch.nn.Module, inputs: dict, length: int) -> torch.Tensor:
    """The decoder stack's last hidden states at positions `length` onwards, with the first
    `length` tokens (the same in every row) run once as a one-row batch whose key/value cache is
    repeated to every row. Differentiable: each row's gradient reaches the shared prefix, summed."""
    ids = inputs["input_ids"]
    first = backbone(input_ids=ids[:1, :length], use_cache=True)
    key = _cache_key(first)
    cache = first[key]
    cache.batch_repeat_interleave(ids.shape[0])
    rest = backbone(input_ids=ids[:, length:], attention_mask=inputs["attention_mask"], use_cache=True, **{key: cache})
    return rest.last_hidden_state


def labelled_loss(
    backbone: torch.nn.Module,
    head: torch.nn.Module,
    batch: dict,
    num_items: torch.Tensor | None = None,
    prefix: int = 0,
) -> torch.Tensor:
    """The causal LM loss with only the labelled positions through the output head: the hidden
    states that predict a labelled token are gathered, projected in pieces of at most
    LOGITS_PER_CHUNK logits (each recomputed in the backward pass when there are several), and
    their cross-entropy summed; the mean over them (or the sum / `num_items`), as the model's own
    loss, without ever holding [batch, sequence, vocabulary] logits. `prefix` > 0: the batch's
    first `prefix` tokens (shared_prefix_length) run once for every row (prefix_states)."""
    from loralab.tasks.packing import model_batch

    inputs = {k: v for k, v in model_batch(batch).items() if k != "labels"}
    if prefix > 0:
        hidden = prefix_states(backbone, inputs, prefix)
    else:
        hidden = backbone(**inputs, use_cache=False).last_hidden_state
    labels = batch["labels"][:, 1 + prefix :]
    keep = labels != IGNORE_INDEX
    total = head_cross_entropy(head, hidden[:, :-1][keep], labels[keep])
    count = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
    return total / (num_items if num_items is not None else count)


def head_cross_entropy(head: torch.nn.Module, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The summed cross-entropy of `head(states)` against `targets`, in pieces of at most
    LOGITS_PER_CHUNK logits (each recomputed in the backward pass when there are several)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    def piece(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(head(h).float(), y, reduction="sum")

    step = max(1, LOGITS_PER_CHUNK // max(1, head.weight.shape[0]))
    if states.shape[0] <= step:
        return piece(states, targets)
    total = states.new_zeros((), dtype=torch.float32)
    for start in range(0, states.shape[0], step):
        h, y = states[start : start + step], targets[start : start + step]
        total = total + (checkpoint(piece, h, y, use_reentrant=False) if torch.is_grad_enabled() else piece(h, y))
    return total


def agrees(mine: torch.Tensor, reference: torch.Tensor, weight: torch.Tensor) -> bool:
    """A probe's loss computed another way is finite and within the compute dtype's rounding of the
    reference (HEAD_CHECK_TOLERANCE, relative; low precision under autocast or non-fp32 weights)."""
    import torch

    low = weight.dtype != torch.float32 or torch.is_autocast_enabled(weight.device.type)
    tolerance = HEAD_CHECK_TOLERANCE["low" if low else "float32"]
    return bool(torch.isfinite(mine)) and abs(float(mine) - float(reference)) <= tolerance * max(
        1.0, abs(float(reference))
    )


def labelled_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """The model's (decoder stack, head) when the labelled loss is its own loss, else None.
    Measured once per model, not looked up: on a probe batch in eval mode (no dropout, no random
    number drawn), both losses must agree to the compute dtype's rounding. A model whose head does
    more than a projection (logit soft-capping, scaling) fails it and keeps its full logits."""
    if model in _HEAD_CHECKED:
        return _HEAD_CHECKED[model]
    import torch

    parts = head_parts(model)
    config = getattr(model, "config", None)
    flags = [f for f in HEAD_CHANGING_FLAGS if getattr(config, f, None) not in (None, False, 1, 1.0)]
    weight = getattr(parts[1], "weight", None) if parts is not None else None
    if flags or not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        if parts is not None:
            log.info(
                "the output head here is not a plain projection (%s): full logits",
                ", ".join(f"{f}={getattr(config, f)}" for f in flags) or "no 2-d weight",
            )
        parts = None
    if parts is not None:
        backbone, head = parts
        device = weight.device
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(0, weight.shape[0], (2, 12), generator=generator).to(device)
        mask = torch.ones_like(ids)
        mask[1, 9:] = 0
        labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
        labels[:, :6] = IGNORE_INDEX
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        modes = {m: m.training for m in model.modules()}
        model.eval()
        try:
            with torch.no_grad():
                full = model(**batch, use_cache=False).loss.float()
                mine = labelled_loss(backbone, head, batch).float()
        except Exception as exc:  # noqa: BLE001 - a model that cannot run its parts alone keeps its logits
            log.info("the labelled loss does not run on this model (%s): full logits", exc)
            mine = full = None
        finally:
            for module, mode in modes.items():
                module.training = mode
        if mine is None or not agrees(mine, full, weight):
            if mine is not None:
                log.warning(
                    "the output head at labelled positions gives loss %.6g where the model gives %.6g: this model "
                    "computes full logits (compute.labelled_head has no effect on it)",
                    float(mine),
                    float(full),
                )
            parts = None
    _HEAD_CHECKED[model] = parts
    return parts


def prefix_shares(model: torch.nn.Module, parts: tuple[torch.nn.Module, torch.nn.Module]) -> bool:
    """Whether the labelled loss with a batch's common prefix run once (prefix_states) is this
    model's labelled loss over whole rows. Measured once per model, not looked up, as labelled_head
    is: on a probe batch in eval mode whose rows share their first tokens, one row padded, to the
    compute dtype's rounding. A model whose cache cannot be repeated per row, or whose positions
    do not continue from the cache, fails it and computes each row whole. False while the model
    recomputes its blocks in the backward pass (gradient checkpointing re-runs the cache's update)."""
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    # transformers 5.x renamed is_gradient_checkpointing (deprecated) to is_activation_checkpointing
    flag = "is_activation_checkpointing"
    if getattr(hf, flag if hasattr(type(hf), flag) else "is_gradient_checkpointing", False):
        return False
    if model in _PREFIX_CHECKED:
        return _PREFIX_CHECKED[model]
    import torch

    backbone, head = parts
    with probing(model) as (device, vocab, generator):
        ids = torch.randint(0, vocab, (3, 14), generator=generator).to(device)
        ids[:, :7] = ids[0, :7]
        mask = torch.ones_like(ids)
        mask[2, 11:] = 0
        labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
        labels[:, :9] = IGNORE_INDEX
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        length = shared_prefix_length(batch)
        try:
            with torch.no_grad():
                whole = labelled_loss(backbone, head, batch).float()
                shared = labelled_loss(backbone, head, batch, prefix=length).float()
        except Exception as exc:  # noqa: BLE001 - a model whose cache cannot be shared computes rows whole
            log.info("a shared prefix does not run on this model (%s): each row whole", exc)
            whole = shared = None
    ok = length == 7 and shared is not None and agrees(shared, whole, head.weight)
    if shared is not None and not ok:
        log.warning(
            "the loss with the shared prefix computed once is %.6g where each row whole gives %.6g: this model "
            "computes each row whole (compute.shared_prefix has no effect on its loss)",
            float(shared),
            float(whole),
        )
    _PREFIX_CHECKED[model] = ok
    return ok


# models whose loss and answers from one pass over each prompt were checked against two passes:
# {model: {with a shared prefix (bool): agrees}}
_ONCE_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def completion_spans(batch: dict) -> list[tuple[int, int]] | None:
    """Each row's (prompt length, row length) in a right-padded prompt/completion batch: the labels
    are the row's own tokens from the first labelled position to its end, nothing before. None for
    any other shape (packed rows, labels with gaps, a row without a label or without a prompt)."""
    import torch

    ids, mask, labels = batch["input_ids"], batch.get("attention_mask"), batch.get("labels")
    if mask is None or labels is None or ids.dim() != 2 or set(batch) - {"input_ids", "attention_mask", "labels"}:
        return None
    lengths = mask.sum(1)
    spans = []
    for i, n in enumerate(lengths.tolist()):
        keep = labels[i, :n] != IGNORE_INDEX
        if not bool(mask[i, :n].all()) or not bool(keep.any()) or bool((labels[i, n:] != IGNORE_INDEX).any()):
            return None
        p = int(keep.int().argmax())
        if p < 1 or not bool(keep[p:].all()) or not torch.equal(labels[i, p:n], ids[i, p:n]):
            return None
        spans.append((p, n))
    return spans


def prompts_prefix(ids: torch.Tensor, spans: list[tuple[int, int]]) -> int:
    """How many first tokens the prompts of a batch (completion_spans) share, to run once as one
    row in prompt_once; 0 below MIN_SHARED_PREFIX."""
    shared = common_prefix([ids[i, :p].tolist() for i, (p, _) in enumerate(spans)])
    return shared if shared >= MIN_SHARED_PREFIX else 0


def prompt_once(
    model: torch.nn.Module,
    parts: tuple[torch.nn.Module, torch.nn.Module],
    batch: dict,
    answers: int,
    config: Any,
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The labelled loss of a prompt/completion batch and the greedy answers of its first `answers`
    rows, each prompt going through the model once for both (compute.prompt_once): the prompts'
    common first tokens once as one row (compute.shared_prefix), each prompt's own tokens but its
    last after left padding; that key/value cache then reads the completions (the loss: each
    prompt's last token and the completion but its last, right-padded, positions counted from the
    attention mask) and, cut back to the prompts, starts the greedy decoding. Returns (summed loss,
    the answered rows' generated ids after their prompts (None for 0)) or None for a batch of
    another shape (completion_spans). The same loss and answers as computing them apart, up to
    float rounding (prompt_once_agrees checks it once per model and way: with a shared prefix or without)."""
    import torch

    spans = completion_spans(batch)
    if spans is None:
        return None
    backbone, head = parts
    ids = batch["input_ids"]
    rows, device = ids.shape[0], ids.device
    shared = prompts_prefix(ids, spans)
    cache, key = None, "past_key_values"
    if shared:
        first = backbone(input_ids=ids[:1, :shared], use_cache=True)
        key = _cache_key(first)
        cache = first[key]
        cache.batch_repeat_interleave(rows)
    # each prompt's own tokens but its last, left-padded (the last starts the completion and the answer)
    width = max(p - shared - 1 for p, _ in spans)
    own = torch.zeros((rows, width), dtype=ids.dtype, device=device)
    context = torch.zeros((rows, shared + width), dtype=torch.long, device=device)
    context[:, :shared] = 1
    for i, (p, _) in enumerate(spans):
        k = p - shared - 1
        if k:
            own[i, width - k :] = ids[i, shared : p - 1]
            context[i, shared + width - k :] = 1
    if width:
        positions = (context.cumsum(1) - 1).clamp_min(0)[:, shared:]
        given = {key: cache} if cache is not None else {}
        out = backbone(input_ids=own, attention_mask=context, position_ids=positions, use_cache=True, **given)
        key = _cache_key(out)
        cache = out[key]
    # the loss: each prompt's last token and its completion but the last, each predicting the next
    span = max(n - p for p, n in spans)
    tail = torch.zeros((rows, span), dtype=ids.dtype, device=device)
    targets = torch.full((rows, span), IGNORE_INDEX, dtype=ids.dtype, device=device)
    for i, (p, n) in enumerate(spans):
        tail[i, : n - p] = ids[i, p - 1 : n - 1]
        targets[i, : n - p] = ids[i, p:n]
    keep = targets != IGNORE_INDEX
    mask = torch.cat([context, keep.long()], 1)
    positions = (mask.cumsum(1) - 1).clamp_min(0)[:, shared + width :]
    given = {key: cache} if cache is not None else {}
    out = backbone(input_ids=tail, attention_mask=mask, position_ids=positions, use_cache=True, **given)
    total = head_cross_entropy(head, out.last_hidden_state[keep], targets[keep])
    if answers <= 0:
        return total, None
    key = _cache_key(out)
    cache = out[key]
    cache.crop(-span)
    if cache.get_seq_length() != shared + width:  # the completions must be gone before answering
        return None
    if answers < rows:
        cache.batch_select_indices(torch.arange(answers, device=device))
    last = torch.tensor([[ids[i, p - 1]] for i, (p, _) in enumerate(spans[:answers])], dtype=ids.dtype, device=device)
    start = torch.cat([ids[:answers, :shared], own[:answers], last], 1)
    start_mask = torch.cat([context[:answers], torch.ones_like(last)], 1)
    generated = model.generate(input_ids=start, attention_mask=start_mask, generation_config=config, **{key: cache})
    return total, generated[:, start.shape[1] :]


def prompt_once_agrees(
    model: torch.nn.Module, parts: tuple[torch.nn.Module, torch.nn.Module], shared: bool = True
) -> bool:
    """Whether prompt_once gives this model's labelled loss over whole rows and the answers that
    generating alone gives, on batches whose prompts share a prefix (`shared`: it runs once, as one
    row) or do not. Measured once per model and way, when a batch first takes that way, as
    prefix_shares is: on a probe batch in eval mode, prompts of three lengths, one row padded, one
    row not answered; the loss to the compute dtype's rounding, the generated tokens equal. A model
    whose cache cannot be cut back or extended this way fails it and computes the loss and the
    answers apart."""
    checked = _ONCE_CHECKED.setdefault(model, {})
    if shared in checked:
        return checked[shared]
    import torch

    from loralab.evaluation import greedy_ids_config

    backbone, head = parts
    prefix = 7 if shared else 0
    with probing(model) as (device, vocab, generator):
        ids = torch.randint(1, vocab, (3, 16), generator=generator).to(device)
        ids[:, :prefix] = ids[0, :prefix]
        mask = torch.ones_like(ids)
        mask[2, 13:] = 0
        labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
        for row, p in enumerate((10, 11, 9)):
            labels[row, :p] = IGNORE_INDEX
        ids = ids.masked_fill(mask == 0, 0)
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        config = greedy_ids_config(model, 0, None, 3)
        # three tokens each way: an end token the checkpoint's generation config names (transformers
        # fills the unset one from it) must not end one way's answer early
        config.min_new_tokens = 3
        try:
            with torch.no_grad():
                whole = labelled_loss(backbone, head, batch).float()
                once = prompt_once(model, parts, batch, 2, config)
                alone = [
                    model.generate(
                        input_ids=ids[i : i + 1, :p], attention_mask=mask[i : i + 1, :p], generation_config=config
                    )[0, p:]
                    for i, p in ((0, 10), (1, 11))
                ]
        except Exception as exc:  # noqa: BLE001 - a model whose cache cannot be cut back computes apart
            log.info("one pass per prompt for the loss and the answer does not run on this model (%s)", exc)
            checked[shared] = False
            return False
    count = (labels[:, 1:] != IGNORE_INDEX).sum()
    ok = (
        once is not None
        and agrees(once[0].float() / count, whole, head.weight)
        and once[1] is not None
        and [list(r) for r in once[1].tolist()] == [a.tolist() for a in alone]
    )
    if not ok:
        log.warning(
            "the loss and answers from one pass per prompt differ from computing them apart on this model "
            "(prompts %s a shared prefix): it computes them apart (compute.prompt_once has no effect there)",
            "with" if shared else "without",
        )
    checked[shared] = ok
    return ok


def split_chat(tokenizer: Any, prompt_messages: list[dict], answer: str) -> tuple[str, str]:
    """Prompt text (with the generation prompt) and the completion text the template appends."""
    prompt_text = tokenizer.apply_chat_template(prompt_messages, add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template(
        prompt_messages + [{"role": "assistant", "content": answer}], tokenize=False
    )
    if full_text.startswith(prompt_text):
        return prompt_text, full_text[len(prompt_text) :]
    # templates that rewrite earlier turns: fall back to the answer and an end token
    return prompt_text, answer + (tokenizer.eos_token or "")


def encode_pair(tokenizer: Any, prompt: str, completion: str, max_length: int) -> dict:
    """Prompt then completion in one sequence, truncated to max_length; labels on the completion."""
    prompt_ids = tokenizer(prompt, add_special_tokens=not tokenizer.chat_template)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    input_ids = prompt_ids + completion_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + completion_ids
    truncated = len(input_ids) > max_length
    input_ids, labels = input_ids[:max_length], labels[:max_length]
    return {
        "input_ids": input_ids,
        "labels": labels,
        "length": len(input_ids),
        "prompt_length": len(prompt_ids),
        "full_length": len(prompt_ids) + len(completion_ids),
        "truncated": truncated,
        # nothing left to learn from when truncation removed the whole completion
        "keep": any(label != IGNORE_INDEX for label in labels),
    }


def chat_text(tokenizer: Any, item: Item) -> tuple[str, str]:
    """The prompt and completion text of a prompt/completion or chat item: through the chat
    template when the tokenizer has one (a chat item needs one)."""
    if item.messages is not None:
        if not tokenizer.chat_template:
            raise ValueError(CHAT_NEEDS_TEMPLATE)
        return split_chat(tokenizer, item.messages, item.answer)
    if tokenizer.chat_template:
        return split_chat(tokenizer, [{"role": "user", "content": item.prompt}], item.answer)
    return item.prompt, item.answer + (tokenizer.eos_token or "")


@contextmanager
def probing(model: torch.nn.Module) -> Iterator[tuple[torch.device, int, torch.Generator]]:
    """A model probed in eval mode (no dropout) and each module put back in its mode after (a
    submodule kept in eval mode stays so): its device, its vocabulary size and a seeded generator of
    its own (the global random state is not drawn)."""
    import torch

    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield (
            next(model.parameters()).device,
            model.get_input_embeddings().num_embeddings,
            torch.Generator().manual_seed(0),
        )
    finally:
        for module, mode in modes.items():
            module.training = mode


def check_causal(model: torch.nn.Module, name: str) -> None:
    """Refuse a model that sees later tokens as a causal LM: an encoder (BERT, RoBERTa, ...) loads
    as AutoModelForCausalLM with bidirectional attention and would learn to copy the answer it must
    predict. Measured, not looked up: the logits of the first positions must not change when only
    later tokens do, beyond what recomputing the same input changes on this machine."""
    import torch

    with probing(model) as (device, vocab, generator), torch.no_grad():
        ids = torch.randint(0, vocab, (2, 8), generator=generator)
        later = ids.clone()
        later[:, 4:] = (ids[:, 4:] + 1 + torch.randint(0, vocab - 1, (2, 4), generator=generator)) % vocab
        first = [model(input_ids=x.to(device)).logits[:, :4].float() for x in (ids, ids, later)]
    scale = first[0].abs().max().clamp_min(1e-12)
    noise = ((first[0] - first[1]).abs().max() / scale).item()
    moved = ((first[0] - first[2]).abs().max() / scale).item()
    if moved > max(100 * noise, 1e-6):
        raise ModelError(
            f"model {name} ({type(model).__name__}) lets each token see the tokens after it (changing later tokens "
            "changes the logits of earlier ones): as a causal LM it would learn from the answer it must predict; "
            "train it on a classification task (data.format=classification), or use a decoder model"
        )


def common_prefix(prompts: list[list[int]]) -> int:
    """How many first tokens all prompts share, leaving each at least one of its own (the first
    answer token is predicted from a prompt's own last position); 0 for fewer than two prompts."""
    if len(prompts) < 2:
        return 0
    first, limit = prompts[0], min(len(p) for p in prompts) - 1
    for i in range(max(limit, 0)):
        if any(p[i] != first[i] for p in prompts[1:]):
            return i
    return max(limit, 0)


class CausalLM(Task):
    name = "causal_lm"
    peft_type = "CAUSAL_LM"
    auto_class = "AutoModelForCausalLM"
    formats = ("prompt_completion", "chat")
    metric = "exact_match"
    encoder_decoder = False
    models_text = True
    templates_prompts = True
    answers_in_loss = True

    def check_model(self, model: torch.nn.Module, name: str) -> None:
        check_causal(model, name)

    def encode(self, tokenizer: Any, item: Item, max_length: int, label_ids: dict | None) -> dict:
        prompt, completion = chat_text(tokenizer, item)
        return encode_pair(tokenizer, prompt, completion, max_length)

    def forward(self, model: torch.nn.Module, batch: dict, num_items: torch.Tensor | None = None) -> Any:
        from loralab.tasks.packing import model_batch

        # a packed batch (data.packing) runs on its position ids, without its attention mask
        return super().forward(model, model_batch(batch), num_items)

    def predicted(self, batch: dict) -> torch.Tensor:
        # the model predicts position t+1 from t: labels shifted by one, IGNORE_INDEX ignored
        return (batch["labels"][:, 1:] != IGNORE_INDEX).sum()

    def loss(
        self,
        model: torch.nn.Module,
        batch: dict,
        num_items: torch.Tensor | None = None,
        labelled: bool = False,
        shared_prefix: bool = False,
    ) -> torch.Tensor:
        parts = labelled_head(model) if labelled else None
        if parts is None:
            return self.forward(model, batch, num_items).loss
        return labelled_loss(*parts, batch, num_items, prefix=self._prefix(model, parts, batch, shared_prefix))

    def loss_sums(
        self, model: torch.nn.Module, batch: dict, labelled: bool = False, shared_prefix: bool = False
    ) -> torch.Tensor:
        import torch

        parts = labelled_head(model) if labelled else None
        if parts is None:
            return super().loss_sums(model, batch)
        count = self.predicted(batch).float()
        prefix = self._prefix(model, parts, batch, shared_prefix)
        loss = labelled_loss(*parts, batch, prefix=prefix).detach().float()
        return torch.stack([loss * count, count, torch.zeros_like(count)])

    def loss_sums_and_answers(
        self,
        model: torch.nn.Module,
        batch: dict,
        prompts: list[list[int]],
        tokenizer: Any,
        config: Any,
    ) -> tuple[torch.Tensor, list[str]] | None:
        """loss_sums (labelled) and the greedy answers of the batch's first len(`prompts`) rows,
        each prompt through the model once for both (compute.prompt_once, prompt_once). None when
        the model or the batch does not allow it, or when the batch's prompts are not `prompts`:
        the caller computes them apart."""
        import torch

        parts = labelled_head(model)
        spans = completion_spans(batch) if parts is not None else None
        if spans is None or len(prompts) > len(spans):
            return None
        ids = batch["input_ids"]
        if any(ids[i, :p].tolist() != list(prompts[i]) for i, (p, _) in enumerate(spans[: len(prompts)])):
            return None
        if not prompt_once_agrees(model, parts, prompts_prefix(ids, spans) > 0):
            return None
        out = prompt_once(model, parts, batch, len(prompts), config)
        if out is None:
            return None
        total, generated = out
        count = self.predicted(batch).float()
        sums = torch.stack([total.detach().float(), count, torch.zeros_like(count)])
        answers = tokenizer.batch_decode(generated, skip_special_tokens=True) if generated is not None else []
        return sums, answers

    @staticmethod
    def _prefix(model: torch.nn.Module, parts: tuple, batch: dict, shared_prefix: bool) -> int:
        """The batch's first tokens to run once (compute.shared_prefix, with the labelled loss)."""
        if not shared_prefix:
            return 0
        length = shared_prefix_length(batch)
        return length if length and prefix_shares(model, parts) else 0

    def probe_batch(self, blocks: torch.Tensor) -> dict:
        # every token predicted from the ones before it
        import torch

        return {"input_ids": blocks, "attention_mask": torch.ones_like(blocks), "labels": blocks}

    def generate(
        self,
        model: torch.nn.Module,
        prompts: list[list[int]],
        tokenizer: Any,
        config: Any,
        streamer: Any = None,
        shared_prefix: bool = False,
    ) -> list[str]:
        """Left-padded prompts; the answer is what follows them. `shared_prefix`: the tokens every
        prompt starts with (a chat template's system turn, an instruction) go through the model once,
        their key/value cache is copied to each prompt, and each prompt's own tokens follow them after
        its padding (positions counted from the attention mask: each as if unpadded)."""
        import torch

        device = next(model.parameters()).device
        length = common_prefix(prompts) if shared_prefix and streamer is None else 0
        if length >= MIN_SHARED_PREFIX:
            first = model(input_ids=torch.tensor([prompts[0][:length]], device=device), use_cache=True)
            key = _cache_key(first)
            cache = first.get(key)
            if hasattr(cache, "batch_repeat_interleave"):
                cache.batch_repeat_interleave(len(prompts))
                width = max(len(p) for p in prompts) - length
                ids = torch.full((len(prompts), length + width), tokenizer.pad_token_id, dtype=torch.long)
                mask = torch.zeros_like(ids)
                ids[:, :length] = torch.tensor(prompts[0][:length])
                mask[:, :length] = 1
                for i, p in enumerate(prompts):
                    own = p[length:]
                    ids[i, length + width - len(own) :] = torch.tensor(own)
                    mask[i, length + width - len(own) :] = 1
                out = model.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config, **{key: cache}
                )
                return tokenizer.batch_decode(out[:, length + width :], skip_special_tokens=True)
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        out = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config, streamer=streamer
        )
        return tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
