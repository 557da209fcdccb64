"""A detector baseline for covert edits: given the original model M and a suspect model (no patch), which blocks
were probably edited? (docs/algorithms.md §14.1)

For every block b and each of its weight matrices W (the ArchSpec's short names: q, k, v, o, gate, up, down),
ΔW = W_suspect - W_M. Locate-then-edit editors write into the MLP output projection ("down"), with an update of
rank at most the number of edits. Per block we report the relative change ||ΔW_down||_F / ||W_down||_F, the
largest relative change among the block's other matrices, and the stable rank of ΔW_down (||ΔW||_F^2 /
||ΔW||_2^2, a soft count of its directions). A block is flagged when its down-projection change is an outlier
among the blocks: robust z = (x - median) / (1.4826 MAD) > `z` on x = log10 of the relative change (a block
with no change at all has x = -inf and is never flagged; when every other block is unchanged, any change is).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from editdecay.models import arch_for
from editdecay.models.arch import num_blocks

_FLOOR = 1e-12


@torch.no_grad()
def block_changes(base: nn.Module, suspect: nn.Module) -> pd.DataFrame:
    """One row per block: down_rel, other_rel (the largest of the other matrices), down_stable_rank."""
    arch = arch_for(base)
    if num_blocks(base) != num_blocks(suspect):
        raise ValueError(f"the models have {num_blocks(base)} and {num_blocks(suspect)} blocks: not the same model")
    rows = []
    for layer in range(num_blocks(base)):
        changes: dict[str, float] = {}
        down_rank = 0.0
        for short, relative_path in arch.block_modules.items():
            name = f"{arch.block_path(layer)}.{relative_path}.weight"
            try:
                original, changed = base.get_parameter(name), suspect.get_parameter(name)
            except AttributeError:
                continue
            if original.shape != changed.shape:
                raise ValueError(
                    f"{name} has shape {tuple(original.shape)} in M, {tuple(changed.shape)} in the suspect"
                )
            delta = changed.detach().double() - original.detach().double()
            changes[short] = float(delta.norm() / original.detach().double().norm().clamp_min(_FLOOR))
            if short == "down" and float(delta.norm()) > 0:
                spectral = float(torch.linalg.matrix_norm(delta, ord=2))
                down_rank = float(delta.norm() ** 2 / spectral**2)
        if "down" not in changes:
            raise ValueError(f"{arch.name}: no MLP output projection ('down') among the block modules")
        others = [v for k, v in changes.items() if k != "down"]
        rows.append({"layer": layer, "down_rel": changes["down"], "other_rel": max(others, default=0.0),
                     "down_stable_rank": down_rank})  # fmt: skip
    return pd.DataFrame(rows)


def detect_edited_layers(base: nn.Module, suspect: nn.Module, *, z: float = 3.5) -> pd.DataFrame:
    """`block_changes` plus the robust z-score of each block's down-projection change and the verdict
    `flagged`, sorted by the change (most changed first)."""
    table = block_changes(base, suspect)
    relative = table["down_rel"].to_numpy(dtype=float)
    changed = relative > 0
    x = np.full(len(relative), -np.inf)
    x[changed] = np.log10(relative[changed])
    if 2 * changed.sum() <= len(relative):  # most blocks unchanged: the median is -inf, every change stands out
        scores = np.where(changed, np.inf, 0.0)
    else:
        median = float(np.median(x))
        mad = 1.4826 * float(np.median(np.abs(x[changed] - median)))
        scores = np.where(changed, (x - median) / mad if mad > 0 else np.where(x > median, np.inf, 0.0), -np.inf)
    table["z"] = scores
    table["flagged"] = table["z"] > z
    return table.sort_values("down_rel", ascending=False, ignore_index=True)


def hit_rate(flagged: set[int], edited: set[int]) -> dict[str, float]:
    """Precision and recall of the flagged blocks against the truly edited ones."""
    hits = len(flagged & edited)
    return {
        "precision": hits / len(flagged) if flagged else float("nan"),
        "recall": hits / len(edited) if edited else float("nan"),
        "exact": float(flagged == edited),
    }
