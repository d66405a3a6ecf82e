"""Job spec files: the examples in jobs/ validate, and each kind of mistake is named on its own line."""

from __future__ import annotations

import textwrap
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import yaml

from batch_parse.jobspec import (
    cron_problems,
    load_job_spec,
    spec_mapping,
    validate_job_spec,
)
from batch_parse.model.registry import REGISTRY
from batch_parse.pipeline.options import JobOptions

REPO = Path(__file__).resolve().parents[1]
JOB_FILES = sorted((REPO / "jobs").glob("*.yaml"))
MINIMAL = "name: faces\nsource: s3://faces/in\noutput: s3://faces/out\n"


def _spec(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_jobs_folder_has_the_examples():
    assert {p.name for p in JOB_FILES} >= {"local-demo.yaml", "celebamask-hq.yaml", "nightly-incremental.yaml"}


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_every_example_spec_validates(path: Path):
    assert validate_job_spec(path) == []
    spec = load_job_spec(path)
    assert spec.options.validate() == []
    assert path.read_text().lstrip().startswith("#"), "example specs open with a comment telling users what they are for"


def test_example_names_are_unique():
    names = [load_job_spec(p).name for p in JOB_FILES]
    assert len(names) == len(set(names))


def test_nightly_spec_is_scheduled_and_the_others_are_not():
    schedules = {p.name: load_job_spec(p).schedule for p in JOB_FILES}
    assert schedules["nightly-incremental.yaml"] == "0 2 * * *"
    assert schedules["local-demo.yaml"] is None and schedules["celebamask-hq.yaml"] is None


def test_local_demo_reads_the_bundled_images():
    options = load_job_spec(REPO / "jobs" / "local-demo.yaml").options
    source = Path(options.source)
    assert source == REPO / "batch_parse" / "demo" / "images"
    assert any(p.suffix.lower() in (".jpg", ".jpeg", ".png") for p in source.iterdir())
    assert Path(options.output) == REPO / "out" / "local-demo"


def test_spec_keys_cover_every_job_option(tmp_path: Path):
    # A new JobOptions field must be settable from a spec (or this test says where to add it).
    values = {
        "model": "stn-icnn/default", "endpoint_url": "http://127.0.0.1:9000", "batch_size": 3,
        "crop_format": "png", "jpeg_quality": 70, "max_pixels": 1000, "max_bytes": 5000, "rows_per_file": 5, "device": "cpu",
        "fetch_attempts": 2, "retry_errors": False, "object_list": "s3://faces/inventory/manifest.json",
        "faces": "largest", "detector": "mtcnn", "min_face": 32, "detector_threshold": 0.8,
        "source_endpoint_url": "http://127.0.0.1:9001", "output_endpoint_url": "http://127.0.0.1:9002", "source_anonymous": False,
        "source_profile": "reader", "output_profile": "writer", "source_format": "webdataset", "image_column": "jpg", "key_column": "url",
    }  # fmt: skip
    resources = {"gpus_per_actor": 0.5, "cpus_per_actor": 2, "min_actors": 2, "max_actors": 3}
    body = MINIMAL + "".join(f"{k}: {v}\n" for k, v in values.items()) + f"resources: {resources}\n"
    spec = load_job_spec(_spec(tmp_path, body))
    settable = {"source", "output", *values, *resources}
    assert settable == {f.name for f in fields(JobOptions)} - {"extra"}
    for key, value in {**values, **resources}.items():
        assert getattr(spec.options, key) == value, key


def test_defaults_fill_what_a_spec_leaves_out(tmp_path: Path):
    spec = load_job_spec(_spec(tmp_path, MINIMAL))
    assert spec.options == JobOptions(source="s3://faces/in", output="s3://faces/out")
    assert spec.schedule is None and spec.runtime_env == {}


def test_min_actors_alone_means_a_fixed_pool(tmp_path: Path):
    spec = load_job_spec(_spec(tmp_path, MINIMAL + "resources: {min_actors: 4}\n"))
    assert (spec.options.min_actors, spec.options.max_actors) == (4, 4)


def test_relative_local_folders_are_read_against_the_spec_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "specs").mkdir()
    path = _spec(tmp_path, "name: here\nsource: ../photos\noutput: out/labels\n", "specs/job.yaml")
    monkeypatch.chdir("/")
    options = load_job_spec(path).options
    assert options.source == str(tmp_path / "photos")
    assert options.output == str(tmp_path / "specs" / "out" / "labels")


def test_spec_mapping_round_trips(tmp_path: Path):
    original = load_job_spec(REPO / "jobs" / "nightly-incremental.yaml")
    copy = tmp_path / "copy.yaml"
    copy.write_text(yaml.safe_dump(spec_mapping(original), sort_keys=False))
    again = load_job_spec(copy)
    assert (again.name, again.options, again.schedule) == (original.name, original.options, original.schedule)


def test_unknown_keys_get_a_suggestion(tmp_path: Path):
    path = _spec(
        tmp_path,
        MINIMAL
        + "batchsize: 8\nmax_actors: 4\nfrobnicate: true\nresources: {gpu_per_actor: 1}\nruntime_env: {env_var: {}}\n",
    )
    assert validate_job_spec(path) == [
        "batchsize: unknown key (did you mean 'batch_size'?)",
        "max_actors: unknown key (did you mean 'resources.max_actors'?)",
        "frobnicate: unknown key (known keys: name, source, output, endpoint_url, source_endpoint_url, output_endpoint_url, "
        "source_anonymous, source_profile, output_profile, model, batch_size, crop_format, "
        "jpeg_quality, max_pixels, max_bytes, fetch_attempts, retry_errors, object_list, source_format, image_column, key_column, rows_per_file, device, faces, detector, min_face, detector_threshold, "
        "resources, schedule, runtime_env)",
        "resources.gpu_per_actor: unknown key (did you mean 'resources.gpus_per_actor'?)",
        "runtime_env.env_var: unknown key (did you mean 'runtime_env.env_vars'?)",
    ]


def test_wrong_types_are_named_and_the_rest_still_checked(tmp_path: Path):
    path = _spec(
        tmp_path,
        """\
        name: faces
        source: s3://faces/in
        output: [a, b]
        batch_size: "32"
        rows_per_file: yes
        crop_format: webp
        resources: {gpus_per_actor: one, min_actors: 2.5}
        schedule: 5
        """,
    )
    problems = validate_job_spec(path)
    assert problems == [
        "output: must be a string, got a list",
        "batch_size: must be an integer, got '32'",
        "rows_per_file: must be an integer, got true (a boolean)",
        "schedule: must be a string or null, got 5",
        "resources.gpus_per_actor: must be a number or null, got 'one'",
        "resources.min_actors: must be an integer, got 2.5",
        "crop_format: must be one of jpeg, png, got 'webp'",
    ]


def test_required_keys(tmp_path: Path):
    assert validate_job_spec(_spec(tmp_path, "model: stn-icnn/default\n")) == [
        "name: required",
        "source: required",
        "output: required",
    ]


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "a job spec must be a YAML mapping of keys (name, source, output, ...)"),
        ("- just\n- a list\n", "a job spec must be a YAML mapping of keys (name, source, output, ...)"),
        ("name: [unclosed\n", "not valid YAML: line 2, column 1: expected ',' or ']', but got '<stream end>'"),
    ],
)
def test_files_that_are_not_specs(tmp_path: Path, text: str, problem: str):
    assert validate_job_spec(_spec(tmp_path, text)) == [problem]


def test_bad_names_endpoints_and_devices(tmp_path: Path):
    path = _spec(tmp_path, MINIMAL.replace("faces", "Faces Nightly", 1) + "endpoint_url: minio:9000\ndevice: tpu\n")
    assert validate_job_spec(path) == [
        "name: 'Faces Nightly' must be 1-64 lowercase letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
        "endpoint_url: must be an http:// or https:// URL, got 'minio:9000'",
        "device: must be one of cpu, cuda or null, got 'tpu'",
    ]


def test_load_raises_one_line_with_the_count(tmp_path: Path):
    path = _spec(tmp_path, MINIMAL + "batch_size: 0\nschedule: '* * *'\n")
    with pytest.raises(ValueError) as caught:
        load_job_spec(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: schedule: '* * *' has 3 fields, cron needs 5")
    assert message.endswith(f"(and 1 more: run `batch-parse validate {path}`)")


@pytest.mark.parametrize(
    "expr",
    ["0 2 * * *", "*/15 * * * *", "0 0-23/2 1,15 * MON-FRI", "30 4 1 JAN,jul 0", "0 0 * * 7", "@daily", "  5 4 * * sun "],
)
def test_valid_cron(expr: str):
    assert cron_problems(expr) == []


@pytest.mark.parametrize(
    "expr, problem",
    [
        ("0 2 * *", "'0 2 * *' has 4 fields, cron needs 5: minute hour day-of-month month day-of-week"),
        ("0 2 * * * *", "'0 2 * * * *' has 6 fields, cron needs 5: minute hour day-of-month month day-of-week"),
        ("60 2 * * *", "minute field '60': 60 is out of range 0-59"),
        ("0 24 * * *", "hour field '24': 24 is out of range 0-23"),
        ("0 2 0 * *", "day of month field '0': 0 is out of range 1-31"),
        ("0 2 * 13 *", "month field '13': 13 is out of range 1-12"),
        ("0 2 * * 8", "day of week field '8': 8 is out of range 0-7"),
        ("0 2 * * FUN", "day of week field 'FUN': 'FUN' is not a number or a name (SUN, MON, TUE, WED, THU, FRI, SAT)"),
        ("*/0 2 * * *", "minute field '*/0': step '0' must be a positive integer"),
        ("0 5-2 * * *", "hour field '5-2': range '5-2' runs backwards"),
        ("0 1-2-3 * * *", "hour field '1-2-3': '1-2-3' is not a number, a range a-b, or *"),
        ("0 2 * JAN *x", "day of week field '*x': '*x' is not a number or a name (SUN, MON, TUE, WED, THU, FRI, SAT)"),
    ],
)
def test_invalid_cron(expr: str, problem: str):
    assert cron_problems(expr) == [problem]


def test_every_bad_cron_field_is_reported():
    assert len(cron_problems("61 25 0 13 9")) == 5


# --- validate: what YAML and plain types let through (issue 17 item 7) ------------------------


def test_duplicate_keys_are_named_with_their_lines(tmp_path: Path):
    path = _spec(tmp_path, MINIMAL + "batch_size: 8\nbatch_size: 16\nresources: {min_actors: 1, min_actors: 2}\n")
    problems = validate_job_spec(path)
    assert problems == ["batch_size: given twice (lines 4 and 5); keep one", "min_actors: given twice (line 6); keep one"]
    with pytest.raises(ValueError, match="batch_size: given twice"):
        load_job_spec(path)


@pytest.mark.parametrize("key, value, message", [
    ("batch_size", "100000000000000000000", "batch_size: must be <= 65,536, got 100,000,000,000,000,000,000"),
    ("rows_per_file", "99999999999", "rows_per_file: must be <= 10,000,000"),
    ("max_pixels", "-1", "max_pixels: must be >= 1, got -1"),
    ("fetch_attempts", "1000000", "fetch_attempts: must be <= 100"),
    ("resources", "{cpus_per_actor: .inf}", "resources.cpus_per_actor: must be > 0 and <= 1024, got inf"),
    ("resources", "{max_actors: 100000000000000000000}", "resources.max_actors: must be <= 10,000"),
])  # fmt: skip
def test_out_of_range_numbers_are_one_line_each(tmp_path: Path, key, value, message):
    problems = validate_job_spec(_spec(tmp_path, MINIMAL + f"{key}: {value}\n"))
    assert problems == [message] or (len(problems) == 1 and problems[0].startswith(message)), problems


def test_model_must_be_a_weights_file_or_a_registry_name(tmp_path: Path):
    from PIL import Image
    from safetensors.numpy import save_file

    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (32, 32), (200, 120, 90)).save(photo, "JPEG")
    foreign = tmp_path / "other.safetensors"
    save_file({"w": np.zeros((2, 2), np.float32)}, str(foreign), metadata={"format": "someone-else"})
    ours = tmp_path / "ours.safetensors"
    ours.write_bytes((REPO / "batch_parse" / "model" / "weights" / "stn-icnn-v1.safetensors").read_bytes())
    cases = {
        str(photo): f"model: {photo} is not a safetensors weights file (SafetensorError)",
        str(foreign): f"model: {foreign} is safetensors but not batch-parse STN-iCNN weights (format='someone-else')",
        "stn-icnn/v9": f"model: no weights named 'stn-icnn/v9' and no such file (known names: {', '.join(REGISTRY)})",
        str(tmp_path): f"model: no weights named '{tmp_path}' and no such file",
    }
    for model, message in cases.items():
        problems = validate_job_spec(_spec(tmp_path, MINIMAL + f"model: '{model}'\n"))
        assert len(problems) == 1 and problems[0].startswith(message), (model, problems)
    for model in ("stn-icnn/default", "stn-icnn/v1", str(ours)):
        assert validate_job_spec(_spec(tmp_path, MINIMAL + f"model: '{model}'\n")) == [], model


def test_a_nul_in_any_path_is_named(tmp_path: Path):
    for key in ("source", "output", "object_list", "model"):
        body = MINIMAL if key not in ("source", "output") else MINIMAL.replace(f"{key}: ", f"{key}_old: ")
        body = "\n".join(line for line in body.splitlines() if not line.startswith(f"{key}_old")) + "\n"
        problems = validate_job_spec(_spec(tmp_path, body + f'{key}: "/tmp/a\\0b"\n'))
        assert problems == [f"{key}: must not contain a NUL character"], (key, problems)


def test_detector_name_is_checked_by_validate(tmp_path: Path):
    """`detector: retinaface` used to pass validate and fail only when a Ray actor started."""
    problems = validate_job_spec(_spec(tmp_path, MINIMAL + "detector: retinaface\nmin_face: 0\n"))
    assert problems == ["detector: unknown face detector 'retinaface'; known: mtcnn",
                        "min_face: must be a whole number of pixels in 1..10,000, got 0"]  # fmt: skip


def test_spec_checks_load_neither_torch_nor_ray(tmp_path: Path):
    import subprocess
    import sys

    path = _spec(tmp_path, MINIMAL + "detector: retinaface\nmodel: stn-icnn/v1\n")
    code = ("import sys; from batch_parse.jobspec import validate_job_spec; "
            f"print(validate_job_spec({str(path)!r})); print(sorted(m for m in ('torch', 'ray') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout.splitlines()
    assert out == ["[\"detector: unknown face detector 'retinaface'; known: mtcnn\"]", "[]"]


def test_the_actor_refuses_a_bad_policy_before_loading_anything():
    from batch_parse.faces.policy import InferencePolicy
    from batch_parse.pipeline.stages import FaceParseActor

    with pytest.raises(ValueError, match=r"^detector: unknown face detector 'retinaface'; known: mtcnn; detector_threshold: must be in \(0, 1\), got 1.5$"):
        FaceParseActor("no-such-model", "cpu", 1, policy=InferencePolicy(detector="retinaface", detector_threshold=1.5))


def test_policy_metadata_nulls_the_detector_for_whole_images():
    options = JobOptions(source="/a", output="/b", faces="whole-image", min_face=40)
    assert options.policy.metadata() == {"faces": "whole-image", "detector": None, "min_face": None, "detector_threshold": None}
    assert JobOptions(source="/a", output="/b", min_face=40).policy.detect_kwargs() == {"min_face": 40, "threshold": 0.9}


def test_spec_reaches_source_and_output_in_their_own_stores(tmp_path: Path):
    spec = load_job_spec(_spec(tmp_path, MINIMAL + "source_anonymous: true\nendpoint_url: http://both:9000\n"
                                                  "output_endpoint_url: http://out:9000\n"))
    source, output = spec.options.source_location(), spec.options.output_location()
    # endpoint_url is both stores' unless one is named on its own; only the source may be unsigned.
    assert (source.uri, source.endpoint_url, source.anonymous) == ("s3://faces/in", "http://both:9000", True)
    assert (output.uri, output.endpoint_url, output.anonymous) == ("s3://faces/out", "http://out:9000", False)
    bad = _spec(tmp_path, MINIMAL + "source_endpoint_url: minio:9000\nsource_anonymous: 1\n")
    assert validate_job_spec(bad) == ["source_anonymous: must be true or false, got 1",
                                      "source_endpoint_url: must be an http:// or https:// URL, got 'minio:9000'"]
    both = _spec(tmp_path, MINIMAL + "source_anonymous: true\nsource_profile: reader\noutput_profile: writer\n")
    assert validate_job_spec(both) == ["source_profile: an anonymous source sends no credentials; give one of source_anonymous, "
                                       "source_profile"]
    spec = load_job_spec(_spec(tmp_path, MINIMAL + "source_profile: reader\noutput_profile: writer\n"))
    assert (spec.options.source_location().profile, spec.options.output_location().profile) == ("reader", "writer")
