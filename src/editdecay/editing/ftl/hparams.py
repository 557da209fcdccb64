"""FT-L's hyperparameters (docs/algorithms.md §11)."""

from __future__ import annotations

from dataclasses import dataclass

from editdecay.editing.hparams import EditorHyperParams


@dataclass
class FtlHyperParams(EditorHyperParams):
    """One layer (empty: the layer ROME edits on this model), `num_steps` passes over the requests in batches of
    `batch_size` (None: all at once), one Adam step per batch, then the change clipped to |W - W0| <= epsilon."""

    num_steps: int = 25
    lr: float = 5e-4
    norm_constraint: float = 5e-4  # epsilon of the elementwise (L-infinity) bound on the weight change
    weight_decay: float = 0.0
    batch_size: int | None = None
    early_stop_loss: float = 1e-2  # stop once a pass's mean target NLL is below this

    def check(self) -> None:
        super().check()
        problems = []
        if len(self.layers) > 1:
            problems.append(f"FT-L trains one layer, got layers={self.layers}")
        if self.num_steps < 1:
            problems.append(f"num_steps must be >= 1, got {self.num_steps}")
        for name in ("lr", "norm_constraint"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        if self.weight_decay < 0 or self.early_stop_loss < 0:
            problems.append("weight_decay and early_stop_loss must be >= 0")
        if self.batch_size is not None and self.batch_size < 1:
            problems.append(f"batch_size must be >= 1 or null, got {self.batch_size}")
        if problems:
            raise ValueError("Invalid FtlHyperParams: " + "; ".join(problems))
