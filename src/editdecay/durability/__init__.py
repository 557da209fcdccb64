"""What comes after measuring decay: keeping edits on purpose (strategies), checking them (verify), planting and
removing trigger edits, and finding edited layers without the patch (detector)."""

from editdecay.durability.strategies import STRATEGIES, Strategy, register_strategy, strategy

__all__ = ["STRATEGIES", "Strategy", "register_strategy", "strategy"]
