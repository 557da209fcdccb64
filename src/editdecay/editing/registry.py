"""The editor registry: name -> editor class, and `build_editor`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from editdecay.editing.alphaedit import AlphaEditEditor
from editdecay.editing.editor import LocateEditor
from editdecay.editing.memit import MemitEditor
from editdecay.models import DtypeResolver

EDITORS: dict[str, type[LocateEditor]] = {
    MemitEditor.name: MemitEditor,
    AlphaEditEditor.name: AlphaEditEditor,
}


def build_editor(name: str, hparams: dict[str, Any] | str | Path | None = None, *,
                 preset: str | None = None, dtypes: DtypeResolver | None = None) -> LocateEditor:
    """An editor by name; `hparams` (a dict or a MEMIT JSON / EasyEdit YAML file) overrides the preset,
    which is `preset` when given, else recognised from the model at edit time."""
    key = name.lower()
    if key not in EDITORS:
        raise ValueError(f"Unknown editor {name!r}; choose one of {', '.join(sorted(EDITORS))}.")
    return EDITORS[key](hparams, preset=preset, dtypes=dtypes)
