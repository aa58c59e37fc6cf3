"""The built-in model organism: a small Qwen2 reasoning model over a task with known ground truth."""

from pathlib import Path

CHECKPOINT_DIR = Path(__file__).parent / "checkpoint"
