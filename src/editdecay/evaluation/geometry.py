"""The geometry of the edit's and the fine-tuning's weight updates in one edited layer (docs/algorithms.md §16).

Weights are (d_out, m) as torch stores them, acting on keys k of size m: W k. For the edit update ΔW_ed, the
fine-tuning update ΔW_ft (fine-tuned minus edited weights), the edit keys K (m, n) and a projector P (m, m) onto
AlphaEdit's null space (the directions the preserved knowledge barely uses):

- key_ratio = ||ΔW_ft K||_F / ||ΔW_ed K||_F: how far fine-tuning moves the edited keys' outputs, relative to the
  edit itself (the layer's own share of erasing the edit; other layers act through K and the readout);
- cosine = <ΔW_ft, ΔW_ed>_F / (||ΔW_ft||_F ||ΔW_ed||_F);
- ft_null_share = ||ΔW_ft P||_F^2 / ||ΔW_ft||_F^2: the share of the fine-tuning update's energy inside the null
  space (where AlphaEdit writes its edits; 1 - it lies in the complement, the directions preserved knowledge
  uses), and edit_null_share, the same for ΔW_ed (1 for an exact AlphaEdit update, lower for MEMIT).
"""

from __future__ import annotations

import torch


def update_geometry(
    delta_edit: torch.Tensor,
    delta_ft: torch.Tensor,
    keys: torch.Tensor | None = None,
    null_projector: torch.Tensor | None = None,
) -> dict[str, float]:
    """The quantities above for one layer (float64); key and null-space ones only when K / P are given."""
    if delta_edit.shape != delta_ft.shape:
        raise ValueError(f"update shapes differ: edit {tuple(delta_edit.shape)}, fine-tuning {tuple(delta_ft.shape)}")
    edit, ft = delta_edit.double(), delta_ft.double()
    edit_norm, ft_norm = float(edit.norm()), float(ft.norm())
    out = {
        "edit_norm": edit_norm,
        "ft_norm": ft_norm,
        "cosine": float((edit * ft).sum() / (edit_norm * ft_norm)) if edit_norm and ft_norm else float("nan"),
    }
    if keys is not None:
        K = keys.double()
        if K.shape[0] != edit.shape[1]:
            raise ValueError(f"keys have {K.shape[0]} rows, the layer's input size is {edit.shape[1]}")
        edited = float((edit @ K).norm())
        out["key_ratio"] = float((ft @ K).norm()) / edited if edited else float("nan")
    if null_projector is not None:
        P = null_projector.double()
        out["ft_null_share"] = float((ft @ P).norm() ** 2 / ft_norm**2) if ft_norm else float("nan")
        out["edit_null_share"] = float((edit @ P).norm() ** 2 / edit_norm**2) if edit_norm else float("nan")
    return out
