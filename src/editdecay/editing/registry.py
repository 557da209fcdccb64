"""The editor registry: one entry per editor (name, hyperparameter class, editor class), read by the config,
the CLI and the contract tests alike. `register_editor` adds one; `build_editor` makes one by name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from editdecay.editing.alphaedit import AlphaEditEditor
from editdecay.editing.ftl import FtlEditor, FtlHyperParams
from editdecay.editing.hparams import AlphaEditHyperParams, MemitHyperParams
from editdecay.editing.memit import MemitEditor
from editdecay.editing.mend import MendEditor, MendHyperParams
from editdecay.editing.protocol import Editor
from editdecay.editing.rome import RomeEditor, RomeHyperParams
from editdecay.models import DtypeResolver


class EditorFactory(Protocol):
    def __call__(
        self,
        hparams: dict[str, Any] | str | Path | None = None,
        *,
        preset: str | None = None,
        dtypes: DtypeResolver | None = None,
    ) -> Editor: ...


@dataclass(frozen=True)
class EditorEntry:
    name: str
    hparams_class: type  # validates `editor.hparams` of a config (a dataclass with `from_dict`)
    editor_class: EditorFactory


EDITORS: dict[str, EditorEntry] = {}


def register_editor(name: str, hparams_cls: type, editor_cls: EditorFactory) -> None:
    """Add (or replace) an editor: `editor_cls(hparams, preset=..., dtypes=...)` must return an `Editor`."""
    key = name.lower()
    if not key.isidentifier():
        raise ValueError(f"Editor name {name!r}: use letters, digits and underscores.")
    EDITORS[key] = EditorEntry(key, hparams_cls, editor_cls)


register_editor(MemitEditor.name, MemitHyperParams, MemitEditor)
register_editor(AlphaEditEditor.name, AlphaEditHyperParams, AlphaEditEditor)
register_editor(RomeEditor.name, RomeHyperParams, RomeEditor)
register_editor(FtlEditor.name, FtlHyperParams, FtlEditor)
register_editor(MendEditor.name, MendHyperParams, MendEditor)


def build_editor(
    name: str,
    hparams: dict[str, Any] | str | Path | None = None,
    *,
    preset: str | None = None,
    dtypes: DtypeResolver | None = None,
) -> Editor:
    """An editor by name; `hparams` (a dict or a MEMIT JSON / EasyEdit YAML file) overrides the preset,
    which is `preset` when given, else recognised from the model at edit time."""
    key = name.lower()
    if key not in EDITORS:
        raise ValueError(f"Unknown editor {name!r}; choose one of {', '.join(sorted(EDITORS))}.")
    return EDITORS[key].editor_class(hparams, preset=preset, dtypes=dtypes)
