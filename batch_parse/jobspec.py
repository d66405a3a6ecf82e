"""Job spec files: the YAML a user writes once and hands to `run --spec`, `submit` or a RayCronJob."""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError, create_model

from batch_parse.faces.policy import SPEC_TYPES as _POLICY_KEYS
from batch_parse.model.registry import weights_problem
from batch_parse.pipeline.options import JobOptions
from batch_parse.storage.location import parse_location

# Spec keys and the types they accept: the one table, from which _model builds the strict pydantic
# model that checks a spec. Option keys mirror JobOptions field names so a spec, the `run` flags and
# the dataclass read the same; the cluster-shaped ones sit under `resources`. What pydantic cannot
# see stays ours: keys given twice (a YAML matter), ranges and locations (JobOptions.validate and
# option_problems, shared with `run`'s flags), cron (below) and the wording of every line.
_RESOURCE_KEYS = {
    "gpus_per_actor": (int, float, type(None)),
    "cpus_per_actor": (int, float),
    "min_actors": (int,),
    "max_actors": (int,),
}
_OPTION_KEYS = {
    "source": (str,),
    "output": (str,),
    "endpoint_url": (str, type(None)),
    "source_endpoint_url": (str, type(None)),
    "output_endpoint_url": (str, type(None)),
    "source_anonymous": (bool,),
    "source_profile": (str, type(None)),
    "output_profile": (str, type(None)),
    "model": (str,),
    "batch_size": (int,),
    "crop_format": (str,),
    "jpeg_quality": (int,),
    "max_pixels": (int,),
    "max_bytes": (int,),
    "fetch_attempts": (int,),
    "retry_errors": (bool,),
    "object_list": (str, type(None)),
    "source_format": (str,),
    "image_column": (str,),
    "key_column": (str, type(None)),
    "rows_per_file": (int,),
    "device": (str, type(None)),
    **_POLICY_KEYS,  # faces, detector, min_face, detector_threshold
}
_TOP_KEYS = {
    "name": (str,),
    **_OPTION_KEYS,
    "resources": (dict, type(None)),
    "schedule": (str, type(None)),
    "runtime_env": (dict, type(None)),
}
# What `submit` may add to the job's Ray runtime env; the code itself is always shipped by submit.
_RUNTIME_ENV_KEYS = {"env_vars": (dict,), "pip": (list,)}
_REQUIRED = ("name", "source", "output")
_DEVICES = ("cpu", "cuda")

# Job names end up in submission ids and Kubernetes object names: keep them to a safe alphabet.
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$")

_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping", list: "a list", type(None): "null"}


@dataclass
class JobSpec:
    name: str
    options: JobOptions
    schedule: str | None = None  # 5-field cron, UTC; only schedulers read it, `run` ignores it
    runtime_env: dict = field(default_factory=dict)  # extra env_vars / pip for `submit`


def load_job_spec(path: str | os.PathLike) -> JobSpec:
    """Read and validate a spec; ValueError (one line, first problem) when it is not valid."""
    raw, problems = _read(Path(path))
    problems = problems + ([] if raw is None else _check(raw))
    if problems:
        more = f" (and {len(problems) - 1} more: run `batch-parse validate {path}`)" if len(problems) > 1 else ""
        raise ValueError(f"{path}: {problems[0]}{more}")
    return _build(raw, Path(path))


def validate_job_spec(path: str | os.PathLike) -> list[str]:
    """Every problem in the spec file, one line each; an empty list means it is valid."""
    raw, problems = _read(Path(path))
    return problems + ([] if raw is None else _check(raw))


def spec_mapping(spec: JobSpec) -> dict:
    """The spec as a plain mapping in file layout (local paths absolute), for shipping a copy."""
    o = spec.options
    data = {"name": spec.name}
    data.update({k: getattr(o, k) for k in _OPTION_KEYS})
    data["resources"] = {k: getattr(o, k) for k in _RESOURCE_KEYS}
    data["schedule"] = spec.schedule
    if spec.runtime_env:
        data["runtime_env"] = spec.runtime_env
    return data


def _read(path: Path) -> tuple[dict | None, list[str]]:
    """(the spec's mapping, problems found reading it); None when there is no mapping to check."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None, ["no such file"]
    except IsADirectoryError:
        return None, ["is a folder, not a spec file"]
    except (PermissionError, UnicodeDecodeError) as e:
        return None, [f"cannot read it: {e.__class__.__name__}"]
    loader = _StrictLoader(text)
    try:
        raw = loader.get_single_data()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        return None, [f"not valid YAML: {where}{getattr(e, 'problem', None) or e}"]
    finally:
        loader.dispose()
    if not isinstance(raw, dict):
        return None, ["a job spec must be a YAML mapping of keys (name, source, output, ...)"]
    # A key given twice is a mistake YAML itself lets through (the last one silently wins).
    return raw, loader.duplicates


class _StrictLoader(yaml.SafeLoader):
    """safe_load that notes every key given twice in one mapping (line numbers of both)."""

    def __init__(self, stream):
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            seen: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: construct_mapping names it
                    continue
                if first is None:
                    seen[key] = line
                else:
                    lines = f"line {line}" if first == line else f"lines {first} and {line}"
                    self.duplicates.append(f"{key}: given twice ({lines}); keep one")
        return super().construct_mapping(node, deep=deep)


def _check(raw: dict) -> list[str]:
    problems = _check_keys(raw, _TOP_KEYS, "", extra_hint=_RESOURCE_KEYS)
    resources = raw.get("resources")
    if isinstance(resources, dict):
        problems += _check_keys(resources, _RESOURCE_KEYS, "resources.")
    runtime_env = raw.get("runtime_env")
    if isinstance(runtime_env, dict):
        problems += _check_keys(runtime_env, _RUNTIME_ENV_KEYS, "runtime_env.")
        problems += _check_runtime_env(runtime_env)
    for key in _REQUIRED:
        if raw.get(key) in (None, ""):
            problems.append(f"{key}: required")

    name = raw.get("name")
    if isinstance(name, str) and name and not _NAME_RE.match(name):
        problems.append(
            f"name: {name!r} must be 1-64 lowercase letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        )
    if isinstance(raw.get("schedule"), str):
        problems += [f"schedule: {p}" for p in cron_problems(raw["schedule"])]

    # Options that are missing or mistyped were reported above; check the rest on their own.
    mistyped = {k for k in ("source", "output") if not isinstance(raw.get(k), str) or not raw[k]}
    options = {k: v for k, v in raw.items() if k in _OPTION_KEYS}
    mistyped |= set(_invalid(options, _OPTION_KEYS))
    resources = resources if isinstance(resources, dict) else {}
    mistyped |= {k for k, error in _invalid(resources, _RESOURCE_KEYS).items() if error != "extra_forbidden"}
    usable = {k: v for k, v in raw.items() if k in _OPTION_KEYS and k not in mistyped}
    usable["resources"] = {k: v for k, v in resources.items() if k in _RESOURCE_KEYS and k not in mistyped}
    usable.setdefault("source", "")
    usable.setdefault("output", "")
    for line in option_problems(_build(usable, None).options):
        key = line.split(":", 1)[0]
        if key not in mistyped:
            problems.append(f"resources.{line}" if key in _RESOURCE_KEYS else line)
    return problems


def option_problems(options: JobOptions) -> list[str]:
    """Every problem with a job's options (locations, endpoint, device, ranges), one line each."""
    problems = []
    for key in ("source", "output"):
        if "\0" in getattr(options, key):
            continue  # options.validate names it
        try:
            parse_location(getattr(options, key))
        except ValueError as e:
            problems.append(f"{key}: {e}")
    if "\0" not in options.model:
        problem = weights_problem(options.model)
        if problem:
            problems.append(f"model: {problem}")
    for key in ("endpoint_url", "source_endpoint_url", "output_endpoint_url"):
        if getattr(options, key) is not None:
            problems += _check_endpoint(key, getattr(options, key))
    if options.device is not None and options.device not in _DEVICES:
        problems.append(f"device: must be one of {', '.join(_DEVICES)} or null, got {options.device!r}")
    return problems + options.validate()


def _check_keys(mapping: dict, allowed: dict, prefix: str, extra_hint: dict | None = None) -> list[str]:
    """One line per unknown or mistyped key of `mapping`, in the file's order.

    pydantic decides (a strict model made from `allowed`: no coercion, so `batch_size: "8"` or
    `batch_size: yes` is wrong, and no key outside it); the lines are ours, as `validate` has always
    written them, with a "did you mean" for a misspelt key."""
    by_key = _invalid(mapping, allowed)
    problems = []
    for key, value in mapping.items():
        if not isinstance(key, str):
            problems.append(f"{prefix}{key!r}: keys must be strings")
        elif key not in by_key:
            continue
        elif by_key[key] != "extra_forbidden":
            types = allowed[key]
            names = [_TYPE_NAMES[t] for t in types if not (t is int and float in types)]
            problems.append(f"{prefix}{key}: must be {' or '.join(names)}, got {_describe(value)}")
        elif extra_hint and key in extra_hint:
            problems.append(f"{prefix}{key}: unknown key (did you mean 'resources.{key}'?)")
        else:
            close = difflib.get_close_matches(key, list(allowed), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f" (known keys: {', '.join(allowed)})"
            problems.append(f"{prefix}{key}: unknown key{hint}")
    return problems


def _invalid(mapping: dict, allowed: dict) -> dict[str, str]:
    """Key -> pydantic's error type ("extra_forbidden" for an unknown key) of every bad string key."""
    invalid: dict[str, str] = {}
    try:
        _model(allowed).model_validate({k: v for k, v in mapping.items() if isinstance(k, str)})
    except ValidationError as e:
        for error in e.errors():
            invalid.setdefault(error["loc"][0], error["type"])
    return invalid


# Python type -> the strict pydantic type that accepts exactly it (a bool is no int, an int no str).
_STRICT = {int: StrictInt, float: StrictFloat, str: StrictStr, bool: StrictBool, dict: dict, list: list, type(None): type(None)}
_MODELS: dict[int, type[BaseModel]] = {}


def _model(allowed: dict) -> type[BaseModel]:
    """A strict pydantic model of one of the key tables above (made once): keys optional, types exact."""
    model = _MODELS.get(id(allowed))
    if model is None:
        fields = {key: (Union[tuple(_STRICT[t] for t in types)], None) for key, types in allowed.items()}  # noqa: UP007
        model = create_model("JobSpecKeys", __config__=ConfigDict(extra="forbid", strict=True), **fields)
        _MODELS[id(allowed)] = model
    return model


def _check_runtime_env(runtime_env: dict) -> list[str]:
    problems = []
    env_vars = runtime_env.get("env_vars")
    if isinstance(env_vars, dict):
        for k, v in env_vars.items():
            if not isinstance(k, str) or not isinstance(v, str):
                # Values are never echoed: env_vars is where people put secrets.
                problems.append(f"runtime_env.env_vars.{k}: names and values must be strings (quote numbers)")
    pip = runtime_env.get("pip")
    if isinstance(pip, list) and not all(isinstance(p, str) for p in pip):
        problems.append("runtime_env.pip: must be a list of requirement strings")
    return problems


def _check_endpoint(key: str, url: str) -> list[str]:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return [f"{key}: must be an http:// or https:// URL, got {_redact_userinfo(url)!r}"]
    if parsed.username or parsed.password:
        return [f"{key}: must not contain credentials; use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"]
    try:
        parsed.port
    except ValueError:
        return [f"{key}: bad port in {url!r}"]
    return []


def _redact_userinfo(url: str) -> str:
    return re.sub(r"://[^/@]*@", "://***@", url)


def _describe(value) -> str:
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, (dict, list)):
        return f"{_TYPE_NAMES[type(value)]}"
    return f"{value!r}"


def _build(raw: dict, path: Path | None) -> JobSpec:
    values = {k: raw[k] for k in _OPTION_KEYS if k in raw and raw[k] is not None}
    values.update({k: v for k, v in (raw.get("resources") or {}).items() if k in _RESOURCE_KEYS})
    # As with `run --min-actors 4`: a spec that names only min_actors asks for a fixed pool.
    values.setdefault("max_actors", max(values.get("min_actors", 1), JobOptions.max_actors))
    for key in ("source", "output", "object_list"):
        # Relative local folders are read against the spec's own folder (as docker-compose does),
        # so a spec means the same thing whichever directory the command runs from.
        if key not in values:
            continue
        if path is not None and "://" not in values[key] and not os.path.isabs(os.path.expanduser(values[key])):
            values[key] = str((path.parent / values[key]).resolve())
    options = JobOptions(**values)
    return JobSpec(
        name=raw.get("name", ""),
        options=options,
        schedule=raw.get("schedule"),
        runtime_env=dict(raw.get("runtime_env") or {}),
    )


# --- cron -----------------------------------------------------------------------------------
# Our own check, not croniter's (issue 27 item 8), for measured behaviour: croniter 7.0.0 accepts
# what the schedulers that run these specs refuse ("0 2 * * * *", a 6-field expression with
# seconds, and the backwards range "0 5-2 * * *", which it wraps around), while Kubernetes CronJob and
# KubeRay's RayCronJob (robfig/cron's standard parser) take 5 fields and ascending ranges only; and
# it reports one unnamed problem per expression ("[0 24 * * *] is not acceptable, out of range")
# where `validate` names each bad field and its range. We only validate, never compute next runs,
# which is what croniter is for; checked with every case of tests/test_jobspec.py.

_CRON_FIELDS = (  # name, low, high, names accepted in place of numbers
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day of month", 1, 31, None),
    ("month", 1, 12, ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]),
    ("day of week", 0, 7, ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]),  # 7 is Sunday too
)
# The shorthands Kubernetes CronJob and KubeRay's RayCronJob (robfig/cron) accept.
_CRON_MACROS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}


def cron_problems(expr: str) -> list[str]:
    """Problems with a standard 5-field cron expression (minute hour day-of-month month day-of-week)."""
    text = expr.strip()
    if text.lower() in _CRON_MACROS:
        return []
    parts = text.split()
    if len(parts) != 5:
        return [f"{expr!r} has {len(parts)} fields, cron needs 5: minute hour day-of-month month day-of-week"]
    problems = []
    for part, (label, low, high, names) in zip(parts, _CRON_FIELDS):
        problem = _cron_field_problem(part, low, high, names)
        if problem:
            problems.append(f"{label} field {part!r}: {problem}")
    return problems


def _cron_field_problem(part: str, low: int, high: int, names: list[str] | None) -> str | None:
    for item in part.split(","):
        base, slash, step = item.partition("/")
        if slash:
            if not step.isdigit() or int(step) < 1:
                return f"step {step!r} must be a positive integer"
        if base == "*":
            continue
        bounds = base.split("-")
        if len(bounds) > 2 or not all(bounds):
            return f"{item!r} is not a number, a range a-b, or *"
        values = []
        for b in bounds:
            if b.isdigit():
                values.append(int(b))
            elif names and b.upper() in names:
                values.append(names.index(b.upper()) + low)
            else:
                return f"{b!r} is not a number" + (f" or a name ({', '.join(names)})" if names else "")
        for v in values:
            if not low <= v <= high:
                return f"{v} is out of range {low}-{high}"
        if len(values) == 2 and values[0] > values[1]:
            return f"range {base!r} runs backwards"
    return None

