"""compute.shared_prefix: a batch's common first tokens go through the model once and their cache is
copied to each prompt; each prompt's own tokens follow after its padding with the positions it
would have alone. The answers are those of each prompt generated alone, on two families (rotary
positions, learned positions)."""

from __future__ import annotations

import pytest
import torch

from loralab.evaluation import greedy_config
from loralab.tasks import get_task
from loralab.tasks.causal_lm import MIN_SHARED_PREFIX, common_prefix
from tests.conftest import tiny_gpt2, tiny_llama


def test_common_prefix_leaves_each_prompt_a_token_of_its_own():
    assert common_prefix([[1, 2, 3, 9], [1, 2, 3, 7, 7]]) == 3
    assert common_prefix([[1, 2, 3], [1, 2, 3]]) == 2  # identical: the last token is each one's own
    assert common_prefix([[1, 2], [1, 2, 3, 4]]) == 1
    assert common_prefix([[5, 2], [1, 2]]) == 0
    assert common_prefix([[1, 2, 3]]) == 0  # one prompt: nothing to share
    assert common_prefix([[1], [1]]) == 0


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_answers_with_a_shared_prefix_are_each_prompts_alone(tiny_tokenizer, family):
    model = (tiny_llama if family == "llama" else tiny_gpt2)(len(tiny_tokenizer)).eval()
    task = get_task("causal_lm")
    config = greedy_config(model, tiny_tokenizer, max_new_tokens=8)
    torch.manual_seed(3)
    prefix = torch.randint(5, len(tiny_tokenizer), (9,)).tolist()
    # own parts of 1 to 6 tokens: the shorter ones are padded between the prefix and themselves
    prompts = [prefix + torch.randint(5, len(tiny_tokenizer), (n,)).tolist() for n in (1, 4, 2, 6, 3)]
    assert common_prefix(prompts) == 9 >= MIN_SHARED_PREFIX
    with torch.no_grad():
        shared = task.generate(model, prompts, tiny_tokenizer, config, shared_prefix=True)
        whole = task.generate(model, prompts, tiny_tokenizer, config, shared_prefix=False)
        alone = [task.generate(model, [p], tiny_tokenizer, config)[0] for p in prompts]
    assert shared == alone == whole
    assert len(set(alone)) > 1  # the prompts' own tokens matter: not one answer for all


def test_the_first_answer_tokens_logits_are_those_of_the_prompt_alone(tiny_tokenizer):
    """The cache of the prefix, copied, and each prompt's own tokens after padding give the logits
    of the prompt computed alone, to within what batching itself changes on this machine."""
    model = tiny_llama(len(tiny_tokenizer)).eval()
    task = get_task("causal_lm")
    torch.manual_seed(4)
    prefix = torch.randint(5, len(tiny_tokenizer), (7,)).tolist()
    prompts = [prefix + torch.randint(5, len(tiny_tokenizer), (n,)).tolist() for n in (2, 5)]
    seen = []
    real_generate = model.generate

    def first_logits(**kwargs):
        out = real_generate(**kwargs, output_logits=True, return_dict_in_generate=True)
        seen.append(out.logits[0].float())
        return out.sequences

    model.generate = first_logits
    config = greedy_config(model, tiny_tokenizer, max_new_tokens=1)
    with torch.no_grad():
        task.generate(model, prompts, tiny_tokenizer, config, shared_prefix=True)
        task.generate(model, prompts, tiny_tokenizer, config, shared_prefix=False)
        alone = torch.stack([model(input_ids=torch.tensor([p])).logits[0, -1] for p in prompts])
    shared, padded = seen
    # batching alone (left padding) moves the logits by this much here; the shared prefix may too
    noise = (padded - alone).abs().max().item()
    scale = alone.abs().max().item()
    assert (shared - alone).abs().max().item() <= max(4 * noise, 16 * torch.finfo(torch.float32).eps * scale)
