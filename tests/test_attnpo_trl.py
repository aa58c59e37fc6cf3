"""AttnPO on TRL: on a fixed rollout the TRL path's token advantages and KFH scores equal the bundled
trainer's, its loss applies them per token, two processes give what one does, and
``python -m workbench.train --engine trl`` writes the bundled engine's run directory (under
``accelerate launch`` with two CPU processes too) and resumes."""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")

from fixed_rollouts import organism_rollout  # noqa: E402
from trl_helpers import WRONG, fixed_trainer, rollout_rows, trl_test_config  # noqa: E402

from workbench.attnpo_trl import AttnPOConfig, AttnPOTrainer  # noqa: E402
from workbench.attnpo_trl.engine import batch_layout, metrics_row  # noqa: E402
from workbench.config import ConfigError, load_config  # noqa: E402
from workbench.heads import parse_head  # noqa: E402
from workbench.methods import METHODS  # noqa: E402
from workbench.models import load_model  # noqa: E402
from workbench.tasks import build_task  # noqa: E402
from workbench.tracing import TraceItem, trace_step_scores  # noqa: E402
from workbench.training.loop import build  # noqa: E402
from workbench.training.policy import ppo_token_loss  # noqa: E402
from workbench.training.logprobs import response_logprobs  # noqa: E402
from workbench.training.state import run_checkpoints  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 600


@pytest.fixture(scope="module")
def model():
    """A fresh organism: TRL patches the forward of the model it trains."""
    return load_model("organism", device="cpu")


@pytest.fixture(scope="module")
def rollout(model):
    cfg = trl_test_config()
    return organism_rollout(model.tokenizer, cfg.rollout.prompts_per_step, cfg.rollout.group_size, wrong=WRONG)


def trl_step(model, cfg, rollout, tmp_path):
    trainer = fixed_trainer(model.model, model.tokenizer, cfg, rollout, build_task(cfg, model.tokenizer), tmp_path)
    return trainer, trainer._generate_and_score_completions(rollout_rows(rollout))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_token_advantages_equal_the_bundled_trainers(model, rollout, tmp_path, method):
    cfg = trl_test_config(f"method.name={method}")
    heads = [parse_head(h) for h in cfg.kfh.heads]
    bundled = build(cfg, model, heads, None).score(rollout, step=1)[3]
    trainer, out = trl_step(model, cfg, rollout, tmp_path)
    torch.testing.assert_close(out["advantages"].cpu(), bundled.tokens, atol=1e-6, rtol=0)
    assert trainer.last_step.step == 1 and trainer.last_step.rollout.correct.tolist() == rollout.correct.tolist()
    assert torch.equal(trainer.last_step.advantages.attenuated, bundled.attenuated)
    assert torch.equal(trainer.last_step.advantages.protected, bundled.protected)
    if method == "attnpo":  # the comparison covers both rules, and steps inside a response differ
        assert bundled.attenuated.any() and bundled.protected.any()
        row = int(bundled.attenuated.any(1).nonzero()[0])
        assert len(set(bundled.tokens[row, : rollout.lengths.view(-1)[row]].tolist())) > 1


@pytest.mark.parametrize("mini_batches", [1, 2])  # 1: on-policy, our own pass; 2: TRL's old-log-prob pass records
def test_kfh_scores_recorded_in_the_old_logprob_pass_equal_trace_step_scores(model, rollout, tmp_path, mini_batches,
                                                                          monkeypatch):
    cfg = trl_test_config(f"train.mini_batches={mini_batches}")
    if mini_batches > 1:  # the scores must come from TRL's own pass, with no second forward of ours
        monkeypatch.setattr(AttnPOTrainer, "_old_logprob_pass", lambda *a: pytest.fail("ran a second pass"))
    trainer, _ = trl_step(model, cfg, rollout, tmp_path)
    assert trainer._trl_takes_old_logprobs == (mini_batches > 1)
    heads = [parse_head(h) for h in cfg.kfh.heads]
    rows = [i for i in range(len(rollout.response_ids)) if rollout.rescalable(i)]
    items = [TraceItem(rollout.prompt_ids[i] + rollout.response_ids[i], *rollout.segments[i].absolute(
        len(rollout.prompt_ids[i])), f"response {i}") for i in rows]
    want = trace_step_scores(model.model, items, heads)
    got = trainer.last_step.kfh_scores
    assert len(rows) == 8 and all(got[i] is None for i in range(len(got)) if i not in rows)
    for i, w in zip(rows, want):
        torch.testing.assert_close(got[i], w.mean(0), atol=1e-5, rtol=0)


def test_the_loss_applies_the_advantages_token_by_token(model, rollout, tmp_path):
    """TRL's loss gradient on the fixed rollout equals the bundled PPO loss's with the same token advantages."""
    cfg = trl_test_config()
    trainer, out = trl_step(model, cfg, rollout, tmp_path)
    policy = trainer.model
    policy.zero_grad()
    trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps  # set by train()
    trainer.compute_loss(policy, out).backward()  # the whole generation batch at once: its token mean
    got = [p.grad.clone() for p in policy.parameters()]

    packed, old_logp, _, adv = build(cfg, model, [parse_head(h) for h in cfg.kfh.heads], None).score(rollout, step=1)
    policy.zero_grad()
    logp = response_logprobs(policy, packed, cfg.rollout.temperature)
    loss, _ = ppo_token_loss(logp, old_logp, adv.tokens, cfg.train.clip_ratio, cfg.train.clip_ratio_c)
    ((loss * packed.mask).sum() / packed.mask.sum()).backward()
    for g, p in zip(got, policy.parameters()):
        torch.testing.assert_close(g, p.grad, atol=1e-6, rtol=1e-4)
    flat = copy.deepcopy(adv.tokens)  # one advantage per response would move the weights elsewhere
    flat[:] = (adv.tokens * packed.mask).sum(1, keepdim=True) / packed.mask.sum(1, keepdim=True)
    policy.zero_grad()
    loss, _ = ppo_token_loss(response_logprobs(policy, packed, cfg.rollout.temperature), old_logp, flat, 0.2, 3.0)
    ((loss * packed.mask).sum() / packed.mask.sum()).backward()
    assert not all(torch.allclose(g, p.grad, atol=1e-6, rtol=1e-4) for g, p in zip(got, policy.parameters()))


def test_batch_layout():
    cfg = trl_test_config("train.micro_batch_size=5")  # 12 responses a step
    assert batch_layout(cfg, 1) == (4, 3) and batch_layout(cfg, 2) == (3, 2)
    assert batch_layout(trl_test_config("train.mini_batches=2"), 2) == (3, 1)
    with pytest.raises(ConfigError, match="do not split evenly into train.mini_batches=1 over 5 processes"):
        batch_layout(cfg, 5)
    assert batch_layout(load_config(ROOT / "configs/r1-distill/attnpo_trl.yaml"), 8) == (4, 32)


def test_rl_steps_count_generation_batches(model, rollout, tmp_path):
    """Two optimizer steps per RL step (two mini-batches): optimizer steps 0, 1 sample for RL step 1, then 2."""
    cfg = trl_test_config("train.mini_batches=2", "train.micro_batch_size=6")
    trainer = fixed_trainer(model.model, model.tokenizer, cfg, rollout, build_task(cfg, model.tokenizer), tmp_path)
    steps = []
    for global_step in (0, 2, 4):
        trainer.state.global_step = global_step
        steps.append(trainer.rl_step())
    assert steps == [1, 2, 3]


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="kfh_heads: method 'attnpo' scores steps with KFHs"):
        AttnPOConfig(output_dir="x", use_cpu=True, num_generations=4, per_device_train_batch_size=4)
    with pytest.raises(ValueError, match=r"kfh_heads\[1\]"):
        AttnPOConfig(output_dir="x", use_cpu=True, num_generations=4, per_device_train_batch_size=4,
                     kfh_heads=["L1H0", "head 3"])
    with pytest.raises(ValueError, match="unknown method 'ppo'"):
        AttnPOConfig(output_dir="x", use_cpu=True, num_generations=4, per_device_train_batch_size=4, method="ppo")


def test_metrics_row_from_trl_logs():
    logs = {"loss": 0.5, "grad_norm": 2.0, "learning_rate": 1e-4, "kl": 0.1, "clip_ratio/region_mean": 0.25,
            "attnpo/reward": 0.9, "attnpo/step": 3.0, "attnpo/seconds_rollout": 1.0, "attnpo/seconds_scoring": 2.0,
            "attnpo/seconds_update": 3.0, "entropy": 0.3}
    assert metrics_row(logs, kl_coef=0.5) == {
        "step": 3, "reward": 0.9, "pg_loss": 0.45, "clip_frac": 0.25, "kl": 0.1, "grad_norm": 2.0, "lr": 1e-4,
        "seconds_scoring": 2.0, "seconds_update": 3.0, "seconds_rollout": 1.0}


def test_a_bundled_resume_of_a_trl_run_names_the_engine(tmp_path):
    step = tmp_path / "checkpoints" / "step_2"
    step.mkdir(parents=True)
    (step / "trainer_state.json").write_text("{}")
    with pytest.raises(ValueError, match="written by the trl engine; resume with --engine trl"):
        run_checkpoints(tmp_path, True, "bundled")
    assert run_checkpoints(tmp_path, True, "trl") == [step]


# ---------------------------------------------------------------------------- as users run it

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "CUDA_VISIBLE_DEVICES": ""}


def _launch_two(*args: str) -> list[str]:
    """Two CPU processes: accelerate's ``--multi_gpu`` launcher (torchrun; gloo without a GPU) -- its ``--cpu``
    launcher starts one process whatever ``--num_processes`` says."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port()), *args]


def _run(cmd: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``cmd`` in a session of its own, so that a timeout kills the launcher and every worker it started."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
        raise AssertionError(f"{cmd[:4]} ran past {TIMEOUT} s; killed\n{out[-3000:]}{err[-3000:]}") from None
    done = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_two_processes_give_the_advantages_and_scores_of_one(model, rollout, tmp_path):
    _run(_launch_two(str(ROOT / "tests" / "trl_two_process.py"), str(tmp_path / "two.pt")))
    two = torch.load(tmp_path / "two.pt", weights_only=True)  # tensors, lists, numbers and None only
    one, out = trl_step(model, trl_test_config(), rollout, tmp_path)
    assert two["processes"] == 2 and len(two["advantages"]) == len(rollout.response_ids)
    for got, want, n in zip(two["advantages"], out["advantages"], rollout.lengths.view(-1).tolist()):
        torch.testing.assert_close(torch.tensor(got), want[:n], atol=1e-6, rtol=0)
    for got, want in zip(two["kfh_scores"], one.last_step.kfh_scores, strict=True):
        assert (got is None) == (want is None)
        if want is not None:
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


TINY = ["rollout.prompts_per_step=2", "rollout.group_size=4", "train.micro_batch_size=4", "eval.n_prompts=8",
        "logging.progress=false"]


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_engine_trl_writes_the_bundled_run_directory_and_resumes(model, rollout, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "workbench.train", "--engine", "trl", "--out", str(run)]
    _run([*cmd, "--config", str(ROOT / "configs/organism/attnpo.yaml"), *TINY, "train.steps=2", "train.save_every=1"])
    rows = _rows(run)
    assert [r["step"] for r in rows] == [1, 2]
    cfg = trl_test_config()
    bundled = build(cfg, copy.deepcopy(model), [parse_head(h) for h in cfg.kfh.heads], None)
    assert list(rows[0]) == list(bundled.step(rollout.prompts[::4], step=1))  # the same keys in the same order
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step_1", "step_2"]
    assert load_model(run / "checkpoints" / "step_2", device="cpu").model.config.num_hidden_layers == 4
    for name in ("eval_start.json", "eval_final.json"):
        assert json.loads((run / name).read_text())["n"] == 8

    done = _run([*cmd, "--resume", "train.steps=3"])
    assert [r["step"] for r in _rows(run)] == [1, 2, 3]
    assert (run / "checkpoints" / "step_3" / "trainer_state.json").is_file()
    state = json.loads((run / "checkpoints" / "step_3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3, done.stderr[-2000:]


def test_accelerate_launch_two_cpu_processes_as_the_readme_says(tmp_path):
    """The README's distributed command, small: both processes train (each logs its rank's progress)."""
    run = tmp_path / "run"
    _run(_launch_two("-m", "workbench.train", "--engine", "trl", "--config", "configs/organism/attnpo.yaml", *TINY,
                     "train.steps=2", "--out", str(run)))
    rows = _rows(run)
    assert [r["step"] for r in rows] == [1, 2] and all(r["accuracy"] is not None for r in rows)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_2"]
    assert json.loads((run / "eval_final.json").read_text())["n"] == 8


def test_bench_train_engine_trl_compares_the_engines_in_one_run():
    done = _run([sys.executable, "-m", "workbench.bench", "train", "--engine", "trl", "--quick", "--rounds", "1",
                 "--json"])
    result = json.loads(done.stdout)  # stdout is the one JSON object
    assert result["engine"] == "trl" and result["responses"] == 8 and result["steps_per_round"] == 2
    for engine in ("bundled", "trl"):
        assert result[engine]["seconds_rollout"] > 0 and result[engine]["seconds_update"] > 0


def test_engine_trl_without_trl_says_how_to_install_it(tmp_path):
    code = ("import sys; sys.modules['trl'] = None\nfrom workbench.training.loop import main\n"
            f"sys.exit(main(['--engine', 'trl', '--config', 'configs/organism/attnpo.yaml', '--out', r'{tmp_path}']))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 2 and 'pip install -e ".[trl]"' in done.stderr
    assert not (tmp_path / "metrics.jsonl").exists()
