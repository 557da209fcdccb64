"""MEND's hyperparameters (docs/algorithms.md §10): the editor network, its training, and how edits are applied."""

from __future__ import annotations

from dataclasses import dataclass

from editdecay.editing.hparams import EditorHyperParams

# Fields outside the trained network's key: how it is applied, and the records' path (their content digest is in
# the key, so the same records under another path reuse the network).
OUTSIDE_NETWORK_KEY = frozenset({"batch_size", "ignored", "train_data"})


@dataclass
class MendHyperParams(EditorHyperParams):
    """`layers` (empty: the last 3 blocks) name the blocks whose MLP output projection MEND edits. Published
    settings: c_edit 0.1, c_loc 1.0, Adam lr 1e-4 (network and per-layer steps), initial step 1e-4, hidden width
    1920. `train_steps` is ours to choose on a CPU; every result names it (the patch manifest records the training)."""

    train_data: str | None = None  # edit records (zsRE MEND train file, CounterFact, or `builtin`)
    train_records: int | None = None  # use the first n valid records (None: all)
    heldout_fraction: float = 0.1  # the last share of the records, never trained on, scored during training
    train_steps: int = 400
    train_batch_size: int = 4  # edits per training step (their gradients summed, as at edit time)
    lr: float = 1e-4  # Adam, editor network
    lr_lr: float = 1e-4  # Adam, per-layer edit steps alpha
    edit_lr: float = 1e-4  # initial alpha
    c_edit: float = 0.1
    c_loc: float = 1.0
    hidden: int = 1920
    train_seed: int = 0
    checkpoint_every: int = 50
    batch_size: int = 4  # edits applied together at edit time (each batch on the model the earlier ones edited)

    def check(self) -> None:
        super().check()
        problems = []
        for name in ("train_steps", "train_batch_size", "hidden", "checkpoint_every", "batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "lr_lr", "edit_lr"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        if self.c_edit < 0 or self.c_loc < 0 or self.c_edit + self.c_loc == 0:
            problems.append("c_edit and c_loc must be >= 0 and not both 0")
        if not 0 < self.heldout_fraction < 1:
            problems.append(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        if self.train_records is not None and self.train_records < 2:
            problems.append(f"train_records must be >= 2 or null, got {self.train_records}")
        if problems:
            raise ValueError("Invalid MendHyperParams: " + "; ".join(problems))

    def training_identity(self) -> dict[str, object]:
        """What the trained network depends on (its store key, with the model and the records)."""
        return {k: v for k, v in self.to_dict().items() if k not in OUTSIDE_NETWORK_KEY}
