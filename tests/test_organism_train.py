"""The organism's trainer (a tiny run end to end), its loss weighting, and the shipped checkpoint's behaviour."""

import dataclasses
import json
import random

import pytest
import torch

from workbench.organism import task
from workbench.organism.evaluate import evaluate, held_out_problems
from workbench.organism.tokenizer import build_tokenizer
from workbench.organism.train import OrganismTrainConfig, compose_reference_embeddings, model_config, token_weights, \
    train, weighted_loss


def test_token_weights_cover_the_response_and_lighten_redundant_bodies():
    tok = build_tokenizer()
    for seed in range(20):
        t = task.sample_trace(random.Random(seed))
        w = token_weights(t, 0.3)
        assert len(w) == len(tok(t.response, add_special_tokens=False)["input_ids"]) + 1  # + EOS
        at = 0
        for s in t.steps:  # the opener (the choice of what to do next) always weighs 1
            assert w[at] == 1.0 and set(w[at + 1 : at + len(s.words)]) <= {0.3 if s.label == "redundant" else 1.0}
            at += len(s.words)
        assert set(w[at:]) == {1.0}


def test_weighted_loss_is_cross_entropy_with_unit_weights_and_ignores_zero_weight_tokens():
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    labels[0, :2] = -100
    ones = (labels != -100).float()
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    assert weighted_loss(logits, labels, ones) == pytest.approx(ref.item(), rel=1e-6)
    half = ones.clone()
    half[1, 3] = 0.0  # a zero-weight target drops out of both the sum and the normaliser
    kept = labels.clone()
    kept[1, 3] = -100
    ref2 = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), kept[:, 1:].flatten(), ignore_index=-100)
    assert weighted_loss(logits, labels, half) == pytest.approx(ref2.item(), rel=1e-6)


def test_definition_tokens_start_as_the_sum_of_their_operand_and_operator():
    from transformers import Qwen2ForCausalLM

    tok = build_tokenizer()
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(model_config(OrganismTrainConfig(), len(tok), tok))
    emb, ids = model.get_input_embeddings().weight, tok.convert_tokens_to_ids
    before = emb[ids("c")].clone()
    compose_reference_embeddings(model, tok)
    for word, (name, op) in {"=c+3": ("c", "+3"), "=l*9": ("l", "*9"), "=a-1": ("a", "-1")}.items():
        assert torch.allclose(emb[ids(word)], (emb[ids(name)] + emb[ids(op)]) / 2**0.5)
    assert torch.equal(emb[ids("c")], before)  # the parts themselves are left alone
    assert torch.equal(model.lm_head.weight[ids("=c+3")], emb[ids("=c+3")])  # tied: the output side too


def test_a_tiny_training_run_writes_a_loadable_checkpoint(tmp_path):
    from transformers import AutoTokenizer

    from workbench.models import load_model

    cfg = OrganismTrainConfig(layers=1, hidden=32, heads=2, kv_heads=1, intermediate=64, batch_size=4, steps=4,
                              warmup_steps=2, eval_every=2, eval_problems=4, threads=1)
    summary = train(cfg, tmp_path)
    assert [row["step"] for row in summary["history"]] == [2, 4]
    assert all(0.0 <= row["accuracy"] <= 1.0 and row["loss"] > 0 for row in summary["history"])
    saved = json.loads((tmp_path / "training_summary.json").read_text())
    assert saved["config"]["steps"] == 4 and saved["params"] == summary["params"]
    loaded = load_model(str(tmp_path), device="cpu")
    assert loaded.model.config.num_hidden_layers == 1 and loaded.model.config.num_key_value_heads == 1
    assert AutoTokenizer.from_pretrained(tmp_path).get_vocab() == build_tokenizer().get_vocab()
    early = train(dataclasses.replace(cfg, stop_at_accuracy=0.0), tmp_path / "early")
    assert [row["step"] for row in early["history"]] == [2]  # stops at the first evaluation that reaches the bar


@pytest.fixture(scope="module")
def shipped_eval(organism):
    """Fresh prompts at temperature 1.0 (the full measurement is ``python -m workbench.organism eval``)."""
    torch.manual_seed(0)
    return evaluate(organism.model, organism.tokenizer, held_out_problems(64, seed=777), temperature=1.0)


def test_the_shipped_organism_overthinks_in_the_task_format(shipped_eval):
    r = shipped_eval
    assert r["redundant_step_fraction"] >= 0.45 and r["redundant_token_fraction"] >= 0.35, r
    assert r["segmented_fraction"] >= 0.95 and r["critical_steps_per_response"] >= 2, r


def test_the_shipped_organism_is_competent(shipped_eval):
    assert shipped_eval["accuracy"] >= 0.8, shipped_eval


@pytest.fixture(scope="module")
def hard_eval():
    """The second organism as ``python -m workbench.organism eval --model organism-hard --n 300
    --temperature 0.6 --top-p 0.95`` measures it (same seed, same problems)."""
    from workbench.models import load_model

    torch.manual_seed(12345)
    hard = load_model("organism-hard", device="cpu")
    return evaluate(hard.model, hard.tokenizer, held_out_problems(300), temperature=0.6, top_p=0.95)


def test_the_second_organism_is_competent_but_not_at_ceiling(hard_eval):
    r = hard_eval
    assert 0.75 <= r["accuracy"] <= 0.92, r
    assert r["redundant_token_fraction"] >= 0.30 and r["segmented_fraction"] >= 0.95, r
    kinds = r["kinds_per_response"]
    assert kinds["correction"] > 0 and kinds["shortcut"] > 0 and kinds["slip"] > 0, kinds  # every mechanism shows
