"""ROME (Meng et al., NeurIPS 2022): a rank-one update of one layer's MLP output projection (docs/algorithms.md §9)."""

from editdecay.editing.rome.editor import RomeEditor, rome_delta
from editdecay.editing.rome.hparams import RomeHyperParams

__all__ = ["RomeEditor", "RomeHyperParams", "rome_delta"]
