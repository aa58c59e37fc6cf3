"""One naming scheme for attention heads, used in files, figures, configs and ``kfh.json``.

A head is a ``(layer, head)`` pair of 0-based indices, ``head`` being the *query* head.  Its
display name is ``L{layer}H{head}`` (``L16H2``); the TransformerLens hook that holds its
pattern is ``blocks.{layer}.attn.hook_pattern``, head index ``head``.
"""

from __future__ import annotations

import re

Head = tuple[int, int]

_NAME = re.compile(r"^L(\d+)H(\d+)$")


def head_name(head: Head) -> str:
    return f"L{head[0]}H{head[1]}"


def parse_head(value: str | Head | list[int]) -> Head:
    """Accept ``"L16H2"``, ``(16, 2)`` or ``[16, 2]``; raise ValueError naming anything else."""
    if isinstance(value, str):
        m = _NAME.match(value.strip())
        if not m:
            raise ValueError(f"bad head name {value!r}: expected L<layer>H<head>, e.g. 'L16H2'")
        return int(m.group(1)), int(m.group(2))
    if len(value) != 2 or not all(isinstance(v, int) and v >= 0 for v in value):
        raise ValueError(f"bad head {value!r}: expected a (layer, head) pair of non-negative ints")
    return int(value[0]), int(value[1])


def hook_name(layer: int) -> str:
    """The TransformerLens hook of a layer's attention pattern."""
    return f"blocks.{layer}.attn.hook_pattern"


def model_shape(config) -> tuple[int, int, int]:
    """(layers, query heads, KV heads) of an HF config."""
    n_heads = config.num_attention_heads
    return config.num_hidden_layers, n_heads, getattr(config, "num_key_value_heads", None) or n_heads


def kv_head(head: int, n_heads: int, n_kv_heads: int) -> int:
    """The KV head a query head reads under GQA (consecutive query heads share a KV head)."""
    return head // (n_heads // n_kv_heads)


def check_heads(heads: list[Head], config, where: str = "heads") -> list[Head]:
    """Validate heads against a model config; the error names the first head out of range."""
    layers, n_heads, _ = model_shape(config)
    out = []
    for h in heads:
        layer, head = parse_head(h)
        if layer >= layers or head >= n_heads:
            raise ValueError(
                f"{where}: head {head_name((layer, head))} is out of range for a model with "
                f"{layers} layers and {n_heads} heads"
            )
        out.append((layer, head))
    return out


def all_heads(config) -> list[Head]:
    layers, n_heads, _ = model_shape(config)
    return [(l, h) for l in range(layers) for h in range(n_heads)]
