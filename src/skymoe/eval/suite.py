"""Evaluation suites: which datasets/splits to run, prompts per task, generation settings, scorers.

A suite is a YAML file (packaged ones live in ``skymoe/suites/``, addressable by
name, e.g. ``embedded``)::

    name: embedded
    description: free text
    generation: {max_new_tokens: 24, batch_size: 8}
    prompts: {vqa: "{question}"}            # per task; {question} = the sample's instruction
    scorers: {region_caption: caption}      # per task; defaults in skymoe.eval.scorers.DEFAULT_SCORER
    baseline_split: train                   # split the prior baseline is fitted on (null: no baseline)
    baseline_path: train.jsonl              # or: fit the baseline on these samples (overrides baseline_split)
    datasets:
      - {name: rsvqa_lr, splits: [test], limit: 200}
      - {path: heldout.jsonl}               # samples in the project's JSONL schema

Relative paths are relative to the suite file.

Every key is checked; an unknown key, dataset, split, task or scorer is an error
that names it and lists the allowed values.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from skymoe.data.schema import Sample, Task
from skymoe.errors import ConfigError
from skymoe.eval.scorers import DEFAULT_SCORER, SCORERS

QUESTION = "{question}"


@dataclass
class GenerationSettings:
    max_new_tokens: int = 32
    batch_size: int = 8


@dataclass
class SuiteDataset:
    name: str | None = None  # an embedded dataset (skymoe data list) ...
    splits: list[str] = field(default_factory=list)
    path: str | None = None  # ... or a JSONL file of samples
    limit: int | None = None  # first N samples of each split / of the file (data order)

    @property
    def label(self) -> str:
        return self.name or str(self.path)


@dataclass
class Suite:
    name: str
    datasets: list[SuiteDataset]
    description: str = ""
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    prompts: dict[str, str] = field(default_factory=dict)
    scorers: dict[str, str] = field(default_factory=dict)
    baseline_split: str | None = "train"
    baseline_path: str | None = None

    def prompt_for(self, sample: Sample) -> str:
        template = self.prompts.get(sample.task.value, QUESTION)
        return template.replace(QUESTION, sample.question)

    def scorer_for(self, task: str) -> str:
        return self.scorers.get(task, DEFAULT_SCORER[task])


def packaged_suites() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in resources.files("skymoe.suites").iterdir() if p.name.endswith(".yaml"))


def load_suite(path_or_name: str | Path, *, check_data: bool = True) -> Suite:
    """Read and validate a suite from a YAML path or a packaged suite name."""
    path = Path(path_or_name)
    if not path.is_file():
        if str(path_or_name) not in packaged_suites():
            raise ConfigError(f"no suite file {path} and no packaged suite of that name; packaged: {packaged_suites()}")
        path = Path(str(resources.files("skymoe.suites") / f"{path_or_name}.yaml"))
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"malformed YAML ({exc})", file=str(path)) from None
    return parse_suite(raw, file=str(path), check_data=check_data)


def _check_keys(raw, allowed: set[str], file: str, where: str) -> dict:
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a mapping, got {type(raw).__name__}", file=file, field=where)
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown}; allowed: {sorted(allowed)}", file=file, field=where)
    return raw


def _check_tasks(mapping: dict, file: str, where: str) -> dict[str, str]:
    tasks = [t.value for t in Task]
    for task, value in (mapping or {}).items():
        if task not in tasks:
            raise ConfigError(f"unknown task {task!r}; allowed: {tasks}", file=file, field=where)
        if not isinstance(value, str):
            raise ConfigError(f"expected a string for task {task!r}", file=file, field=where)
    return dict(mapping or {})


def parse_suite(raw, *, file: str = "<suite>", check_data: bool = True) -> Suite:
    keys = {"name", "description", "generation", "prompts", "scorers", "baseline_split", "baseline_path", "datasets"}
    raw = _check_keys(raw, keys, file, "suite")
    generation = GenerationSettings(**_check_keys(raw.get("generation") or {}, {"max_new_tokens", "batch_size"}, file, "generation"))
    scorers = _check_tasks(raw.get("scorers"), file, "scorers")
    for task, name in scorers.items():
        if name not in SCORERS:
            raise ConfigError(f"unknown scorer {name!r} for task {task!r}; allowed: {sorted(SCORERS)}", file=file, field="scorers")
    entries = raw.get("datasets")
    if not entries or not isinstance(entries, list):
        raise ConfigError("expected a non-empty list of datasets", file=file, field="datasets")
    datasets = [
        SuiteDataset(**_check_keys(entry, {"name", "splits", "path", "limit"}, file, f"datasets[{i}]")) for i, entry in enumerate(entries)
    ]
    for entry in datasets:
        entry.path = _resolve(entry.path, file)
    for i, entry in enumerate(datasets):
        if (entry.name is None) == (entry.path is None):
            raise ConfigError("expected exactly one of 'name' (embedded dataset) or 'path' (JSONL file)", file=file, field=f"datasets[{i}]")
        if entry.name is not None and (not isinstance(entry.splits, list) or not all(isinstance(x, str) for x in entry.splits) or not entry.splits):
            raise ConfigError(f"expected a non-empty list of split names, got {entry.splits!r}", file=file, field=f"datasets[{i}].splits")
        if entry.limit is not None and (not isinstance(entry.limit, int) or entry.limit < 1):
            raise ConfigError(f"expected a positive integer, got {entry.limit!r}", file=file, field=f"datasets[{i}].limit")
    for key in ("max_new_tokens", "batch_size"):
        value = getattr(generation, key)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"expected a positive integer, got {value!r}", file=file, field=f"generation.{key}")
    suite = Suite(
        name=str(raw.get("name") or Path(file).stem),
        description=str(raw.get("description") or ""),
        datasets=datasets,
        generation=generation,
        prompts=_check_tasks(raw.get("prompts"), file, "prompts"),
        scorers=scorers,
        baseline_split=raw.get("baseline_split", "train"),
        baseline_path=_resolve(raw.get("baseline_path"), file),
    )
    if check_data:
        check_datasets(suite, file)
    return suite


def _resolve(path: str | None, suite_file: str) -> str | None:
    if path is None or Path(path).is_absolute() or suite_file.startswith("<"):
        return path
    return str(Path(suite_file).parent / path)


def check_datasets(suite: Suite, file: str) -> None:
    """Every dataset and split the suite names exists in the data registry; every JSONL file exists."""
    from skymoe.data.datasets import dataset_splits, list_datasets

    known = list_datasets()
    for path, where in [(e.path, f"datasets[{i}].path") for i, e in enumerate(suite.datasets)] + [(suite.baseline_path, "baseline_path")]:
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"no such JSONL file {path}", file=file, field=where)
    for i, entry in enumerate(suite.datasets):
        if entry.path is not None:
            continue
        if entry.name not in known:
            raise ConfigError(f"unknown dataset {entry.name!r}; allowed: {known}", file=file, field=f"datasets[{i}].name")
        splits = dataset_splits(entry.name)
        for split in entry.splits:
            if split not in splits:
                raise ConfigError(
                    f"dataset {entry.name!r} has no split {split!r}; allowed: {splits}", file=file, field=f"datasets[{i}].splits"
                )
