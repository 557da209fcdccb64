"""Pydantic schemas for experiment and grid YAML files, with dotted `key=value` overrides."""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    name: Literal["memit", "alphaedit"] = "memit"
    preset: str | None = None
    hparams: dict[str, Any] = Field(default_factory=dict)
    stats_corpus: str | None = None  # shorthand for hparams.mom2_dataset (None: the preset's)
    stats_tokens: int | None = Field(None, ge=1)  # shorthand for hparams.mom2_n_tokens
    seed: int = 0


class FinetuneConfig(_Strict):
    method: Literal["full", "lora", "dora"] = "lora"
    layers: Literal["all", "edited", "non_edited"] | list[int] = "all"
    corpus: str = "builtin"
    max_examples: int | None = Field(256, ge=1)
    corpus_seed: int = 0
    hparams: dict[str, Any] = Field(default_factory=dict)


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


class GridConfig(_Strict):
    """A base experiment plus lists of values for dotted keys, expanded as a Cartesian product."""

    name: str = "grid"
    base: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)

    @field_validator("grid")
    @classmethod
    def _non_empty_lists(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"grid key {key!r} has an empty list of values")
        return grid

    def expand(self) -> list[ExperimentConfig]:
        keys = list(self.grid)
        configs = []
        for values in itertools.product(*(self.grid[k] for k in keys)):
            raw = copy.deepcopy(self.base)
            for key, value in zip(keys, values, strict=True):
                set_dotted(raw, key, value)
            label = ",".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in zip(keys, values, strict=True))
            raw["name"] = f"{self.name}[{label}]" if label else self.name
            configs.append(validate_experiment(raw, origin=f"grid {self.name!r} ({label})"))
        return configs


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
        key = ".".join(str(p) for p in problem["loc"]) or "(top level)"
        message = "unknown key" if problem["type"] == "extra_forbidden" else problem["msg"]
        lines.append(f"  {key}: {message}" + (f" (got {problem['input']!r})" if problem["type"] != "extra_forbidden"
                                               and not isinstance(problem["input"], dict) else ""))
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
    """Overrides address the base experiment (`finetune.method=dora`) or a grid list (`grid.editor.name=[memit]`)."""
    raw = read_yaml(path)
    raw.setdefault("base", {})
    for key, value in parse_overrides(list(overrides)):
        if key.startswith("grid."):
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
