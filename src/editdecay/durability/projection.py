"""Edit keys as a subspace of an MLP output projection's input (docs/algorithms.md §13).

For an edited layer with keys K (n, m) — the inputs of its MLP output projection W (d, m) that the editor mapped —
Q (m, r) is an orthonormal basis of span(K). Then:

- `protect` (KeyProjection, mode "protect"): every fine-tuning update of W is projected as ΔW <- ΔW (I - Q Q^T),
  so ΔW k = 0 for every k in span(K) and the layer's answer to the edited keys cannot change through its own
  weights (layers below it can still change the keys themselves). Full fine-tuning projects the accumulated
  change W - W0 after every step (this also undoes what weight decay does along K); LoRA keeps W + s·B A with
  A <- A (I - Q Q^T), hence s·B A k = 0. DoRA's A is projected the same way, but its magnitude vector and row
  normalisation still rescale each output row, so for DoRA the guarantee is on the direction only.
- mode "confine", the mirror: updates are kept inside span(K) (ΔW <- ΔW Q Q^T).
- `project_out_keys` removes an edit instead: W <- W (I - Q Q^T), so that W k = 0 for the edited keys, whatever
  the edit wrote there (and whatever the model held there before: the removal's downstream cost is measured).
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import torch
from torch import nn

from editdecay.finetuning.hooks import TrainingHooks
from editdecay.finetuning.methods import FinetuneMethod
from editdecay.finetuning.spec import FinetuneSpec
from editdecay.models import arch_for

ProjectionMode = Literal["protect", "confine"]


def key_basis(keys: torch.Tensor, rel_tol: float = 1e-6) -> torch.Tensor:
    """Orthonormal basis Q (m, r) of the span of the rows of `keys` (n, m): left singular vectors of K^T whose
    singular values exceed rel_tol times the largest (float64 SVD, returned in float32)."""
    if keys.ndim != 2 or keys.shape[0] == 0:
        raise ValueError(f"keys must be a non-empty (n, m) matrix, got shape {tuple(keys.shape)}")
    u, s, _ = torch.linalg.svd(keys.double().T, full_matrices=False)
    kept = s > rel_tol * s.max()
    return u[:, kept].float()


def input_projector(basis: torch.Tensor, mode: ProjectionMode) -> torch.Tensor:
    """(m, m) projector acting on a weight's input side: I - Q Q^T (protect) or Q Q^T (confine)."""
    inside = basis @ basis.T
    if mode == "confine":
        return inside
    return torch.eye(basis.shape[0], dtype=basis.dtype, device=basis.device) - inside


def keys_identity(keys: dict[int, torch.Tensor]) -> str:
    digest = hashlib.blake2b(digest_size=12)
    for layer in sorted(keys):
        tensor = keys[layer].float().contiguous()
        digest.update(f"{layer}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


class KeyProjection(TrainingHooks):
    """Fine-tuning updates of the edited layers' MLP output projections kept off (protect) or on (confine) the
    span of the edit keys. `keys`: layer -> (n, m), e.g. `WeightPatch.keys`."""

    def __init__(self, keys: dict[int, torch.Tensor], mode: ProjectionMode = "protect", rel_tol: float = 1e-6):
        if not keys:
            raise ValueError("KeyProjection needs the edit keys of at least one layer (WeightPatch.keys is empty).")
        if mode not in ("protect", "confine"):
            raise ValueError(f"mode must be protect or confine, got {mode!r}")
        self.keys, self.mode, self.rel_tol = dict(keys), mode, rel_tol
        self._paths: dict[int, str] = {}
        self._projectors: dict[int, torch.Tensor] = {}
        self._initial: dict[int, torch.Tensor] = {}
        self._targets: dict[int, tuple[str, nn.Parameter]] = {}

    def identity(self) -> dict[str, Any]:
        return {"strategy": f"key-projection/{self.mode}", "keys": keys_identity(self.keys), "rel_tol": self.rel_tol}

    def prepare(self, method: FinetuneMethod, model: nn.Module, modules: list[str], spec: FinetuneSpec) -> nn.Module:
        arch = arch_for(model)
        self._paths = {layer: arch.mlp_out_path(layer) for layer in self.keys}
        absent = {layer: path for layer, path in self._paths.items() if path not in modules}
        if absent:
            raise ValueError(
                f"{self.mode}: the MLP output projections of edited layers {sorted(absent)} are not fine-tuned "
                f"(trained modules: {len(modules)}; targets {list(spec.targets)}, layers {spec.layers!r}), so there "
                "is nothing to project; include 'down' (the MLP output projection) in the targets and the edited "
                "layers in the layer policy."
            )
        trained = method.prepare(model, modules, spec)
        transposed = arch.mlp_out_transposed
        for layer, path in self._paths.items():
            module = _trained_module(trained, path)
            projector = input_projector(key_basis(self.keys[layer], self.rel_tol), self.mode)
            lora_a = getattr(module, "lora_A", None)
            if isinstance(lora_a, nn.ModuleDict) and lora_a:
                # PEFT's lora_A is a Linear(m -> r) also for GPT-2's Conv1D: its weight is (r, m) either way.
                self._targets[layer] = ("lora_a", weight_of(next(iter(lora_a.values()))))
            else:
                self._targets[layer] = ("weight_t" if transposed else "weight", weight_of(module))
                self._initial[layer] = weight_of(module).detach().clone()
            kind, param = self._targets[layer]
            inputs = param.shape[0] if kind == "weight_t" else param.shape[1]
            if projector.shape[0] != inputs:
                raise ValueError(
                    f"{self.mode}: layer {layer}'s keys have size {projector.shape[0]}, its MLP output projection "
                    f"takes inputs of size {inputs}; the keys belong to another model."
                )
            self._projectors[layer] = projector.to(param.device, param.dtype)
        with torch.no_grad():
            self.after_step(trained)
        return trained

    def after_step(self, trained: nn.Module) -> None:
        for layer, (kind, param) in self._targets.items():
            P = self._projectors[layer]
            if kind == "lora_a":
                param.copy_(param @ P)
            elif kind == "weight":
                initial = self._initial[layer]
                param.copy_(initial + (param - initial) @ P)
            else:  # stored (m, d): the math weight's transpose
                initial = self._initial[layer]
                param.copy_(initial + P @ (param - initial))


def weight_of(module: nn.Module) -> nn.Parameter:
    """A linear module's weight parameter (TypeError when it has none)."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, nn.Parameter):
        raise TypeError(f"{type(module).__name__} has no weight parameter to project")
    return weight


def _trained_module(trained: nn.Module, path: str) -> nn.Module:
    """The module at `path` of the base model inside `trained` (itself, or PEFT's wrapper around it)."""
    for name, module in trained.named_modules():
        if name == path or name.endswith("." + path):
            return module
    raise ValueError(f"The fine-tuned model has no module {path!r}.")


@torch.no_grad()
def project_out_keys(model: nn.Module, keys: dict[int, torch.Tensor], rel_tol: float = 1e-6) -> dict[int, float]:
    """Remove edits in place: W <- W (I - Q Q^T) at each layer's MLP output projection, for Q a basis of the
    layer's keys. Returns each layer's relative weight change ||ΔW||_F / ||W||_F."""
    arch = arch_for(model)
    changes = {}
    for layer, layer_keys in keys.items():
        param = model.get_parameter(arch.mlp_out_weight_name(layer))
        weight = param.detach().double()
        basis = key_basis(layer_keys, rel_tol).double().to(weight.device)
        math_weight = weight.T if arch.mlp_out_transposed else weight  # (d, m)
        removed = math_weight - (math_weight @ basis) @ basis.T
        new = removed.T if arch.mlp_out_transposed else removed
        changes[layer] = float((new - weight).norm() / weight.norm())
        param.copy_(new.to(param.dtype))
    return changes
