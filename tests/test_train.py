"""The trainer: batching and log-probs, the PPO loss, scoring inside the old-log-prob pass, one
learning step on known-correct traces, kill-and-resume, and short end-to-end runs."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from workbench.config import LoggingConfig, load_config
from workbench.generation import Samples
from workbench.organism import CHECKPOINT_DIR
from workbench.tracing import TraceItem, trace_step_scores
from workbench.organism import get_organism
from workbench.tasks import OrganismTask
from workbench.tasks.jsonl import JsonlTask
from workbench.training.batch import pack
from workbench.training.logprobs import response_logprobs
from workbench.training.loop import build, train
from workbench.training.metrics import MetricsLog
from workbench.training.policy import kl_k3, ppo_token_loss
from workbench.training.rollout import Rollout, assemble_rollout, reference_rollout
from workbench.training.scoring import old_logprobs
from workbench.training.state import list_checkpoints, truncate_metrics

ROOT = Path(__file__).resolve().parents[1]
ORGANISM_CFG = ROOT / "configs" / "organism"
HEADS = [(1, 0), (1, 3)]


def organism_rollout(tok, n_prompts: int, group: int, seed: int = 0, wrong: tuple[int, ...] = ()) -> Rollout:
    """The organism's reference traces as a rollout (all correct, known step labels); responses
    listed in ``wrong`` get a wrong boxed digit."""
    rng = random.Random(seed)
    task = OrganismTask(get_organism("organism"), tok)
    ro = reference_rollout(tok, task, task.draw(rng, n_prompts), group, "organism", rng)
    digits = [tok.convert_tokens_to_ids(str(d)) for d in range(10)]
    ids = [list(r) for r in ro.response_ids]
    for i in wrong:
        ids[i][-3] = digits[(digits.index(ids[i][-3]) + 1) % 10]  # "\boxed{ d }" <eos>
    samples = Samples(ro.prompt_ids, ids, tok.batch_decode(ids, skip_special_tokens=True), ro.truncated)
    ro = assemble_rollout(tok, task, ro.prompts, samples, n_prompts, group, "organism")
    assert ro.correct.view(-1).tolist() == [i not in wrong for i in range(n_prompts * group)]
    return ro


def tiny_config(*overrides: str):
    return load_config(ORGANISM_CFG / "attnpo.yaml", ["kfh.path=null", "kfh.heads=[L1H0,L1H3]",
                                                      "train.micro_batch_size=3", *overrides])


def test_packed_logprobs_match_each_row_alone(tiny_qwen2):
    model, tok = tiny_qwen2.model, tiny_qwen2.tokenizer
    prompts, responses = [[1, 14, 29, 7], [1, 15, 29]], [[30, 15, 2], [16, 17, 18, 19, 2]]
    packed = pack(prompts, responses, tok.pad_token_id)
    with torch.no_grad():
        got = response_logprobs(model, packed.rows(slice(0, 2), torch.device("cpu")))
        for i, (p, r) in enumerate(zip(prompts, responses)):
            logits = model(input_ids=torch.tensor([p + r])).logits[0]
            want = torch.log_softmax(logits[len(p) - 1 : -1], -1).gather(-1, torch.tensor(r)[:, None])[:, 0]
            torch.testing.assert_close(got[i, : len(r)], want, atol=1e-5, rtol=0)
    assert packed.mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]


def test_ppo_dual_clip_loss_by_hand():
    old = torch.zeros(5)
    ratio = torch.tensor([1.5, 0.5, 1.1, 5.0, 0.5])
    adv = torch.tensor([1.0, 1.0, -2.0, -1.0, -1.0])
    loss, clipped = ppo_token_loss(ratio.log(), old, adv, clip=0.2, clip_c=3.0)
    # A>0: max(-1.5, -1.2) = -1.2 (clipped); max(-0.5, -0.8) = -0.5
    # A<0: 1.1 is inside the clip range -> 2.2; max(5, 1.2) = 5 -> dual clip min(5, 3) = 3; max(.5, .8) = .8
    torch.testing.assert_close(loss, torch.tensor([-1.2, -0.5, 2.2, 3.0, 0.8]))
    assert clipped.tolist() == [True, False, False, False, True]


def test_kl_k3_is_zero_at_the_reference_and_positive_elsewhere():
    logp = torch.tensor([-1.0, -2.0, -0.5])
    assert kl_k3(logp, logp).abs().max() == 0
    assert (kl_k3(logp, logp - torch.tensor([0.3, -0.4, 1.0])) > 0).all()
    assert kl_k3(torch.tensor([0.0]), torch.tensor([1.0])).item() == pytest.approx(torch.e - 2)


def test_step_scores_come_from_the_old_logprob_pass(tiny_qwen2):
    tok = tiny_qwen2.tokenizer
    rollout = organism_rollout(tok, 2, 3, wrong=(1,))
    packed = pack(rollout.prompt_ids, rollout.response_ids, tok.pad_token_id)
    spans = rollout.spans()
    assert spans[1] is None and sum(s is not None for s in spans) == 5
    logp, scores = old_logprobs(tiny_qwen2.model, packed, micro_batch_size=2, heads=HEADS, spans=spans)
    plain, none = old_logprobs(tiny_qwen2.model, packed, micro_batch_size=4)
    torch.testing.assert_close(logp, plain, atol=1e-5, rtol=0)  # recording leaves the log-probs alone
    assert none == [None] * 6 and scores[1] is None
    items = [TraceItem(rollout.prompt_ids[i] + rollout.response_ids[i], spans[i][0], spans[i][1], f"r{i}")
             for i in range(6) if spans[i] is not None]
    reference = trace_step_scores(tiny_qwen2.model, items, heads=HEADS)
    for item, ref in zip(items, reference):
        torch.testing.assert_close(scores[int(item.trace_id[1:])], ref.mean(0), atol=1e-5, rtol=1e-4)


def test_learn_updates_the_policy_and_reports_metrics(tiny_qwen2):
    import copy

    loaded = copy.copy(tiny_qwen2)
    loaded.model = copy.deepcopy(tiny_qwen2.model)
    cfg = tiny_config("method.delay_horizon=0")
    trainer = build(cfg, loaded, HEADS, None)
    rollout = organism_rollout(loaded.tokenizer, 2, 4, wrong=(0, 5))
    before = [p.detach().clone() for p in loaded.model.parameters()]
    row = trainer.learn(rollout, step=1)
    assert any(not torch.equal(a, b) for a, b in zip(before, loaded.model.parameters()))
    assert row["step"] == 1 and row["accuracy"] == pytest.approx(0.75) and row["rescaled_responses"] == 6
    for key in ("reward", "mean_response_tokens", "steps_per_response", "frac_steps_attenuated",
                "frac_steps_protected", "attenuation_precision", "protection_precision", "redundant_step_fraction",
                "seconds_scoring", "seconds_update", "grad_norm", "pg_loss"):
        assert key in row
    assert 0 <= row["frac_steps_attenuated"] + row["frac_steps_protected"] <= 1


def test_oracle_attenuates_only_redundant_and_protects_only_needed_steps(tiny_qwen2):
    import copy

    loaded = copy.copy(tiny_qwen2)
    loaded.model = copy.deepcopy(tiny_qwen2.model)
    trainer = build(tiny_config("method.name=oracle", "kfh.heads=null"), loaded, None, None)
    row = trainer.learn(organism_rollout(loaded.tokenizer, 3, 4, seed=3), step=1)  # every group p = 1
    assert row["frac_steps_attenuated"] > 0 and row["frac_steps_protected"] > 0
    assert row["attenuation_precision"] == 1.0 and row["protection_precision"] == 1.0


def test_tlmre_rescales_nothing(tiny_qwen2):
    import copy

    loaded = copy.copy(tiny_qwen2)
    loaded.model = copy.deepcopy(tiny_qwen2.model)
    trainer = build(tiny_config("method.name=tlmre", "kfh.heads=null"), loaded, None, None)
    row = trainer.learn(organism_rollout(loaded.tokenizer, 2, 4, seed=5), step=1)
    assert row["frac_steps_attenuated"] == 0 and row["frac_steps_protected"] == 0
    assert row["attenuation_precision"] is None


def test_metrics_truncation_drops_later_and_torn_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": i, "reward": i / 10}) + "\n" for i in range(1, 6)) + '{"step": 6, "rew')
    truncate_metrics(path, 3)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match="metrics.jsonl:2"):
        truncate_metrics(path, 5)


def test_only_complete_checkpoints_count(tmp_path):
    root = tmp_path / "checkpoints"
    for name, state in [("step_2", True), ("step_10", True), ("step_12", False), (".step_14.tmp-x", True)]:
        (root / name).mkdir(parents=True)
        if state:
            (root / name / "trainer_state.pt").write_bytes(b"")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_2", "step_10"]


def test_jsonl_prompts_errors_name_file_and_line(tmp_path, tiny_qwen2):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "1 + 1?", "answer": "2"}\n{"prompt": 3}\n')
    with pytest.raises(ValueError, match=r"p\.jsonl:2: expected an object"):
        JsonlTask(tiny_qwen2.tokenizer, bad, None, chat_template=False)
    bad.write_text('{"prompt": "1 + 1?", "answer": "2"}\n')
    with pytest.raises(ValueError, match="no chat template"):
        JsonlTask(tiny_qwen2.tokenizer, bad, None, chat_template=True)
    src = JsonlTask(tiny_qwen2.tokenizer, bad, None, chat_template=False, instruction="Box it.", suffix="<think>")
    assert src.train[0].text == "1 + 1? Box it.<think>" and src.train[0].answer == "2"
    assert len(src.draw(random.Random(0), 3)) == 3


def test_tensorboard_without_the_package_is_a_clear_error(tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="logging.tensorboard is true but tensorboard is not installed"):
            MetricsLog(tmp_path, LoggingConfig(tensorboard=True), {})
    else:
        log = MetricsLog(tmp_path, LoggingConfig(tensorboard=True), {})
        log.log({"step": 1, "reward": 0.5})
        log.close()
        assert (tmp_path / "tensorboard").is_dir()


# --- whole runs ----------------------------------------------------------------------------------

needs_organism = pytest.mark.skipif(not (CHECKPOINT_DIR / "config.json").exists(),
                                    reason="the organism checkpoint is missing (python -m workbench.organism train)")

RUN_ARGS = ["kfh.path=null", "kfh.heads=[L3H1,L2H4]", "train.steps=3", "train.save_every=1", "train.threads=1",
            "rollout.prompts_per_step=2", "rollout.group_size=4", "eval.enabled=false", "logging.progress=false",
            "train.lr=1e-3", "train.seed=7", "method.delay_horizon=0"]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _cli(out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "workbench.train", "--out", str(out), *args]


@needs_organism
def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path):
    model_dir = tmp_path / "organism"
    shutil.copytree(CHECKPOINT_DIR, model_dir)  # a fixed copy, whatever happens to the shipped one
    args = ["--config", str(ORGANISM_CFG / "attnpo.yaml"), f"model.name={model_dir}", *RUN_ARGS]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    whole = tmp_path / "whole"
    subprocess.run(_cli(whole, *args), check=True, env=env, cwd=ROOT, capture_output=True, timeout=300)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(killed, *args), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (killed / "checkpoints" / "step_1" / "trainer_state.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (killed / "checkpoints" / "step_3").exists()

    subprocess.run(_cli(killed, "--resume"), check=True, env=env, cwd=ROOT, capture_output=True, timeout=300)
    a, b = _metrics(whole), _metrics(killed)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):
        for key in ("reward", "accuracy", "mean_response_tokens", "pg_loss"):
            assert ra[key] == pytest.approx(rb[key], abs=1e-5), (ra["step"], key)
    start = load_file(model_dir / "model.safetensors")
    wa = load_file(whole / "checkpoints" / "step_3" / "model.safetensors")
    wb = load_file(killed / "checkpoints" / "step_3" / "model.safetensors")
    assert any(not torch.equal(start[k], wa[k]) for k in wa), "training did not move the weights"
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)


@needs_organism
def test_organism_run_writes_its_artefacts(tmp_path):
    out = train(load_config(ORGANISM_CFG / "oracle.yaml", [*RUN_ARGS[2:], "train.steps=2", "train.save_every=0",
                                                            "eval.enabled=true", "eval.n_prompts=8"]), tmp_path / "run")
    rows = _metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("reward", "accuracy", "mean_response_tokens", "steps_per_response", "frac_steps_attenuated",
                "frac_steps_protected", "attenuation_precision", "protection_precision", "seconds_rollout",
                "seconds_scoring", "seconds_update"):
        assert key in rows[0]
    for name in ("eval_start.json", "eval_final.json"):
        ev = json.loads((out / name).read_text())
        assert ev["n"] == 8 and {"accuracy", "mean_response_tokens", "redundant_step_fraction"} <= set(ev)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_2"]
    assert load_config(out / "config.yaml").method.name == "oracle"
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(load_config(out / "config.yaml"), out)


def test_smollm2_end_to_end(smollm2, tmp_path):
    """A few AttnPO steps on a real HF model (SmolLM2-135M, chat template, math verifier)."""
    model_dir = tmp_path / "smollm2"  # the session's de-quantised copy: loads in a second, unlike the GGUF
    smollm2.model.save_pretrained(model_dir)
    smollm2.tokenizer.save_pretrained(model_dir)
    cfg = load_config(ROOT / "configs" / "hf" / "smollm2.yaml", [f"model.name={model_dir}",
        "kfh.path=null", "kfh.heads=[L20H2,L27H1]", "train.steps=2", "rollout.group_size=2",
        "rollout.prompts_per_step=1", "rollout.max_new_tokens=32", "eval.n_prompts=1", "eval.max_new_tokens=16",
        "train.save_every=0", "logging.progress=false", f"data.train_file={ROOT / 'configs/hf/arithmetic_train.jsonl'}",
        f"data.eval_file={ROOT / 'configs/hf/arithmetic_eval.jsonl'}"])
    out = train(cfg, tmp_path / "run")
    rows = _metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["mean_response_tokens"] <= 32 for r in rows)
    assert "attenuation_precision" not in rows[0]  # ground truth exists on the organism only
    assert json.loads((out / "eval_final.json").read_text())["n"] == 1
    assert (out / "checkpoints" / "step_2" / "model.safetensors").is_file()


# --- sampling temperature, weights, reference model ------------------------------------------------


def test_the_trainer_scores_at_the_sampling_temperature(tiny_qwen2, monkeypatch):
    import copy

    from workbench.training import policy, scoring

    seen = []

    def spy(real):
        def call(model, batch, temperature=1.0, *args, **kwargs):
            seen.append(temperature)
            return real(model, batch, temperature, *args, **kwargs)
        return call

    monkeypatch.setattr(scoring, "response_logprobs", spy(scoring.response_logprobs))
    monkeypatch.setattr(policy, "response_logprobs", spy(policy.response_logprobs))
    loaded = copy.copy(tiny_qwen2)
    loaded.model = copy.deepcopy(tiny_qwen2.model)
    ref = copy.deepcopy(tiny_qwen2.model).requires_grad_(False)
    trainer = build(tiny_config("rollout.temperature=0.6", "train.kl_coef=0.1"), loaded, HEADS, ref)
    trainer.learn(organism_rollout(loaded.tokenizer, 2, 3), step=1)
    assert len(seen) >= 3 and set(seen) == {0.6}  # old, reference and new log-probs alike


def test_reference_is_a_frozen_copy_only_when_the_kl_term_is_on(tmp_path, tiny_qwen2):
    from workbench.training.loop import frozen_copy, load_models, reference_dtype

    assert reference_dtype(torch.device("cuda")) == torch.bfloat16 and reference_dtype(torch.device("cpu")) == torch.float32
    dtype = tiny_qwen2.model.config.dtype
    ref = frozen_copy(tiny_qwen2.model, torch.bfloat16)
    assert tiny_qwen2.model.config.dtype == dtype  # the policy's config (saved with its checkpoints) untouched
    for (name, p), q in zip(tiny_qwen2.model.named_parameters(), ref.parameters()):
        assert q.dtype == torch.bfloat16 and not q.requires_grad and q.data_ptr() != p.data_ptr(), name
        assert torch.equal(q, p.detach().to(torch.bfloat16)), name
    assert not ref.training
    model_dir = tmp_path / "tiny"
    tiny_qwen2.model.save_pretrained(model_dir)
    tiny_qwen2.tokenizer.save_pretrained(model_dir)
    cpu = torch.device("cpu")
    policy, _, none = load_models(tiny_config(f"model.name={model_dir}", "method.name=tlmre", "kfh.heads=null"), cpu,
                                  None)
    assert none is None and all(p.requires_grad for p in policy.model.parameters())
    policy, _, ref = load_models(tiny_config(f"model.name={model_dir}", "method.name=tlmre", "kfh.heads=null",
                                             "train.kl_coef=0.05"), cpu, None)
    for p, q in zip(policy.model.parameters(), ref.parameters()):
        assert p.requires_grad and not q.requires_grad and q.dtype == torch.float32 and torch.equal(p, q)
        assert p.data_ptr() != q.data_ptr()


# --- supervised fine-tuning lives in the library -----------------------------------------------------


def test_supervised_finetune_trains_a_copy_and_restores_the_model(tmp_path, tiny_qwen2):
    import copy

    from workbench.traces import reference_organism
    from workbench.training.sft import supervised_finetune

    loaded = copy.copy(tiny_qwen2)
    loaded.model = copy.deepcopy(tiny_qwen2.model)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    out = supervised_finetune(loaded, reference_organism(loaded.tokenizer, 3, seed=0), 2, 1e-2, tmp_path / "sft")
    tuned = load_file(out / "model.safetensors")
    assert any(not torch.equal(tuned[k], before[k]) for k in tuned)
    assert all(torch.equal(v, before[k]) for k, v in loaded.model.state_dict().items())
    assert not loaded.model.training


def test_the_app_imports_no_script():
    import ast

    for page in [ROOT / "app.py", *sorted((ROOT / "app_pages").glob("*.py"))]:
        for node in ast.walk(ast.parse(page.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "experiments" for n in names), f"{page.name} imports {names}"
