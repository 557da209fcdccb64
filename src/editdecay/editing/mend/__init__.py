"""MEND (Mitchell et al., ICLR 2022): a trained network that turns the edit gradient into a weight update
(docs/algorithms.md §10)."""

from editdecay.editing.mend.editor import MendEditor
from editdecay.editing.mend.gradients import Factors, gradient_factors
from editdecay.editing.mend.hparams import MendHyperParams
from editdecay.editing.mend.network import MendNetwork
from editdecay.editing.mend.store import MEND_FORMAT, MendStore

__all__ = ["MEND_FORMAT", "Factors", "MendEditor", "MendHyperParams", "MendNetwork", "MendStore", "gradient_factors"]
