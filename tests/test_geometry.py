"""Update geometry (evaluation/geometry.py, docs/algorithms.md §16) on updates with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from editdecay.evaluation.geometry import update_geometry

D, M = 4, 6


def _basis(*indices: int) -> torch.Tensor:
    return torch.eye(M, dtype=torch.float64)[:, list(indices)]


def test_an_update_orthogonal_to_the_keys_leaves_them_alone() -> None:
    K = _basis(0, 1)  # the edit keys span e0, e1
    edit = torch.randn(D, 2, dtype=torch.float64) @ K.T  # writes only along the keys
    ft = torch.randn(D, 2, dtype=torch.float64) @ _basis(4, 5).T  # moves only e4, e5
    out = update_geometry(edit, ft, K)
    assert out["key_ratio"] == pytest.approx(0.0, abs=1e-12)
    assert out["cosine"] == pytest.approx(0.0, abs=1e-12)


def test_key_ratio_and_cosine_of_scaled_updates() -> None:
    K = _basis(0, 2)
    edit = torch.randn(D, M, dtype=torch.float64)
    out = update_geometry(edit, -0.5 * edit, K)
    assert out["key_ratio"] == pytest.approx(0.5)
    assert out["cosine"] == pytest.approx(-1.0)
    assert out["ft_norm"] == pytest.approx(0.5 * out["edit_norm"])


def test_null_share_counts_the_energy_inside_the_projector() -> None:
    null = _basis(3, 4, 5)
    P = null @ null.T
    ft = torch.zeros(D, M, dtype=torch.float64)
    ft[:, 0] = 1.0  # energy 4 outside the null space
    ft[:, 3] = 2.0  # energy 16 inside
    edit = torch.zeros(D, M, dtype=torch.float64)
    edit[:, 4] = 1.0  # an AlphaEdit-like update: all inside
    out = update_geometry(edit, ft, None, P)
    assert out["ft_null_share"] == pytest.approx(16 / 20)
    assert out["edit_null_share"] == pytest.approx(1.0)
    assert "key_ratio" not in out


def test_cosine_matches_the_flattened_vectors() -> None:
    edit, ft = torch.randn(D, M), torch.randn(D, M)
    a, b = edit.flatten().double(), ft.flatten().double()
    expected = float(a @ b) / math.sqrt(float(a @ a) * float(b @ b))
    assert update_geometry(edit, ft)["cosine"] == pytest.approx(expected)


def test_mismatched_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        update_geometry(torch.zeros(D, M), torch.zeros(M, D))
    with pytest.raises(ValueError, match="rows"):
        update_geometry(torch.ones(D, M), torch.ones(D, M), torch.ones(M + 1, 2))
