"""The trainer's log-prob pass: log-probs at the sampling temperature, and the memory-lean pass
(LM head on the response positions only, chunked selective log-softmax) giving today's numbers."""

from __future__ import annotations

import copy

import pytest
import torch

from workbench.bench.logprob import full_vocab_logprobs
from workbench.training.batch import pack
from workbench.training.logprobs import check_head, response_logprobs, selective_logprobs

PROMPTS, RESPONSES = [[1, 14, 29, 7], [1, 15, 29]], [[30, 15, 2], [16, 17, 18, 19, 2]]


def by_hand(model, temperature: float) -> list[torch.Tensor]:
    """Each row alone: logits of the full forward, divided by T, log-softmax written out."""
    out = []
    for p, r in zip(PROMPTS, RESPONSES):
        logits = model(input_ids=torch.tensor([p + r])).logits[0, len(p) - 1 : -1].double() / temperature
        log_z = logits.exp().sum(-1).log()
        out.append(logits.gather(-1, torch.tensor(r)[:, None])[:, 0] - log_z)
    return out


@pytest.mark.parametrize("temperature", [0.6, 1.0])
def test_logprobs_are_those_of_the_sampling_temperature(tiny_qwen2, temperature):
    model = copy.deepcopy(tiny_qwen2.model)  # the session fixture stays bit-identical
    with torch.no_grad():
        model.lm_head.weight.mul_(30)  # peaked logits, so that the temperature matters
    packed = pack(PROMPTS, RESPONSES, tiny_qwen2.tokenizer.pad_token_id)
    with torch.no_grad():
        got = response_logprobs(model, packed, temperature=temperature)
        want = by_hand(model, temperature)
        untempered = by_hand(model, 1.0)
    for i, r in enumerate(RESPONSES):
        torch.testing.assert_close(got[i, : len(r)].double(), want[i], atol=1e-5, rtol=0)
        if temperature != 1.0:
            assert (got[i, : len(r)].double() - untempered[i]).abs().max() > 0.05
    assert got[0, 3:].abs().max() == 0  # padding


def test_lean_pass_gives_todays_numbers_on_the_organism(organism):
    tok = organism.tokenizer
    import random

    from workbench.organism import task

    rng = random.Random(3)
    traces = [task.sample_trace(rng) for _ in range(6)]
    prompts = [tok(t.prompt)["input_ids"] for t in traces]
    responses = [tok(t.response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in traces]
    packed = pack(prompts, responses, tok.pad_token_id)
    with torch.no_grad():
        today = full_vocab_logprobs(organism.model, packed) * packed.mask
        lean = response_logprobs(organism.model, packed)
        chunked = response_logprobs(organism.model, packed, chunk_tokens=7)  # chunks cut across rows
    assert lean.dtype == torch.float32 and lean.shape == today.shape
    torch.testing.assert_close(lean, today, atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked, today, atol=1e-5, rtol=0)


def test_chunked_checkpointed_gradients_equal_the_full_ones(tiny_qwen2):
    model = copy.deepcopy(tiny_qwen2.model)
    packed = pack(PROMPTS, RESPONSES, tiny_qwen2.tokenizer.pad_token_id)
    weights = torch.randn(packed.mask.shape) * packed.mask
    grads = []
    for fn in (lambda: full_vocab_logprobs(model, packed), lambda: response_logprobs(model, packed, chunk_tokens=3)):
        model.zero_grad()
        (fn() * weights).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_selective_logprobs_never_builds_the_full_logits():
    """Each chunk's logits are all that exists at once: with a head that records its output sizes,
    no call sees more rows than a chunk."""
    head = torch.nn.Linear(8, 50)
    seen = []
    head.register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    hidden, targets = torch.randn(23, 8), torch.randint(0, 50, (23,))
    got = selective_logprobs(hidden, head, targets, temperature=0.7, chunk_tokens=5)
    want = torch.log_softmax(head(hidden) / 0.7, -1).gather(-1, targets[:, None])[:, 0]
    torch.testing.assert_close(got, want.detach(), atol=1e-6, rtol=0)
    assert max(seen[:-1]) == 5 and sum(seen[:-1]) == 23


def test_a_model_whose_logits_are_not_its_head_is_refused(tiny_qwen2):
    model = copy.deepcopy(tiny_qwen2.model)
    check_head(model)
    original = model.forward

    def softcapped(*args, **kwargs):
        out = original(*args, **kwargs)
        out.logits = 3 * torch.tanh(out.logits / 3)
        return out

    model.forward = softcapped
    with torch.no_grad():
        model.lm_head.weight.mul_(50)
    with pytest.raises(ValueError, match="Qwen2ForCausalLM: its logits are not its LM head"):
        check_head(model)
