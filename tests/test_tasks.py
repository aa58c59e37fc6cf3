"""The task seam: organisms and prompt files behind one interface, prompts tokenised once, held-out
prompts that are never trained on, and a new organism working by registration alone."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from workbench.config import ConfigError, load_config
from workbench.models import LoadedModel, model_fingerprint
from workbench.organism import CHECKPOINT_DIR, ORGANISMS, Organism, get_organism, register_organism, task
from workbench.organism.evaluate import evaluate, held_out_problems
from workbench.tasks import OrganismTask, build_task, get_task, task_names
from workbench.tasks.jsonl import JsonlTask
from workbench.training.evaluate import evaluate_policy
from workbench.training.loop import build, train
from workbench.training.rollout import generate_rollout, reference_rollout

BOS_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
                "{% if add_generation_prompt %} <think>{% endif %}")


def tiny_model(tokenizer) -> LoadedModel:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    model = Qwen2ForCausalLM(cfg).eval()
    return LoadedModel(model, tokenizer, "tiny", model_fingerprint(model))


def write_prompts(path: Path, n: int, duplicate: bool = False) -> Path:
    rows = [{"prompt": f"a ={i % 10} ; What is a ?", "answer": str(i % 10)} for i in range(n)]
    rows = [{**r, "prompt": r["prompt"].replace("a ", "abcdefghijkl"[i // 10] + " ", 1).replace(
        "is a", "is " + "abcdefghijkl"[i // 10], 1)} for i, r in enumerate(rows)]
    if duplicate:
        rows.append(dict(rows[0]))
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- prompts are tokenised once ------------------------------------------------------------------


def test_a_chat_template_that_writes_bos_gets_no_second_one(tmp_path, tiny_qwen2):
    tok = copy.deepcopy(tiny_qwen2.tokenizer)
    tok.chat_template = BOS_TEMPLATE
    bos = tok.bos_token_id
    assert tok("x")["input_ids"][0] == bos  # this tokenizer adds BOS itself, as Llama-3's and R1-Distill's do
    t = JsonlTask(tok, write_prompts(tmp_path / "p.jsonl", 3), chat_template=True)
    for p in t.train:
        assert p.text.startswith("<bos>") and p.ids[0] == bos and p.ids.count(bos) == 1
        assert p.ids[1:] == tok(p.text[len("<bos>"):], add_special_tokens=False)["input_ids"]  # the text, once
    loaded = LoadedModel(tiny_qwen2.model, tok, "tiny", "x")
    cfg = load_config(None, ["data.task=jsonl", f"data.train_file={tmp_path / 'p.jsonl'}", "method.name=tlmre",
                             "rollout.max_new_tokens=2", "rollout.group_size=2"])
    ro = generate_rollout(loaded.model, tok, t, t.train[:2], cfg.rollout, "r1")
    assert all(ids.count(bos) == 1 and ids[0] == bos for ids in ro.prompt_ids)
    plain = JsonlTask(tok, tmp_path / "p.jsonl", chat_template=False)  # no template: the tokenizer adds BOS
    assert all(p.ids[0] == bos and p.ids.count(bos) == 1 for p in plain.train)


# --- held-out prompts ----------------------------------------------------------------------------


def test_without_an_eval_file_a_seeded_split_is_held_out_and_never_drawn(tmp_path, tiny_qwen2):
    path = write_prompts(tmp_path / "p.jsonl", 20, duplicate=True)
    t = JsonlTask(tiny_qwen2.tokenizer, path, chat_template=False, split=0.25, split_seed=5)
    train_texts, held = {p.text for p in t.train}, {p.text for p in t.eval}
    assert len(held) == 5 and len(train_texts) == 15 and not held & train_texts
    drawn = {p.text for _ in range(50) for p in t.draw(random.Random(_), 4)}
    assert not drawn & held
    again = JsonlTask(tiny_qwen2.tokenizer, path, chat_template=False, split=0.25, split_seed=5)
    other = JsonlTask(tiny_qwen2.tokenizer, path, chat_template=False, split=0.25, split_seed=6)
    assert {p.text for p in again.eval} == held != {p.text for p in other.eval}
    info = t.held_out_info(12345)
    assert info["source"] == "seeded split of data.train_file" and info["split_seed"] == 5 and info["prompts"] == 5
    with pytest.raises(ValueError, match="holds 1 distinct prompt.*too few to hold 1 out"):
        JsonlTask(tiny_qwen2.tokenizer, write_prompts(tmp_path / "one.jsonl", 1), chat_template=False, split_seed=0)


def test_held_out_uses_its_seed(tmp_path, tiny_qwen2):
    path = write_prompts(tmp_path / "p.jsonl", 4)
    t = JsonlTask(tiny_qwen2.tokenizer, path, write_prompts(tmp_path / "e.jsonl", 30), chat_template=False)
    a, b = [p.text for p in t.held_out(5, seed=1)], [p.text for p in t.held_out(5, seed=2)]
    assert len(a) == len(set(a)) == 5 and a != b and a == [p.text for p in t.held_out(5, seed=1)]
    assert len(t.held_out(100, seed=1)) == 30 and t.held_out_info(1)["source"] == "data.eval_file"


def test_eval_start_states_its_held_out_prompts(tmp_path, tiny_qwen2):
    model_dir = tmp_path / "tiny"
    tiny_qwen2.model.save_pretrained(model_dir)
    tiny_qwen2.tokenizer.save_pretrained(model_dir)
    cfg = load_config(None, [f"model.name={model_dir}", "data.task=jsonl", "data.chat_template=false",
                             f"data.train_file={write_prompts(tmp_path / 'p.jsonl', 20)}", "data.eval_split=0.2",
                             "method.name=tlmre", "train.steps=1", "train.save_every=0", "rollout.group_size=2",
                             "rollout.prompts_per_step=2", "rollout.max_new_tokens=3", "eval.n_prompts=3",
                             "eval.max_new_tokens=3", "logging.progress=false", "eval.seed=9"])
    out = train(cfg, tmp_path / "run")
    start = json.loads((out / "eval_start.json").read_text())
    assert start["n"] == 3 and start["held_out"]["source"] == "seeded split of data.train_file"
    assert start["held_out"]["split_seed"] == 9 and start["held_out"]["prompts"] == 4
    assert json.loads((out / "eval_final.json").read_text())["held_out"] == start["held_out"]


# --- the organism as a task ------------------------------------------------------------------------


def test_the_organism_task_serves_todays_prompts_verifier_and_labels(tiny_qwen2):
    tok = tiny_qwen2.tokenizer
    t = build_task(load_config(None, ["method.name=tlmre"]), tok)
    assert isinstance(t, OrganismTask) and t.has_step_labels and t.segmenter == "organism"
    drawn, rng = t.draw(random.Random(4), 5), random.Random(4)
    for p in drawn:
        problem = task.sample_problem(rng)
        assert p.text == problem.prompt() and p.ids == tok(p.text)["input_ids"] and p.answer == str(problem.answer)
    assert [p.text for p in t.held_out(6, 77)] == [q.prompt() for q in held_out_problems(6, 77)]
    trace = task.sample_trace(random.Random(1), drawn[0].truth)
    assert t.verify(drawn[0], trace.response) and not t.verify(drawn[0], trace.response.replace("</think>", ""))
    assert t.step_labels(drawn[0], [s.text + " " for s in trace.steps]) == [s.label for s in trace.steps]
    assert get_task("organism").has_step_labels and not get_task("jsonl").has_step_labels


@pytest.mark.skipif(not (CHECKPOINT_DIR / "config.json").exists(), reason="the organism checkpoint is missing")
def test_trainer_evaluation_equals_the_organism_evaluation(organism):
    cfg = load_config(None, ["method.name=tlmre", "eval.seed=31"])
    t = build_task(cfg, organism.tokenizer)
    got = evaluate_policy(organism.model, organism.tokenizer, t, t.held_out(24, 31), cfg, "organism")
    torch.manual_seed(31)
    want = evaluate(organism.model, organism.tokenizer, held_out_problems(24, 31), temperature=cfg.eval.temperature,
                    top_p=cfg.eval.top_p, max_new_tokens=cfg.eval.max_new_tokens)
    assert "kinds_per_response" in want  # the organism's own evaluation adds the steps of each kind
    assert got == {k: v for k, v in want.items() if k != "kinds_per_response"}


def test_a_task_refuses_a_model_of_another_task(tmp_path):
    other = Organism("organism-other", SimpleNamespace(**{**vars(task), "EXTRA_WORDS": ("Hmm",)}), tmp_path)
    with pytest.raises(ValueError, match="data.task 'organism' needs a organism model, but model.name gives a "
                                         "model without an organism's tokenizer"):
        OrganismTask(get_organism("organism"), other.build_tokenizer())


@pytest.fixture
def slipping_organism(tmp_path):
    """A second organism, registered the way the lead adds one: its own task module (here the first
    one's, with a trace generator that writes a wrong answer half of the time) and extra words."""

    def sample_trace(rng, problem=None, **kwargs):
        t = task.sample_trace(rng, problem, **kwargs)
        if rng.random() < 0.5:
            t.answer_words[-2] = str((t.problem.answer + 1) % 10)
        return t

    module = SimpleNamespace(**{**{k: v for k, v in vars(task).items() if not k.startswith("__")},
                                "sample_trace": sample_trace, "EXTRA_WORDS": ("Hmm",)})
    org = register_organism(Organism("organism-slips", module, tmp_path))
    yield org
    del ORGANISMS["organism-slips"]


def test_a_new_organism_trains_by_registration_alone(slipping_organism):
    assert "organism-slips" in task_names()
    cfg = load_config(None, ["data.task=organism-slips", "method.name=oracle", "train.micro_batch_size=4",
                             "method.delay_horizon=0"])
    loaded = tiny_model(slipping_organism.build_tokenizer())
    trainer = build(cfg, loaded, None, None)
    assert trainer.task.name == "organism-slips" and trainer.segmenter == "organism"
    rng = random.Random(0)
    rollout = reference_rollout(loaded.tokenizer, trainer.task, trainer.task.draw(rng, 3), 4, trainer.segmenter, rng)
    assert rollout.correct.all()  # the wrong reference traces were redrawn
    assert rollout.labelled and all(labels for labels in rollout.step_labels)
    row = trainer.learn(rollout, step=1)
    assert row["attenuation_precision"] == 1.0 and row["frac_steps_attenuated"] > 0
    with pytest.raises(ValueError, match="data.task 'organism' needs a organism model, but model.name gives the "
                                         "organism-slips organism"):
        build(load_config(None, ["method.name=tlmre"]), loaded, None, None)


def test_config_asks_the_task(tmp_path):
    with pytest.raises(ConfigError, match="data.train_file: task 'organism' draws fresh problems"):
        load_config(None, ["data.train_file=x.jsonl"])
    with pytest.raises(ConfigError, match="data.verifier: task 'organism' verifies with its own task module"):
        load_config(None, ["data.verifier=math"])
    with pytest.raises(ConfigError, match="data.train_file: the jsonl task needs a prompts file"):
        load_config(None, ["data.task=jsonl"])
    with pytest.raises(ConfigError, match=r"data.eval_split: must be in \(0, 1\)"):
        load_config(None, ["data.task=jsonl", "data.train_file=x.jsonl", "data.eval_split=1"])
    old = load_config(None, ["data.source=jsonl", "data.train_file=x.jsonl", "method.name=tlmre"])  # the old key
    assert old.data.task == "jsonl"
    both = tmp_path / "both.yaml"
    both.write_text("data:\n  source: organism\n  task: organism\n")
    with pytest.raises(ConfigError, match="data.source is the old name of data.task; give only data.task"):
        load_config(both)
