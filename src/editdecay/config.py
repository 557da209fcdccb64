"""Pydantic schemas for experiment and grid YAML files, with dotted `key=value` overrides.

Everything is checked when the file loads, before any model does: `finetune` carries FinetuneSpec's fields
(generated from the dataclass, with its defaults and its validation), `editor.hparams` is checked against the
chosen editor's hyperparameter class, and the editor, fine-tuning method, layer policy and downstream tasks
against their registries. Errors name the key (`finetune.lr`, `editor.hparams.v_lr`).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import hashlib
import itertools
import json
import operator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from editdecay.data.tasks import task_spec
from editdecay.durability.strategies import STRATEGIES
from editdecay.editing.hparams import PRESETS
from editdecay.editing.registry import EDITORS
from editdecay.finetuning.spec import FinetuneSpec, spec_fields


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key."""


class _KeyProblems(ValueError):
    """Problems with keys inside one section (`(key, message)`), so the report names `section.key`."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{key}: {message}" for key, message in problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _removed_keys(data: Any, moved: dict[str, str]) -> Any:
    """Reject keys of the older config format, saying what to write instead (`moved`: key -> advice)."""
    if isinstance(data, dict):
        problems = [(key, f"removed; {advice}") for key, advice in moved.items() if key in data]
        if problems:
            raise _KeyProblems(problems)
    return data


def _with_value(message: str, value: Any) -> str:
    return message if repr(value) in message else f"{message} (got {value!r})"


def _did_you_mean(key: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(key, choices, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


class ModelConfig(_Strict):
    source: str = "smollm2-135m"
    revision: str | None = None
    dtype: Literal["float32", "bfloat16"] = "float32"
    device: str = "auto"


class EditsConfig(_Strict):
    dataset: str = "builtin"
    n: int = Field(50, ge=1)
    seed: int | None = None  # None: the first n records; an int: a seeded sample of n
    zsre_target: Literal["answers", "alt"] = "answers"


class EditorConfig(_Strict):
    name: str = "memit"  # a key of editdecay.editing.EDITORS
    preset: str | None = None  # None: recognised from the model
    hparams: dict[str, Any] = Field(default_factory=dict)  # fields of the editor's hparams class over the preset
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _no_statistics_shorthands(cls, data: Any) -> Any:
        if isinstance(data, dict):
            moved = {"stats_corpus": "mom2_dataset", "stats_tokens": "mom2_n_tokens"}
            _removed_keys(data, {old: f"write editor.hparams.{new}: {data.get(old)}" for old, new in moved.items()})
        return data

    @field_validator("name")
    @classmethod
    def _registered_editor(cls, name: str) -> str:
        if name not in EDITORS:
            raise ValueError(f"Unknown editor {name!r}; choose one of {', '.join(EDITORS)}")
        return name

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, preset: str | None) -> str | None:
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"Unknown preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
        return preset

    @model_validator(mode="after")
    def _hparams_of_the_editor(self) -> EditorConfig:
        hparams_class: Any = EDITORS[self.name].hparams_class  # a dataclass with `from_dict`
        known = [f.name for f in dataclasses.fields(hparams_class) if f.name != "ignored"]
        problems = [
            (f"hparams.{key}", f"unknown key for {self.name}{_did_you_mean(key, known)}")
            for key in unknown_editor_hparams(self.name, self.hparams)
        ]
        prefix = f"Invalid {hparams_class.__name__}: "
        for key in (k for k in self.hparams if k in known):
            try:
                hparams_class.from_dict({key: self.hparams[key]})
            except (ValueError, TypeError) as err:
                problems.append(
                    (
                        f"hparams.{key}",
                        _with_value(str(err).removeprefix(prefix).removeprefix("hparams: "), self.hparams[key]),
                    )
                )
        if not problems:
            try:
                hparams_class.from_dict(self.hparams)
            except (ValueError, TypeError) as err:
                problems.append(("hparams", str(err).removeprefix(prefix)))
        if problems:
            raise _KeyProblems(problems)
        return self


def settings_for_editor(raw: dict[str, Any]) -> dict[str, Any]:
    """A grid combination's raw config with the `editor.hparams` keys that only *other* registered editors take
    left out, so one base can carry the settings of every editor a grid runs over (`mom2_n_tokens` for MEMIT,
    `train_data` for MEND). A key no registered editor takes stays, and fails validation."""
    editor = raw.get("editor") or {}
    name, hparams = editor.get("name", "memit"), editor.get("hparams") or {}
    if name not in EDITORS or not hparams:
        return raw
    others = [other for other in EDITORS if other != name]
    foreign = {
        key
        for key in unknown_editor_hparams(name, hparams)
        if any(not unknown_editor_hparams(other, {key: hparams[key]}) for other in others)
    }
    if foreign:
        editor["hparams"] = {k: v for k, v in hparams.items() if k not in foreign}
    return raw


def unknown_editor_hparams(editor: str, hparams: dict[str, Any]) -> list[str]:
    """Keys of `hparams` that the editor's hyperparameter class does not take (the harness keys of published hparams
    files are taken: recorded and ignored)."""
    hparams_class = EDITORS[editor].hparams_class
    unknown_keys = getattr(hparams_class, "unknown_keys", None)
    if unknown_keys is not None:
        return list(unknown_keys(hparams))
    known = {f.name for f in dataclasses.fields(hparams_class)}
    return sorted(k for k in hparams if k not in known)


def _config_type(hint: Any) -> Any:
    """A FinetuneSpec field's type as a config field's: tuples become lists (YAML sequences) and string Literals
    plain strings (the spec checks them against its registries, naming the choices)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal and all(isinstance(a, str) for a in args):
        return str
    if origin is tuple:
        return list[_config_type(args[0])]  # type: ignore[misc]
    if args and origin not in (list, dict):  # a union
        return functools.reduce(operator.or_, (_config_type(a) for a in args))
    return hint


_SPEC_FIELDS = spec_fields()
_CORPUS_FIELDS: dict[str, Any] = {
    "corpus": (str, "builtin"),  # builtin, a JSON/JSONL file or a directory of them
    "max_examples": (int | None, Field(256, ge=1)),  # a seeded random subset of the corpus
    "corpus_seed": (int, 0),
    # the reinforcement check: statements of the edited facts (`new`) or of the facts they replaced (`true`)
    # mixed into the corpus as `fact_fraction` of the examples (None: the corpus alone)
    "fact_statements": (Literal["new", "true"] | None, None),
    "fact_fraction": (float, Field(0.25, gt=0, lt=1)),
    # how the edited model is fine-tuned (editdecay.durability.STRATEGIES: none, replay, protect, corda, reedit)
    "strategy": (str, "none"),
    "replay_fraction": (float, Field(0.25, gt=0, lt=1)),  # replay: share of the examples that are edit requests
}
if set(_SPEC_FIELDS) & set(_CORPUS_FIELDS):
    raise TypeError(f"FinetuneSpec fields {set(_SPEC_FIELDS) & set(_CORPUS_FIELDS)} clash with the corpus fields")


def _spec_failure(values: dict[str, Any]) -> str | None:
    try:
        FinetuneSpec.from_dict(values)
    except (ValueError, TypeError) as err:
        return str(err).removeprefix("Invalid FinetuneSpec: ").rstrip(".")
    return None


def _spec_problems(values: dict[str, Any]) -> list[tuple[str, str]]:
    """Which fields make FinetuneSpec(**values) fail: each one tried alone (with the method, which sets the
    default lr); a failure of the combination only is reported on the section."""
    method = values["method"] if _spec_failure({"method": values["method"]}) is None else _SPEC_FIELDS["method"][1]
    problems = []
    for name, value in values.items():
        message = _spec_failure({"method": method, name: value})
        if message is not None:
            problems.append((name, _with_value(message, value)))
    if not problems and (message := _spec_failure(values)) is not None:
        problems.append(("", message))
    return problems


class _FinetuneSection(_Strict):
    """Validation of the `finetune` section; its fields are FinetuneSpec's plus the corpus's (FinetuneConfig)."""

    @model_validator(mode="before")
    @classmethod
    def _no_hparams_section(cls, data: Any) -> Any:
        hparams = data.get("hparams") if isinstance(data, dict) else None
        keys = ", ".join(hparams) if isinstance(hparams, dict) else "lr, epochs, ..."
        return _removed_keys(data, {"hparams": f"move these keys up into finetune: ({keys})"})

    @model_validator(mode="after")
    def _valid_spec(self) -> _FinetuneSection:
        try:
            self.spec()
        except (ValueError, TypeError):
            raise _KeyProblems(_spec_problems(self.spec_values())) from None
        strategy = getattr(self, "strategy", "none")
        if strategy not in STRATEGIES:
            raise _KeyProblems([("strategy", f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")])
        return self

    def spec_values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _SPEC_FIELDS}

    def spec(self) -> FinetuneSpec:
        """The FinetuneSpec of this section (`lr: null` takes the method's default; `compute_dtype` may be auto)."""
        return FinetuneSpec.from_dict(self.spec_values())


def _finetune_fields() -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, (hint, default) in _SPEC_FIELDS.items():
        found[name] = (_config_type(hint), list(default) if isinstance(default, tuple) else default)
    return {**found, **_CORPUS_FIELDS}


if TYPE_CHECKING:

    class FinetuneConfig(_FinetuneSection):
        def __getattr__(self, name: str) -> Any: ...
else:
    FinetuneConfig = create_model(
        "FinetuneConfig",
        __base__=_FinetuneSection,
        __module__=__name__,
        __doc__="Fine-tuning: every FinetuneSpec field (same defaults) plus the corpus and its subset.",
        **_finetune_fields(),
    )


class EvaluationConfig(_Strict):
    edit_metrics: bool = True
    control: bool = True
    control_n: int | None = Field(None, ge=1)
    tasks: list[str] = Field(default_factory=list)
    task_mode: Literal["loglik", "generate"] = "loglik"
    task_limit: int | None = Field(20, ge=1)
    task_data_dir: str | None = None
    # generate mode: beam width (1 = greedy) and answer extraction (lenient: case-insensitive; study: the
    # LLM-Adapters evaluator's case-sensitive first match)
    num_beams: int = Field(1, ge=1)
    answer_extraction: Literal["lenient", "study"] = "lenient"
    activations: bool = True
    activation_prompts: int = Field(32, ge=1)
    batch_size: int = Field(32, ge=1)
    # decay curve: score the edits and control facts every `curve_every` steps of Med's fine-tuning (None: off)
    curve_every: int | None = Field(None, ge=1)

    @field_validator("tasks")
    @classmethod
    def _registered_tasks(cls, tasks: list[str]) -> list[str]:
        for name in tasks:
            task_spec(name)  # a name or alias of editdecay.data.TASKS; the error lists them
        return tasks


class ExperimentConfig(_Strict):
    """One configuration of the study: which model, edits, editor, fine-tuning and evaluation."""

    name: str = "experiment"
    model: ModelConfig = Field(default_factory=ModelConfig)
    edits: EditsConfig = Field(default_factory=EditsConfig)
    editor: EditorConfig = Field(default_factory=EditorConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)

    def config_hash(self) -> str:
        """Identity of everything that determines the results (the name is only a label)."""
        payload = self.model_dump(mode="json", exclude={"name"})
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


class GridCell(_Strict):
    """One part of a grid designed per question: values `set` on the base, and its own lists (`grid`)."""

    set: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)


class GridConfig(_Strict):
    """A base experiment plus lists of values for dotted keys, expanded as a Cartesian product.

    A key joined with `+` (`edits.seed+finetune.seed: [0, 1, 2]`) sets every key it names to the same value: a
    tied axis, not a product. With `cells`, the grid is the union of one product per cell (the cell's `set`
    values on the base, the top-level lists and the cell's own lists), so each question gets only the
    configurations it needs; configurations that several cells produce run once.
    """

    name: str = "grid"
    base: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    cells: dict[str, GridCell] = Field(default_factory=dict)

    @field_validator("grid")
    @classmethod
    def _non_empty_lists(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"grid key {key!r} has an empty list of values")
        return grid

    def expand(self) -> list[ExperimentConfig]:
        cells = self.cells or {"": GridCell()}
        configs: dict[str, ExperimentConfig] = {}
        for cell_name, cell in cells.items():
            for key, values in cell.grid.items():
                if not values:
                    raise ConfigError(f"cells.{cell_name}.grid.{key} has an empty list of values")
            grid = {**self.grid, **cell.grid}
            keys = list(grid)
            for combination in itertools.product(*(grid[k] for k in keys)):
                raw = copy.deepcopy(self.base)
                for key, value in cell.set.items():
                    set_dotted(raw, key, value)
                for key, value in zip(keys, combination, strict=True):
                    for part in key.split("+"):
                        set_dotted(raw, part.strip(), value)
                axes = {part.strip() for key in keys for part in key.split("+")}
                if axes & {"editor", "editor.name"}:  # a grid over editors: each takes its own settings
                    raw = settings_for_editor(raw)
                label = ",".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in zip(keys, combination, strict=True))
                prefix = f"{self.name}/{cell_name}" if cell_name else self.name
                raw["name"] = f"{prefix}[{label}]" if label else prefix
                where = f"grid {self.name!r}" + (f" cell {cell_name!r}" if cell_name else "") + f" ({label})"
                config = validate_experiment(raw, origin=where)
                configs.setdefault(config.config_hash(), config)
        return list(configs.values())


def _short(value: Any) -> str:
    return Path(value).name if isinstance(value, str) and "/" in value else str(value)


def set_dotted(data: dict[str, Any], dotted_key: str, value: Any) -> None:
    parts = dotted_key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted_key}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """`a.b=value` pairs; values are parsed as YAML (numbers, booleans, lists, null)."""
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like section.key=value")
        parsed.append((key.strip(), yaml.safe_load(raw) if raw.strip() else ""))
    return parsed


def _format_validation_error(err: ValidationError, origin: str) -> ConfigError:
    lines = []
    for problem in err.errors():
        loc = [str(p) for p in problem["loc"]]
        cause = problem.get("ctx", {}).get("error")
        if isinstance(cause, _KeyProblems):
            lines += [
                f"  {'.'.join([*loc, key] if key else loc) or '(top level)'}: {message}"
                for key, message in cause.problems
            ]
            continue
        key = ".".join(loc) or "(top level)"
        unknown = problem["type"] == "extra_forbidden"
        message = "unknown key" if unknown else problem["msg"].removeprefix("Value error, ")
        shown = not unknown and not isinstance(problem["input"], dict)
        lines.append(f"  {key}: {message}" + (f" (got {problem['input']!r})" if shown else ""))
    return ConfigError(f"Invalid config in {origin}:\n" + "\n".join(lines))


def validate_experiment(raw: dict[str, Any], origin: str = "config") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise _format_validation_error(err, origin) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def load_experiment(path: str | Path, overrides: list[str] = ()) -> ExperimentConfig:  # type: ignore[assignment]
    raw = read_yaml(path)
    for key, value in parse_overrides(list(overrides)):
        set_dotted(raw, key, value)
    return validate_experiment(raw, origin=str(path))


def load_grid(path: str | Path, overrides: list[str] = ()) -> GridConfig:  # type: ignore[assignment]
    """Overrides address the base experiment (`finetune.method=dora`), a grid list (`grid.editor.name=[memit]`) or
    which cells run (`cells=[study]`: only the named cells of the file)."""
    raw = read_yaml(path)
    raw.setdefault("base", {})
    for key, value in parse_overrides(list(overrides)):
        if key == "cells":
            names = value if isinstance(value, list) else [value]
            cells = raw.get("cells") or {}
            unknown = sorted(set(map(str, names)) - set(cells))
            if unknown or not names:
                raise ConfigError(
                    f"cells={value}: {path} has the cells {sorted(cells) or 'none'}; got {unknown or names}"
                )
            raw["cells"] = {name: cells[name] for name in cells if name in set(map(str, names))}
        elif key.startswith("grid."):
            raw.setdefault("grid", {})[key.removeprefix("grid.")] = value if isinstance(value, list) else [value]
        else:
            set_dotted(raw["base"], key, value)
            raw.get("grid", {}).pop(key, None)
    try:
        grid = GridConfig.model_validate(raw)
    except ValidationError as err:
        raise _format_validation_error(err, str(path)) from None
    grid.expand()  # validates every combination now, naming the bad key
    return grid
