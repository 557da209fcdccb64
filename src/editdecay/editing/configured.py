"""What every registered editor shares: hyperparameters resolved as defaults < preset < overrides, the failure
guarantee (the caller's weights are restored on any exception) and the manifest fields every patch carries."""

from __future__ import annotations

import logging
import platform
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch
import transformers
from torch import nn

import editdecay
from editdecay.data import EditRequest
from editdecay.editing.hparams import EditorHyperParams, read_hparams_file
from editdecay.editing.subject import EditInputError, check_request
from editdecay.models import DtypeResolver, ModelShape, check_layers

log = logging.getLogger(__name__)

HP = TypeVar("HP", bound=EditorHyperParams)
K = TypeVar("K")  # how a caller names its parameters (weight names, layer indices)


class ConfiguredEditor(ABC, Generic[HP]):
    """`hparams`: overrides (a dict, an hparams file or a hyperparameter object) on top of the preset, which is
    `preset` when given, else recognised from the model, else the editor's fallback for the model's shape."""

    name: ClassVar[str]
    hparams_class: ClassVar[type[EditorHyperParams]]

    def __init__(
        self,
        hparams: dict[str, Any] | str | Path | EditorHyperParams | None = None,
        *,
        preset: str | None = None,
        dtypes: DtypeResolver | None = None,
    ) -> None:
        self.dtypes = dtypes or DtypeResolver()
        if isinstance(hparams, EditorHyperParams):
            self.overrides: dict[str, Any] = hparams.to_dict()
            self.source = "hyperparameter object"
        elif isinstance(hparams, (str, Path)):
            self.overrides = read_hparams_file(hparams)
            self.source = str(hparams)
        else:
            self.overrides = dict(hparams or {})
            self.source = "overrides"
        if preset is not None:
            self.preset_settings(preset)  # fail early on an unknown name
        self.preset = preset
        # Validate the overrides on their own now, so a typo fails before any model work.
        self.hparams_class.from_dict(self.overrides, source=self.source)

    @classmethod
    @abstractmethod
    def preset_settings(cls, name: str) -> dict[str, Any]:
        """A named preset's settings (ValueError for an unknown name)."""

    @classmethod
    @abstractmethod
    def preset_name_for(cls, shape: ModelShape) -> str | None:
        """The preset of a recognised model, or None."""

    @classmethod
    @abstractmethod
    def fallback_settings(cls, shape: ModelShape) -> dict[str, Any]:
        """The settings of a model without a preset."""

    def merged_hparams(self, shape: ModelShape) -> HP:
        """Defaults < preset < overrides, validated (model-independent checks only)."""
        preset = self.preset or self.preset_name_for(shape)
        if preset is not None:
            base = self.preset_settings(preset)
        else:
            base = self.fallback_settings(shape)
            log.warning(
                "No %s preset for this model; using the fallback (%s). Tune it for this model (bench/editors.py "
                "shows how).",
                self.name,
                ", ".join(f"{k} {v}" for k, v in sorted(base.items()) if k in ("layers", "mom2_update_weight")),
            )
        return self.hparams_class.from_dict({**base, **self.overrides}, source=self.source)  # type: ignore[return-value]

    def resolved_hparams(self, model: nn.Module | ModelShape, device: str | None = None) -> HP:
        """The merged settings, with the layers checked against the model (no dtype to resolve: editors that
        have one, like `LocateEditor`, override this)."""
        shape = ModelShape.of(model)
        hp = self.merged_hparams(shape)
        check_layers(shape, hp.layers)
        return hp

    def base_manifest(
        self,
        hp: EditorHyperParams,
        requests: Sequence[EditRequest],
        parameters: list[str],
        fingerprint: str,
    ) -> dict[str, Any]:
        """The manifest fields every patch has; editors add their own protocol, timings and diagnostics."""
        return {
            "editor": self.name,
            "hparams": hp.to_dict(),
            "hparams_source": self.source,
            "preset": self.preset,
            "layers": list(hp.layers),
            "parameters": parameters,
            "request_ids": [r.case_id for r in requests],
            "base_fingerprint": fingerprint,
            "versions": {
                "editdecay": editdecay.__version__,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "python": platform.python_version(),
            },
        }


def checked_requests(requests: Sequence[EditRequest]) -> list[EditRequest]:
    """The requests as a list, each checked (EditInputError for none, or for one that would edit the wrong thing)."""
    requests = list(requests)
    if not requests:
        raise EditInputError("No edit requests given.")
    for request in requests:
        check_request(request)
    return requests


@contextmanager
def restored_on_exit(params: Mapping[K, nn.Parameter], *, keep: bool = False) -> Iterator[dict[K, torch.Tensor]]:
    """Yield copies of `params` and copy them back when the block ends: always, or (keep=True) only on an
    exception, so an edit never leaves the caller's weights half-changed."""
    originals = {name: p.detach().clone() for name, p in params.items()}
    restore = not keep
    try:
        yield originals
    except BaseException:
        restore = True
        raise
    finally:
        if restore:
            with torch.no_grad():
                for name, param in params.items():
                    param.copy_(originals[name])
