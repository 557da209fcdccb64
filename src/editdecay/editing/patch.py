"""WeightPatch: what an editor returns — parameter name -> delta (float32), plus a manifest.

Applying sets W <- (W.float() + delta).to(W.dtype) for each patched parameter, which is exactly what the
editors do to the weights while editing, so `patch.apply(base)` reproduces the edited model bit for bit.
`apply` keeps the original tensors of the model it patched, so `revert` restores them bit-identically.

A patch also carries what the edit was made of, when the editor provides it: the requests it edited
(`requests.jsonl`) and, for locate-then-edit editors, the keys it mapped at each edited layer (`keys.safetensors`,
layer -> (n, m): the MLP output projection's input that the closed-form solve used). `editdecay verify` reads the
requests; the `protect` strategy (docs/algorithms.md §13) reads the keys, so nothing is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from editdecay.data import EditRequest
from editdecay.models import combine_fingerprints, model_fingerprint
from editdecay.storage import atomic_directory

DELTAS_FILE = "deltas.safetensors"
KEYS_FILE = "keys.safetensors"
REQUESTS_FILE = "requests.jsonl"
# Part of the store key of every patch: bump when the editors change what a patch holds for the same inputs.
PATCH_FORMAT = "patch/3"
MANIFEST_FILE = "manifest.json"
_LAYER_RE = re.compile(r"\.(\d+)\.")


class PatchMismatchError(ValueError):
    """A patch was applied to a model it was not made for."""


class WeightPatch:
    """Parameter deltas of one edit run and the manifest describing how they were made."""

    def __init__(
        self,
        deltas: dict[str, torch.Tensor],
        manifest: dict[str, Any],
        *,
        keys: dict[int, torch.Tensor] | None = None,
        requests: list[EditRequest] | None = None,
    ) -> None:
        if not deltas:
            raise ValueError("A WeightPatch needs at least one delta.")
        self.deltas = {
            name: delta.detach().to("cpu", delta_dtype(delta.dtype)).contiguous() for name, delta in deltas.items()
        }
        self.manifest = dict(manifest)
        self.keys = {int(layer): k.detach().to("cpu", torch.float32).contiguous() for layer, k in (keys or {}).items()}
        self.requests = list(requests) if requests is not None else None
        self._originals: dict[int, dict[str, torch.Tensor]] = {}

    @property
    def patch_id(self) -> str:
        """Content hash of the deltas and the base fingerprint."""
        digest = hashlib.blake2b(digest_size=16)
        digest.update(str(self.base_fingerprint).encode())
        for name in sorted(self.deltas):
            delta = self.deltas[name]
            digest.update(f"{name}:{tuple(delta.shape)}".encode())
            digest.update(delta.reshape(-1).view(torch.uint8).numpy().data)
        return digest.hexdigest()

    @property
    def base_fingerprint(self) -> str | None:
        return self.manifest.get("base_fingerprint")

    @property
    def patched_fingerprint(self) -> str:
        """An identity for base + patch, without hashing the patched model."""
        return combine_fingerprints(str(self.base_fingerprint), self.patch_id)

    @property
    def layers(self) -> list[int]:
        if "layers" in self.manifest:
            return list(self.manifest["layers"])
        found = {int(m.group(1)) for name in self.deltas if (m := _LAYER_RE.search(name))}
        return sorted(found)

    @property
    def request_ids(self) -> list[str]:
        return list(self.manifest.get("request_ids", []))

    def apply(self, model: nn.Module, *, check: bool = True, fingerprint: str | None = None) -> None:
        """Add the deltas to `model` in place (refused if the model is not the patch's base model)."""
        if id(model) in self._originals:
            raise RuntimeError("This patch is already applied to this model; revert it first.")
        if check and self.base_fingerprint is not None:
            actual = fingerprint or model_fingerprint(model)
            if actual != self.base_fingerprint:
                raise PatchMismatchError(
                    f"Patch {self.patch_id[:12]} was made for the model with fingerprint "
                    f"{self.base_fingerprint}, but this model's fingerprint is {actual}. Load the base model "
                    "the patch was made from (same weights and dtype), or pass check=False to apply anyway."
                )
        params = self._parameters(model)
        self._originals[id(model)] = {name: p.detach().clone() for name, p in params.items()}
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(add_delta(param, self.deltas[name]))

    def revert(self, model: nn.Module) -> None:
        """Restore the exact weights the model had before `apply`."""
        originals = self._originals.pop(id(model), None)
        if originals is None:
            raise RuntimeError(
                "This patch was not applied to this model object (nothing to restore). Reload the base model, "
                "or keep the WeightPatch object you applied and revert with it."
            )
        params = self._parameters(model)
        with torch.no_grad():
            for name, original in originals.items():
                params[name].copy_(original)

    def _parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        params = {}
        for name, delta in self.deltas.items():
            try:
                param = model.get_parameter(name)
            except AttributeError as err:
                raise PatchMismatchError(f"The model has no parameter {name!r} named in the patch.") from err
            if tuple(param.shape) != tuple(delta.shape):
                raise PatchMismatchError(
                    f"Parameter {name!r} has shape {tuple(param.shape)}, the patch's delta {tuple(delta.shape)}."
                )
            params[name] = param
        return params

    def norms(self) -> dict[str, float]:
        return {name: float(delta.norm()) for name, delta in self.deltas.items()}

    def save(self, directory: str | Path) -> Path:
        """Write `deltas.safetensors` and `manifest.json` into `directory` atomically."""
        directory = Path(directory)
        manifest = {**self.manifest, "patch_id": self.patch_id}
        with atomic_directory(directory) as staging:
            save_file(self.deltas, str(staging / DELTAS_FILE), metadata={"patch_id": self.patch_id})
            if self.keys:
                save_file({str(layer): k for layer, k in self.keys.items()}, str(staging / KEYS_FILE))
            if self.requests is not None:
                lines = (json.dumps(r.to_dict(), sort_keys=True, default=str) for r in self.requests)
                (staging / REQUESTS_FILE).write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
            (staging / MANIFEST_FILE).write_text(
                json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8"
            )
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> WeightPatch:
        directory = Path(directory)
        for name in (DELTAS_FILE, MANIFEST_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory} is not a saved WeightPatch (missing {name}).")
        manifest = json.loads((directory / MANIFEST_FILE).read_text(encoding="utf-8"))
        keys = None
        if (directory / KEYS_FILE).is_file():
            keys = {int(layer): k for layer, k in load_file(str(directory / KEYS_FILE)).items()}
        requests = None
        if (directory / REQUESTS_FILE).is_file():
            lines = (directory / REQUESTS_FILE).read_text(encoding="utf-8").splitlines()
            requests = [EditRequest.from_dict(json.loads(line)) for line in lines if line.strip()]
        patch = cls(load_file(str(directory / DELTAS_FILE)), manifest, keys=keys, requests=requests)
        stored = manifest.get("patch_id")
        if stored is not None and stored != patch.patch_id:
            raise ValueError(f"{directory}: the deltas do not match the manifest's patch_id (corrupted or edited).")
        return patch

    def __repr__(self) -> str:
        return (
            f"WeightPatch(id={self.patch_id[:12]}, editor={self.manifest.get('editor')}, layers={self.layers}, "
            f"requests={len(self.request_ids)})"
        )


def add_delta(param: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """The patched value of a parameter: (W + delta) computed in float32 (float64 for float64 models) and
    cast to W's dtype — the one rule editing, `apply` and save/load all follow, so they agree bit for bit."""
    dtype = torch.promote_types(param.dtype, delta.dtype)
    return (param.detach().to(dtype) + delta.to(param.device, dtype)).to(param.dtype)


def delta_dtype(dtype: torch.dtype) -> torch.dtype:
    """Deltas are stored in float32, or float64 when they come from a float64 model."""
    return torch.float64 if dtype == torch.float64 else torch.float32
