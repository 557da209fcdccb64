"""FT-L: constrained fine-tuning of one MLP output projection, the editing papers' baseline (docs/algorithms.md §11)."""

from editdecay.editing.ftl.editor import FtlEditor
from editdecay.editing.ftl.hparams import FtlHyperParams

__all__ = ["FtlEditor", "FtlHyperParams"]
