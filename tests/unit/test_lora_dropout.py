"""LoRA dropout. compute.shared_dropout: the adapters that read one input share one mask. The keep
rate and scale are dropout's, eval mode is untouched, q/k/v (and gate/up) see the same dropped
tensor while o and down draw their own, nothing is cached between calls, and gradient
checkpointing's recomputation gives the gradients of the pass it recomputes.
compute.fast_dropout: the 16-bit mask keeps an element with probability 1 - p (to 2^-17) and
scales by the exact inverse, its gradient is the same mask and scale, and it is reproducible."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from loralab.lora_dropout import LEVELS, LoraDropout, SharedDropout, fast_dropout, install_dropout, kept_levels


def share_dropout(model, fast=False) -> int:
    return install_dropout(model, share=True, fast=fast)[0]


def tiny_lora(dropout: float, targets="all-linear"):
    from peft import LoraConfig, get_peft_model

    from tests.conftest import tiny_llama

    return get_peft_model(tiny_llama(300), LoraConfig(r=4, lora_dropout=dropout, target_modules=targets))


def dropped_inputs(model, ids) -> dict[str, torch.Tensor]:
    """What each adapter's A matrix received in one forward (the dropped copy of its input)."""
    seen = {}
    hooks = [
        module.lora_A["default"].register_forward_hook(lambda m, args, out, name=name: seen.__setitem__(name, args[0]))
        for name, module in model.named_modules()
        if hasattr(module, "lora_A") and "default" in module.lora_A
    ]
    model(input_ids=ids)
    for hook in hooks:
        hook.remove()
    return seen


def test_adapters_on_one_input_share_one_mask():
    model = tiny_lora(0.5)
    assert share_dropout(model) == 2 * 7  # every adapted linear of the 2 layers
    model.train()
    seen = dropped_inputs(model, torch.randint(0, 300, (2, 8)))
    layer = "base_model.model.model.layers.0"
    q, k, v, o = (seen[f"{layer}.self_attn.{p}_proj"] for p in "qkvo")
    gate, up, down = (seen[f"{layer}.mlp.{p}_proj"] for p in ("gate", "up", "down"))
    assert q is k is v and gate is up
    assert len({id(t) for t in (q, o, gate, down)}) == 4  # other inputs: their own masks


@pytest.mark.parametrize("fast", [False, True], ids=["torch", "fast"])
def test_keep_rate_and_scale_are_dropouts(fast):
    p = 0.3
    shared = SharedDropout(p, fast).train()
    torch.manual_seed(1)
    x = torch.ones(200_000)
    out = shared(x)
    kept = (out != 0).float().mean().item()
    # binomial: within 6 standard deviations of 1 - p
    assert abs(kept - (1 - p)) < 6 * math.sqrt(p * (1 - p) / x.numel())
    scale = LEVELS / kept_levels(p) if fast else 1 / (1 - p)
    assert torch.allclose(out[out != 0], torch.tensor(scale))
    assert shared(x) is out  # the same input again: the same mask
    other = shared(x.clone())
    assert other is not out and not torch.equal(other, out)  # another tensor: a new mask
    assert shared(x) is out  # both stay open until the parent's call ends
    shared.forget()
    assert shared(x) is not out


def test_nothing_is_cached_between_calls_and_copies_carry_nothing():
    model = tiny_lora(0.5)
    share_dropout(model)
    model.train()
    model(input_ids=torch.randint(0, 300, (2, 8)))
    shared = {id(m): m for m in model.modules() if isinstance(m, SharedDropout)}
    assert len(shared) == 4  # q/k/v and gate/up of each of 2 layers
    assert all(not m._seen for m in shared.values())
    copy.deepcopy(model)(input_ids=torch.randint(0, 300, (2, 8)))


def test_an_adapter_alone_under_its_parent_keeps_its_own_dropout():
    from loralab.variants.lora import ADAPTER, lora_layers

    model = tiny_lora(0.5, targets=["q_proj", "o_proj", "down_proj", "lm_head"])
    assert share_dropout(model) == 4  # q and o under each layer's attention
    kinds = {n.split("model.", 2)[-1]: type(m.lora_dropout[ADAPTER]) for n, m in lora_layers(model).items()}
    assert kinds["lm_head"] is torch.nn.Dropout and kinds["model.layers.0.mlp.down_proj"] is torch.nn.Dropout
    model.train()
    seen = dropped_inputs(model, torch.randint(0, 300, (2, 8)))
    layer = "base_model.model.model.layers.0.self_attn"
    # siblings that read different inputs draw their own masks
    assert seen[f"{layer}.q_proj"].shape == seen[f"{layer}.o_proj"].shape
    assert not torch.equal(seen[f"{layer}.q_proj"], seen[f"{layer}.o_proj"])


@pytest.mark.parametrize("fast", [False, True], ids=["torch", "fast"])
def test_gradient_checkpointing_recomputes_the_same_masks(fast):
    """A checkpointed layer reruns its forward in the backward pass: the shared masks drawn again
    must be those of the first pass (same gradients as without checkpointing, same seed)."""
    ids = torch.randint(0, 300, (2, 8))
    grads = []
    for checkpointing in (False, True):
        model = tiny_lora(0.5)
        share_dropout(model, fast)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.1, generator=torch.Generator().manual_seed(3))
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        model.train()
        torch.manual_seed(5)
        model(input_ids=ids).logits.square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    plain, checkpointed = grads
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        # the same masks: equal up to float rounding (other masks differ at the scale of the
        # gradient itself)
        scale = plain[name].abs().max().item()
        rounding = 64 * torch.finfo(torch.float32).eps * scale
        assert (plain[name] - checkpointed[name]).abs().max().item() <= rounding, name


@pytest.mark.parametrize("fast", [False, True], ids=["torch", "fast"])
def test_eval_mode_and_rate_zero_are_untouched(fast):
    ids = torch.randint(0, 300, (2, 8))
    plain, shared = tiny_lora(0.5), tiny_lora(0.5)
    assert share_dropout(shared, fast) == 14
    for m in (plain, shared):
        m.eval()
    with torch.no_grad():
        assert torch.equal(plain(input_ids=ids).logits, shared(input_ids=ids).logits)
    assert share_dropout(tiny_lora(0.0)) == 0  # no dropout: nothing to share


def test_gradients_reach_every_adapter_through_the_shared_copy():
    model = tiny_lora(0.5)
    share_dropout(model)
    model.train()
    # B starts at zero: give it values so that A's gradients are not zero either
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    model(input_ids=torch.randint(0, 300, (2, 8))).logits.square().mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())


# ---- compute.fast_dropout -------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.05, 0.1, 0.3, 0.5, 0.9])
def test_the_fast_mask_keeps_one_minus_p_and_keeps_the_expectation(p):
    keep = kept_levels(p) / LEVELS
    assert abs(keep - (1 - p)) <= 2**-17  # the keep probability, rounded to 16 bits
    torch.manual_seed(2)
    x = torch.ones(400_000)
    out = fast_dropout(x, p)
    kept = (out != 0).double().mean().item()
    # binomial: within 6 standard deviations of the rounded keep probability
    assert abs(kept - keep) < 6 * math.sqrt(keep * (1 - keep) / x.numel())
    # the scale is the exact inverse of the keep probability: kept elements are x / keep
    assert torch.equal(out[out != 0], torch.full_like(out[out != 0], LEVELS / kept_levels(p)))
    # unbiased: the mean of the output is x's within the binomial spread of the mean
    assert abs(out.double().mean().item() - 1.0) < 6 * math.sqrt((1 - keep) / keep / x.numel())
    # every position is equally likely to be kept: no stripe of the 16-bit words is favoured
    stripes = (out != 0).view(-1, 4).double().mean(0)
    assert ((stripes - keep).abs() < 6 * math.sqrt(keep * (1 - keep) / (x.numel() / 4))).all(), stripes


def test_the_fast_mask_is_seeded_shaped_and_differentiable():
    x = torch.randn(3, 5, 7, requires_grad=True)
    torch.manual_seed(4)
    out = fast_dropout(x, 0.5)
    torch.manual_seed(4)
    again = fast_dropout(x, 0.5)
    assert out.shape == x.shape and torch.equal(out, again)  # torch's generator: seeded runs repeat
    assert not torch.equal(fast_dropout(x, 0.5), out)  # the generator moved on: another mask
    out.backward(torch.ones_like(out))
    # the gradient is the same mask and scale: d out / d x = out / x where kept, 0 where dropped
    assert torch.equal(x.grad, torch.where(out != 0, LEVELS / kept_levels(0.5), 0.0))
    # a non-contiguous input gets a mask of its own shape
    t = torch.ones(6, 4).t()
    assert fast_dropout(t, 0.5).shape == (4, 6)


def test_rates_the_16_bit_mask_cannot_express_fall_back_to_torchs_dropout():
    for p in (1e-6, 1 - 1e-6):
        layer = LoraDropout(p, fast=True)
        assert not layer.fast  # rounding would keep everything (or nothing): torch's dropout runs
    layer = LoraDropout(0.3, fast=True).train()
    assert layer.fast
    torch.manual_seed(0)
    out = layer(torch.ones(10_000))
    assert set(out.unique().tolist()) == {0.0, torch.tensor(LEVELS / kept_levels(0.3)).item()}
    assert torch.equal(layer.eval()(torch.ones(10)), torch.ones(10))  # eval: the input itself


def test_fast_masks_on_the_adapters_that_do_not_share():
    model = tiny_lora(0.5, targets=["q_proj", "o_proj", "down_proj", "lm_head"])
    # q and o share under each attention; down and lm_head are alone: a fast mask of their own
    assert install_dropout(model, share=True, fast=True) == (4, 2 * 3 + 1)
    kinds = {type(m) for m in model.modules() if isinstance(m, torch.nn.Dropout)}
    assert kinds == {SharedDropout, LoraDropout}
    plain = tiny_lora(0.5, targets=["q_proj"])
    assert install_dropout(plain, share=False, fast=True) == (0, 2)
    assert install_dropout(tiny_lora(0.0), share=True, fast=True) == (0, 0)  # no dropout: identity
    model.train()
    model(input_ids=torch.randint(0, 300, (2, 8))).logits.square().mean().backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad and "lora_A" in n]
    assert grads and all(g is not None for g in grads)
