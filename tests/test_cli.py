"""The `batch-parse` command's surface: one-line help, spec validation, one-line user errors, no secrets shown."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from batch_parse.cli.main import _Group, cli
from batch_parse.cli.redact import redact

REPO = Path(__file__).resolve().parents[1]
VERBS = ["run", "validate", "inspect", "render", "progress", "submit", "status", "logs", "stop", "list"]
# Shaped like an AWS secret key (40 base64 characters, both cases) so the shape rule is tested too.
SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYzzSECRETzz01"
TOKEN = "raytoken-0123456789abcdef0123456789abcdef"


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    return CliRunner()


def _one_error_line(result) -> str:
    """The single line a failed command printed; fails the test on more, on a traceback or on a secret."""
    assert result.exit_code != 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    _assert_no_secrets(result.output)
    return lines[0]


def _assert_no_secrets(text: str) -> None:
    assert SECRET not in text
    assert TOKEN not in text


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on exit: nothing listens there


def test_every_verb_has_a_one_line_summary(runner: CliRunner):
    listing = runner.invoke(cli, ["--help"])
    assert listing.exit_code == 0
    for verb in VERBS:
        rows = [line for line in listing.output.splitlines() if line.strip().startswith(verb + " ")]
        assert rows, f"{verb} missing from --help:\n{listing.output}"
        summary = rows[0].strip()[len(verb) :].strip()
        assert summary and not summary.endswith("..."), f"{verb}: summary cut short: {summary!r}"

        own = runner.invoke(cli, [verb, "--help"])
        assert own.exit_code == 0, own.output
        body = own.output.split("\n\n")
        assert body[0].startswith(f"Usage: cli {verb}") or body[0].startswith(f"Usage: batch-parse {verb}")
        first_paragraph = body[1].strip()
        assert first_paragraph == summary, f"{verb}: --help opens with {first_paragraph!r}, listing says {summary!r}"


def test_validate_accepts_a_good_spec(runner: CliRunner):
    result = runner.invoke(cli, ["validate", str(REPO / "jobs" / "local-demo.yaml")])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "ok: local-demo"


def test_validate_lists_every_problem(runner: CliRunner, tmp_path: Path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(
        textwrap.dedent(
            """\
            name: faces
            source: s3://Bad_Bucket/x
            output: ftp://host/out
            batch_sise: 8
            crop_format: gif
            resources: {gpus_per_actor: 1, min_actors: 4, max_actors: 2}
            schedule: "0 25 * * *"
            """
        )
    )
    result = runner.invoke(cli, ["validate", str(spec)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    expected = [
        "batch_sise: unknown key (did you mean 'batch_size'?)",
        "source: invalid S3 bucket name",
        "output: unsupported location scheme 'ftp://'",
        "crop_format: must be one of jpeg, png",
        "resources.max_actors: must be >= min_actors (4)",
        "schedule: hour field '25': 25 is out of range 0-23",
    ]
    assert len(lines) == len(expected), result.output
    for fragment in expected:
        assert sum(fragment in line for line in lines) == 1, f"{fragment!r} not on exactly one line:\n{result.output}"
    assert all(line.startswith(f"{spec}: ") for line in lines)


def test_validate_missing_file_is_one_problem(runner: CliRunner, tmp_path: Path):
    result = runner.invoke(cli, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    assert result.output.strip() == f"{tmp_path / 'nope.yaml'}: no such file"


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["run", "s3://Not_A_Bucket/in", "/tmp/out"], "source: invalid S3 bucket name"),
        (["run", "/tmp/in", "gs://bucket/out"], "output: unsupported location scheme 'gs://'"),
        (["run", "/tmp/in", "/tmp/out", "--batch-size", "0"], "batch_size: must be >= 1"),
        (["run", "/tmp/in", "/tmp/out", "--endpoint-url", "minio:9000"], "endpoint_url: must be an http:// or https:// URL"),
        (["run", "/tmp/in"], "give SRC and DST, or --spec JOB.yaml"),
        (["run", "--spec", "/nonexistent/job.yaml"], "Error: /nonexistent/job.yaml: no such file"),
        (["run", "/tmp/in", "/tmp/out", "--crop-format", "gif"], "Invalid value for '--crop-format'"),
        (["validate"], "Missing argument 'JOB.yaml'"),
        (["submit", "/nonexistent/job.yaml"], "Error: /nonexistent/job.yaml: no such file"),
        (["nosuchverb"], "No such command 'nosuchverb'"),
        (["inspect", "/nonexistent/labels"], "/nonexistent/labels"),
        (["render", "/nonexistent/labels", "--out", "/tmp/unused"], "/nonexistent/labels"),
        (["render", "/tmp/labels", "--limit", "0"], "Invalid value for '--limit'"),
    ],
)
def test_user_mistakes_are_one_line(runner: CliRunner, args: list[str], fragment: str):
    line = _one_error_line(runner.invoke(cli, args))
    assert fragment in line


def test_run_with_a_bad_spec_fails_before_ray_is_imported(tmp_path: Path):
    # In a fresh interpreter: this process may have imported Ray for other tests already.
    spec = tmp_path / "job.yaml"
    spec.write_text("name: x\nsource: s3://ok-bucket/in\noutput: /tmp/out\nresources: {max_actors: 0}\n")
    probe = textwrap.dedent(
        f"""
        import sys
        from batch_parse.cli.main import cli
        try:
            cli.main(["run", "--spec", {str(spec)!r}], prog_name="batch-parse")
        except SystemExit as e:
            print("exit", e.code, "ray imported:", "ray" in sys.modules)
        """
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert "exit 1 ray imported: False" in done.stdout, done.stdout + done.stderr
    assert done.stderr.strip().startswith("Error: ") and len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize("verb", [["status", "some-job"], ["list"], ["logs", "some-job"], ["stop", "some-job"]])
def test_unreachable_cluster_is_one_line(runner: CliRunner, verb: list[str]):
    url = f"http://127.0.0.1:{_closed_port()}"
    line = _one_error_line(runner.invoke(cli, [*verb, "--address", url]))
    assert line.startswith(f"Error: cannot reach a Ray cluster at {url}")


def test_address_comes_from_ray_address(runner: CliRunner, monkeypatch: pytest.MonkeyPatch):
    url = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("RAY_ADDRESS", url)
    assert f"cannot reach a Ray cluster at {url}" in _one_error_line(runner.invoke(cli, ["list"]))


def test_ray_client_address_is_refused(runner: CliRunner):
    line = _one_error_line(runner.invoke(cli, ["list", "--address", "ray://head:10001"]))
    assert "dashboard URL" in line


def test_credentials_never_printed(runner: CliRunner, tmp_path: Path):
    spec = tmp_path / "leaky.yaml"
    spec.write_text(
        textwrap.dedent(
            f"""\
            name: leaky
            source: s3://faces/in
            output: s3://faces/out
            endpoint_url: "http://admin:{SECRET}@minio:9000"
            runtime_env: {{env_vars: {{AWS_SECRET_ACCESS_KEY: {SECRET!r}, RAY_AUTH_TOKEN: 5}}}}
            """
        )
    )
    validated = runner.invoke(cli, ["validate", str(spec)])
    assert validated.exit_code == 1
    assert "endpoint_url: must not contain credentials" in validated.output
    assert "runtime_env.env_vars.RAY_AUTH_TOKEN" in validated.output
    _assert_no_secrets(validated.output)

    for args in (
        ["run", f"s3://user:{SECRET}@bucket/in", "/tmp/out"],
        ["run", "/tmp/in", "/tmp/out", "--endpoint-url", f"http://user:{SECRET}@minio:9000"],
        ["run", "--spec", str(spec)],
        ["status", "job", "--address", f"http://user:{SECRET}@127.0.0.1:{_closed_port()}"],
    ):
        _one_error_line(runner.invoke(cli, args))


def test_redact_scrubs_secret_shapes_and_keeps_the_rest():
    text = (
        f"GET https://AKIAIOSFODNN7EXAMPLE:{SECRET}@s3.example.com/b?X-Amz-Signature=abc123&x=1 "
        f"Authorization: Bearer {TOKEN} aws_secret_access_key={SECRET} commit 3f786850e387550fdab836ed7e6dc881de23001b"
    )
    scrubbed = redact(text)
    assert SECRET not in scrubbed and TOKEN not in scrubbed and "AKIAIOSFODNN7EXAMPLE" not in scrubbed
    assert "abc123" not in scrubbed
    assert "https://***@s3.example.com/b" in scrubbed
    assert "3f786850e387550fdab836ed7e6dc881de23001b" in scrubbed  # a lowercase hex digest is no secret
    assert redact("source: no such folder /data/faces") == "source: no such folder /data/faces"


def _group_that_fails(exc: Exception) -> click.Group:
    @click.group(cls=_Group)
    @click.option("--debug", is_flag=True)
    def group(debug: bool) -> None:
        pass

    @group.command()
    def boom() -> None:
        raise exc

    return group


def test_unexpected_errors_are_one_line_unless_debug():
    runner = CliRunner()
    group = _group_that_fails(KeyError("internal state"))
    quiet = runner.invoke(group, ["boom"])
    assert quiet.exit_code == 1
    assert quiet.output.strip().splitlines() == [
        "Error: unexpected KeyError: 'internal state' (run `batch-parse --debug ...` for the traceback)"
    ]
    loud = runner.invoke(group, ["--debug", "boom"])
    assert isinstance(loud.exception, KeyError)  # propagates: the console script prints the traceback


@pytest.mark.parametrize(
    "exc, message",
    [
        (FileNotFoundError(2, "No such file or directory", "/data/x.parquet"), "Error: no such file or folder: /data/x.parquet"),
        (PermissionError(13, "Permission denied", "/root/out"), "Error: permission denied: /root/out"),
        (ConnectionError("connection refused by 10.0.0.1:9000"), "Error: connection refused by 10.0.0.1:9000"),
    ],
)
def test_expected_errors_are_one_line_even_with_debug(exc: Exception, message: str):
    result = CliRunner().invoke(_group_that_fails(exc), ["--debug", "boom"])
    assert result.exit_code == 1
    assert result.output.strip() == message


def test_storage_errors_are_user_errors():
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    from batch_parse.storage.s3 import StorageError

    runner = CliRunner()
    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "ListObjectsV2")
    unreachable = EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
    for exc in (denied, NoCredentialsError(), unreachable, StorageError("bucket 'faces' does not exist")):
        result = runner.invoke(_group_that_fails(exc), ["boom"])
        assert result.exit_code == 1
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and "unexpected" not in lines[0], result.output


def test_console_entry_point_matches_module():
    # pyproject's console script and `python -m batch_parse.cli` (what `submit` runs) are one command.
    done = subprocess.run(
        [sys.executable, "-m", "batch_parse.cli", "--help"], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert done.returncode == 0 and done.stdout.startswith("Usage: batch-parse "), done.stdout + done.stderr
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'batch-parse = "batch_parse.cli:main"' in pyproject


def test_eval_scores_reframed_photos_whole_and_face_first(runner: CliRunner, tmp_path: Path):
    from PIL import Image

    from batch_parse.labels import HELEN_LABELS

    root = tmp_path / "helen"
    (root / "images").mkdir(parents=True)
    demo = Path(__file__).resolve().parents[1] / "batch_parse" / "demo" / "images" / "hopper_face_tight.jpg"
    nose = np.zeros((230, 230), np.uint8)
    nose[80:130, 95:140] = 255  # roughly where her nose is: a score to compute, not to check
    for name in ("a_1", "b_1"):
        Image.open(demo).save(root / "images" / f"{name}.jpg")
        (root / "labels" / name).mkdir(parents=True)
        for i, label in enumerate(HELEN_LABELS):
            grey = {"background": 255 - nose, "nose": nose}.get(label, np.zeros_like(nose))
            Image.fromarray(grey).save(root / "labels" / name / f"{name}_lbl{i:02d}.png")
    (root / "exemplars.txt").write_text("")
    (root / "tuning.txt").write_text("")
    (root / "testing.txt").write_text("a_1\nb_1\n")
    scores = {}
    for flags in ([], ["--faces", "largest"]):
        out = tmp_path / f"scores{len(flags)}.json"
        result = runner.invoke(cli, ["eval", str(root), "--face-fraction", "0.4", "--json", str(out), *flags])
        assert result.exit_code == 0, result.output
        assert "framed at 0.4 of a cluttered canvas" in result.output
        scores[len(flags)] = json.loads(out.read_text())
    assert scores[0]["face_fraction"] == 0.4 and scores[0]["faces"] == "whole-image" and scores[2]["faces"] == "largest"
    assert scores[0]["images"] == 2
    # The canvases are 575x431 with the 230 px photo in them; every pixel is counted once.
    assert sum(map(sum, scores[0]["confusion"])) == 2 * 575 * 431


# --- one place per option (issue 18 item 3) ----------------------------------------------------


def _help_defaults(text: str) -> dict[str, str]:
    """--flag -> the default click shows for it in --help (wrapped lines joined)."""
    import re

    flat = " ".join(text.split())
    starts = [(m.start(), m.group(1)) for m in re.finditer(r"(?:^| )(--[a-z-]+)(?: / --[a-z-]+)?(?: [A-Z]+| \[[a-z|-]+\])? ", flat)]
    shown = {}
    for (start, flag), (end, _) in zip(starts, starts[1:] + [(len(flat), None)]):
        found = re.search(r"\[default: ([^\]]*?)(?:; [^\]]*)?\]", flat[start:end])
        if found:
            shown[flag] = found.group(1)
    return shown


def test_run_and_eval_show_the_policy_defaults_click_computes(runner: CliRunner):
    from batch_parse.faces.policy import DETECTOR_DEFAULTS
    from batch_parse.pipeline.options import JobOptions

    defaults = JobOptions(source="", output="")
    mtcnn = DETECTOR_DEFAULTS["mtcnn"]
    shown = _help_defaults(runner.invoke(cli, ["run", "--help"]).output)
    assert shown["--faces"] == "all" and shown["--detector"] == "mtcnn"
    assert shown["--min-face"] == str(mtcnn.min_face) == str(defaults.min_face)
    assert shown["--detector-threshold"] == str(mtcnn.threshold) == str(defaults.detector_threshold)
    assert shown["--batch-size"] == str(defaults.batch_size) and shown["--rows-per-file"] == str(defaults.rows_per_file)
    evaluated = _help_defaults(runner.invoke(cli, ["eval", "--help"]).output)
    assert evaluated["--faces"] == "whole-image"  # eval's own default: tight crops parsed whole
    assert (evaluated["--min-face"], evaluated["--detector-threshold"]) == (shown["--min-face"], shown["--detector-threshold"])


def test_a_spec_becomes_the_defaults_of_run(runner: CliRunner, tmp_path: Path):
    """`run --spec` fills click's default_map: --help shows the spec's values, flags given still win."""
    spec = tmp_path / "job.yaml"
    spec.write_text("name: j\nsource: /tmp/in\noutput: /tmp/out\nbatch_size: 7\nmin_face: 33\ndetector_threshold: 0.75\n")
    shown = _help_defaults(runner.invoke(cli, ["run", "--spec", str(spec), "--help"]).output)
    assert (shown["--batch-size"], shown["--min-face"], shown["--detector-threshold"]) == ("7", "33", "0.75")
    # Bad values from either place are the same one-line usage error, before Ray or torch.
    line = _one_error_line(runner.invoke(cli, ["run", "--spec", str(spec), "--min-face", "0", "--batch-size", "100000"]))
    assert "batch_size: must be <= 65,536" in line and "min_face: must be a whole number of pixels" in line
    assert "Invalid value for '--detector'" in _one_error_line(runner.invoke(cli, ["run", "a", "b", "--detector", "retinaface"]))
