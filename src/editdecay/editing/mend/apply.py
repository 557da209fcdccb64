"""What MEND's training and its edits share: the edited projections, the edit gradient's factors, the network's
updates, and the model run with those updates added (differentiably, without touching its weights)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from editdecay.data import EditRequest
from editdecay.editing.edit_loss import TargetBatch, model_logits, target_batch, target_nll
from editdecay.editing.mend.gradients import Factors, gradient_factors
from editdecay.editing.mend.network import MendNetwork
from editdecay.models import arch_for


@dataclass(frozen=True)
class EditedLayers:
    """The MLP output projections MEND edits: module paths, weight names, and whether weights are stored (m, d)."""

    layers: list[int]
    module_paths: list[str]
    weight_names: list[str]
    transposed: bool

    @classmethod
    def of(cls, model: nn.Module, layers: Sequence[int]) -> EditedLayers:
        arch = arch_for(model)
        return cls(
            list(layers),
            [arch.mlp_out_path(layer) for layer in layers],
            [arch.mlp_out_weight_name(layer) for layer in layers],
            arch.mlp_out_transposed,
        )

    def shape(self, model: nn.Module) -> tuple[int, int]:
        """(m, d): the projection's input and output widths."""
        weight = model.get_parameter(self.weight_names[0])
        d, m = weight.shape if not self.transposed else weight.shape[::-1]
        return int(m), int(d)


def edit_batch(tokenizer, requests: Sequence[EditRequest]) -> TargetBatch:
    return target_batch(tokenizer, [r.prompt for r in requests], [r.target_new for r in requests])


def edit_factors(model: nn.Module, edited: EditedLayers, batch: TargetBatch) -> list[Factors]:
    """Factors of the gradient of sum over edits of their mean target NLL, per edited layer (in `edited` order)."""
    modules = {path: model.get_submodule(path) for path in edited.module_paths}
    weights = [model.get_parameter(name) for name in edited.weight_names]
    found = gradient_factors(
        model, modules, weights, lambda: target_nll(model_logits(model, batch), batch).sum(), batch.attention_mask
    )
    return [found[path] for path in edited.module_paths]


def network_deltas(network: MendNetwork, edited: EditedLayers, factors: list[Factors]) -> dict[str, torch.Tensor]:
    """Weight name -> the network's update, in the weight's own orientation."""
    deltas = {}
    for index, (name, layer_factors) in enumerate(zip(edited.weight_names, factors, strict=True)):
        delta = network.update(index, layer_factors)
        deltas[name] = delta.T if edited.transposed else delta
    return deltas


def logits_with(model: nn.Module, deltas: dict[str, torch.Tensor], batch: TargetBatch) -> torch.Tensor:
    """The model's logits with W + Delta for each named weight; gradients flow into the deltas only."""
    weights = {
        name: model.get_parameter(name) + delta.to(model.get_parameter(name).dtype) for name, delta in deltas.items()
    }
    kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "use_cache": False}
    return functional_call(model, weights, args=(), kwargs=kwargs).logits


def locality_kl(base_logits: torch.Tensor, edited_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens of KL(P_base || P_edited) of the next-token distributions."""
    base = torch.log_softmax(base_logits.float(), -1)
    edited = torch.log_softmax(edited_logits.float(), -1)
    per_token = (base.exp() * (base - edited)).sum(-1)
    weights = mask.float()
    return (per_token * weights).sum() / weights.sum()
