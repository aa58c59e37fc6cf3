"""``python -m workbench.train``: AttnPO fine-tuning and its baselines (the loop lives in ``workbench.training``)."""

from workbench.training.loop import main, train

__all__ = ["main", "train"]

if __name__ == "__main__":
    raise SystemExit(main())
