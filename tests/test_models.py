"""load_model on every kind of source, fingerprints, and clear errors for bad sources."""

import pytest
import torch

from workbench.models import load_model, model_fingerprint


def test_organism_is_a_small_gqa_qwen2(organism):
    cfg = organism.model.config
    assert cfg.model_type == "qwen2"
    assert cfg.num_key_value_heads < cfg.num_attention_heads
    assert organism.device.type == "cpu" and organism.dtype == torch.float32
    assert sum(p.numel() for p in organism.model.parameters()) < 5_000_000
    assert not organism.model.training


def test_fingerprint_is_stable_and_content_based(organism):
    again = load_model("organism", device="cpu")
    assert again.fingerprint == organism.fingerprint
    with torch.no_grad():
        again.model.model.layers[0].mlp.down_proj.weight[0, 0] += 1.0
    assert model_fingerprint(again.model) != organism.fingerprint


def test_smollm2_gguf_loads_dequantised(smollm2):
    cfg = smollm2.model.config
    assert cfg.model_type == "llama"
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (30, 9, 3)
    assert smollm2.model.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32
    ids = smollm2.tokenizer("What is 2 + 2?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = smollm2.model(ids).logits
    assert torch.isfinite(logits).all()


def test_local_folder_of_a_tiny_qwen2(tiny_qwen2, tmp_path):
    tiny_qwen2.model.save_pretrained(tmp_path)
    tiny_qwen2.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(tmp_path, device="cpu")
    assert loaded.model.model.layers[0].self_attn.q_proj.bias is not None
    assert loaded.fingerprint == tiny_qwen2.fingerprint
    assert loaded.model.config._attn_implementation == "sdpa"


def test_unknown_model_name_is_named():
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        load_model("no-such-model")


def test_not_a_gguf_file_is_named(tmp_path):
    fake = tmp_path / "weights.gguf"
    fake.write_bytes(b"PK\x03\x04 not gguf")
    with pytest.raises(ValueError, match="weights.gguf is not a GGUF file"):
        load_model(fake)


def test_folder_without_config_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(tmp_path)


def test_missing_hub_model_offline_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="someone/not-cached"):
        load_model("someone/not-cached")


def test_organism_tokenizer_loads_through_autotokenizer(organism):
    from transformers import AutoTokenizer

    from workbench.organism import CHECKPOINT_DIR

    tok = AutoTokenizer.from_pretrained(CHECKPOINT_DIR)
    text = "a =7 ; b =a*2 ; What is b ? <think> \nNeed b a . </think> b =4 . \\boxed{ 4 }"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert organism.tokenizer(text)["input_ids"] == ids
