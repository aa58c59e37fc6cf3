"""kfh.json: round trip, and clear errors for another model, another shape, heads out of range, bad files."""

from __future__ import annotations

import json
import math

import pytest

from workbench.kfh import KFHSelection, load_kfh, save_kfh


def _sel(loaded, heads=((1, 2), (0, 3)), sra=(0.9, 0.8)) -> KFHSelection:
    cfg = loaded.model.config
    return KFHSelection(loaded.name, loaded.fingerprint, cfg.num_hidden_layers, cfg.num_attention_heads,
                        list(heads), list(sra), {"top_n": len(heads), "labels": "organism"})


def test_round_trip(tiny_qwen2, tmp_path):
    path = save_kfh(tmp_path / "kfh.json", _sel(tiny_qwen2))
    raw = json.loads(path.read_text())
    assert raw["names"] == ["L1H2", "L0H3"] and raw["heads"] == [[1, 2], [0, 3]]
    assert raw["n_layers"] == 2 and raw["n_heads"] == 4 and raw["fingerprint"] == tiny_qwen2.fingerprint
    back = load_kfh(path, tiny_qwen2)
    assert back.heads == [(1, 2), (0, 3)] and back.sra == [0.9, 0.8] and back.settings["top_n"] == 2


def test_nan_sra_is_written_as_null(tiny_qwen2, tmp_path):
    path = save_kfh(tmp_path / "kfh.json", _sel(tiny_qwen2, sra=(float("nan"), 0.7)))
    assert json.loads(path.read_text())["sra"] == [None, 0.7]
    assert math.isnan(load_kfh(path).sra[0])


def test_file_for_another_model_is_refused(tiny_qwen2, organism, tmp_path):
    path = save_kfh(tmp_path / "kfh.json", _sel(tiny_qwen2))
    with pytest.raises(ValueError, match=r"made for model 'tiny-qwen2' with 2 layers x 4 heads.*'organism' has 4 x 6"):
        load_kfh(path, organism)


def test_file_for_other_weights_of_the_same_shape(tiny_qwen2, tmp_path):
    sel = _sel(tiny_qwen2)
    sel.fingerprint = "0123456789abcdef"
    path = save_kfh(tmp_path / "kfh.json", sel)
    with pytest.raises(ValueError, match="fingerprint 0123456789abcdef.*re-run discovery"):
        load_kfh(path, tiny_qwen2)
    assert load_kfh(path, tiny_qwen2, same_weights=False).heads == sel.heads  # later checkpoints of one model


def test_heads_out_of_range(tiny_qwen2, tmp_path):
    with pytest.raises(ValueError, match="head L1H4 is out of range for a model with 2 layers and 4 heads"):
        save_kfh(tmp_path / "kfh.json", _sel(tiny_qwen2, heads=((1, 4),), sra=(0.9,)))
    raw = _sel(tiny_qwen2).to_json()
    raw["heads"] = [[2, 0]]
    raw["sra"] = [0.9]
    (tmp_path / "edited.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="edited.json: head L2H0 is out of range"):
        load_kfh(tmp_path / "edited.json")


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"heads": [[0, 1]]}), "missing field"),
    (json.dumps({"fingerprint": "x", "n_layers": 2, "n_heads": 4, "heads": [[0, -1]]}), "field 'heads'"),
    (json.dumps({"fingerprint": "x", "n_layers": 2, "n_heads": 4, "heads": []}), "'heads' is empty"),
    (json.dumps({"fingerprint": "x", "n_layers": 2, "n_heads": 4, "heads": ["L0H1"], "sra": [1, 2]}),
     "1 heads but 2 SRA"),
])
def test_malformed_files(tmp_path, content, message):
    path = tmp_path / "kfh.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_kfh(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="discover_heads"):
        load_kfh(tmp_path / "none.json")
