"""Verbs that hand a job spec to a running Ray cluster and follow it: submit, status, logs, stop, list."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import click
import yaml

from batch_parse.cli.redact import echo

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
_TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# The driver only coordinates Ray Data; model actors ask for their own GPUs, so the driver takes
# one CPU and no GPU, and never holds a GPU that an actor is waiting for.
_ENTRYPOINT_NUM_CPUS = 1

address_option = click.option(
    "--address",
    envvar=["RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"],
    default=DEFAULT_ADDRESS,
    show_default=True,
    help="Ray dashboard URL of the cluster (or env RAY_API_SERVER_ADDRESS / RAY_ADDRESS).",
)


def dashboard_url(address: str) -> str:
    address = address.strip().rstrip("/")
    if address == "auto" or address.startswith("ray://"):
        raise click.UsageError(f"--address must be the Ray dashboard URL (http://HEAD:8265), not {address!r}")
    return address if "://" in address else f"http://{address}"


def auth_token() -> str | None:
    """The cluster's auth token, looked up where Ray itself looks (Ray >= 2.52 token auth)."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        try:
            return Path(path).expanduser().read_text().strip() or None
        except FileNotFoundError:
            raise click.ClickException(f"the file RAY_AUTH_TOKEN_PATH names does not exist: {path}") from None
    default = Path.home() / ".ray" / "auth_token"
    if default.is_file():
        return default.read_text().strip() or None
    return None


@contextlib.contextmanager
def _talking_to(url: str):
    """Turn the job client's connection and auth failures into one line that names the cluster."""
    import requests
    from ray.exceptions import AuthenticationError

    try:
        yield
    except (ConnectionError, requests.exceptions.ConnectionError):
        raise click.ClickException(
            f"cannot reach a Ray cluster at {url} (is it running? --address / RAY_ADDRESS must be its dashboard URL)"
        ) from None
    except requests.exceptions.Timeout:
        raise click.ClickException(f"Ray cluster at {url} did not answer in time") from None
    except AuthenticationError as e:
        if "Authentication failed" in str(e):
            raise click.ClickException(f"the Ray cluster at {url} rejected the auth token") from None
        raise click.ClickException(
            f"the Ray cluster at {url} needs an auth token; set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH "
            "(`ray get-auth-token` on the head node prints it)"
        ) from None
    except RuntimeError as e:
        # The SDK reports HTTP errors as RuntimeError("Request failed with status code 404: ...").
        text = " ".join(str(e).split())
        if "status code 404" in text and "does not exist" in text:
            raise click.ClickException(f"no such job at {url}: {text.split('404:', 1)[1].strip(' .')}") from None
        raise click.ClickException(f"Ray cluster at {url}: {text}") from None


def _client(address: str):
    try:
        import aiohttp  # noqa: F401  (the job SDK needs these, which ray[data] alone lacks)
        import pydantic  # noqa: F401
    except ImportError:
        raise click.ClickException("talking to a Ray cluster needs ray[default]: pip install 'ray[default]==2.60.*'") from None
    from ray.job_submission import JobSubmissionClient

    url = dashboard_url(address)
    # The SDK logs every package upload and websocket close at INFO; our own lines say enough.
    for name in ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk", "ray._private.runtime_env.packaging"):
        logging.getLogger(name).setLevel(logging.WARNING)
    token = auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    # The SDK prefers RAY_API_SERVER_ADDRESS / RAY_ADDRESS over its address argument; set the
    # former for the constructor so --address always wins.
    saved = os.environ.get("RAY_API_SERVER_ADDRESS")
    os.environ["RAY_API_SERVER_ADDRESS"] = url
    try:
        with _talking_to(url):
            return JobSubmissionClient(url, headers=headers), url
    finally:
        if saved is None:
            del os.environ["RAY_API_SERVER_ADDRESS"]
        else:
            os.environ["RAY_API_SERVER_ADDRESS"] = saved


def _weights_not_read(model: str) -> list[str]:
    """Exclude patterns for the package's weights files other than the one `model` names (by
    registry name, or as a path to one of them)."""
    from batch_parse.model.registry import REGISTRY

    read = REGISTRY.get(model, Path(model).expanduser()).resolve()
    return sorted({f"model/weights/{path.name}" for path in REGISTRY.values() if path.resolve() != read})


def _runtime_env(spec, spec_dir: Path, pin_pip: bool) -> dict:
    import batch_parse

    runtime_env: dict = {
        "working_dir": str(spec_dir),
        # Ship this checkout's package so the cluster runs exactly the code that was validated here,
        # with the one weights file the job reads: every version ships in the package (28 MB
        # each), and all of them would pass the 100 MiB a Ray job's upload may hold.
        "py_modules": [str(Path(batch_parse.__file__).parent)],
        "excludes": ["__pycache__", "*.pyc", *_weights_not_read(spec.options.model)],
    }
    pip = list(spec.runtime_env.get("pip") or [])
    if pin_pip:
        from importlib.metadata import PackageNotFoundError, version

        try:
            pip.append(f"batch-parse=={version('batch-parse')}")
        except PackageNotFoundError:
            raise click.UsageError("--pip needs batch-parse installed here (pip install batch-parse) to pin its version")
    if pip:
        runtime_env["pip"] = pip
    if spec.runtime_env.get("env_vars"):
        runtime_env["env_vars"] = dict(spec.runtime_env["env_vars"])
    return runtime_env


@click.command()
@click.argument("spec_path", metavar="JOB.yaml", type=click.Path(dir_okay=False, path_type=Path))
@address_option
@click.option("--submission-id", help="Id to track the job by.  [default: <spec name>-<UTC time>]")
@click.option("--no-wait", is_flag=True, help="Return once submitted instead of following the logs.")
@click.option("--pip", "pin_pip", is_flag=True, help="Also pip-install batch-parse==<this version> on the cluster.")
def submit(spec_path: Path, address: str, submission_id: str | None, no_wait: bool, pin_pip: bool) -> None:
    """Submit a job spec to a Ray cluster as a Ray job."""
    from batch_parse.jobspec import load_job_spec, spec_mapping

    spec = load_job_spec(spec_path)  # a bad spec fails here, before any cluster is contacted
    submission_id = submission_id or f"{spec.name}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
    client, url = _client(address)
    with tempfile.TemporaryDirectory(prefix="batch-parse-submit-") as tmp:
        # Local paths in the spec are resolved here; the shipped copy carries them absolute
        # because the job runs from its own working dir, not next to the original spec.
        shipped = Path(tmp) / spec_path.name
        shipped.write_text(yaml.safe_dump(spec_mapping(spec), sort_keys=False))
        with _talking_to(url):
            job_id = client.submit_job(
                entrypoint=f"python -m batch_parse.cli run --spec {shipped.name}",
                submission_id=submission_id,
                runtime_env=_runtime_env(spec, Path(tmp), pin_pip),
                entrypoint_num_cpus=_ENTRYPOINT_NUM_CPUS,
                entrypoint_num_gpus=0,
                metadata={"batch_parse_spec": spec.name},
            )
    echo(f"submitted {job_id} to {url}")
    if no_wait:
        echo(f"follow it with: batch-parse logs {job_id} --follow --address {url}")
        return
    try:
        status = _follow(client, url, job_id)
    except KeyboardInterrupt:
        echo(f"stopped following; {job_id} keeps running (batch-parse stop {job_id} cancels it)", err=True)
        raise SystemExit(130)
    if status == "SUCCEEDED":
        echo(f"{job_id}: {status}")
        return
    with _talking_to(url):
        info = client.get_job_info(job_id)
    message = _short_message(info)
    echo(f"{job_id}: {status}" + (f": {message[:300]}" if message else ""))
    from batch_parse.output.errors import EXIT_RETRYABLE

    # The run's own exit code carries through: 3 = images not done for reasons that can pass.
    raise SystemExit(EXIT_RETRYABLE if info.driver_exit_code == EXIT_RETRYABLE else 1)


def _follow(client, url: str, job_id: str) -> str:
    """Print the job's log as it grows until the job ends; its final status."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            echo(chunk, nl=False)

    with _talking_to(url):
        asyncio.run(tail())
        # The log stream closes a moment before the status settles.
        for _ in range(50):
            status = str(client.get_job_status(job_id).value)
            if status in _TERMINAL:
                return status
            time.sleep(0.2)
    return status


@click.command()
@click.argument("submission_id", metavar="ID")
@address_option
def status(submission_id: str, address: str) -> None:
    """Show a submitted job's status."""
    client, url = _client(address)
    with _talking_to(url):
        info = client.get_job_info(submission_id)
    echo(f"{submission_id}: {info.status.value}")
    message = _short_message(info)
    if message:
        echo(f"message: {message}" + (f" (see `batch-parse logs {submission_id}`)" if info.status.value == "FAILED" else ""))
    echo(f"started: {_when(info.start_time)}")
    if info.end_time:
        echo(f"ended: {_when(info.end_time)}")
    echo(f"entrypoint: {info.entrypoint}")


@click.command()
@click.argument("submission_id", metavar="ID")
@address_option
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job ends.")
def logs(submission_id: str, address: str, follow: bool) -> None:
    """Print a submitted job's logs."""
    client, url = _client(address)
    if follow:
        _follow(client, url, submission_id)
        return
    with _talking_to(url):
        echo(client.get_job_logs(submission_id), nl=False)


@click.command()
@click.argument("submission_id", metavar="ID")
@address_option
def stop(submission_id: str, address: str) -> None:
    """Stop a running job."""
    client, url = _client(address)
    with _talking_to(url):
        if client.stop_job(submission_id):
            echo(f"stop requested for {submission_id}")
        else:
            echo(f"{submission_id} was not running: {client.get_job_status(submission_id).value}")


@click.command(name="list")
@address_option
def list_jobs(address: str) -> None:
    """List the jobs submitted to a cluster."""
    client, url = _client(address)
    with _talking_to(url):
        jobs = client.list_jobs()
    jobs = sorted((j for j in jobs if j.submission_id), key=lambda j: j.start_time or 0)
    if not jobs:
        echo(f"no jobs at {url}")
        return
    width = max(len(j.submission_id) for j in jobs)
    for j in jobs:
        echo(f"{j.submission_id:<{width}}  {j.status.value:<9}  {_when(j.start_time)}  {j.entrypoint}")


def _short_message(info) -> str:
    """The job's status message on one line, less the log tail Ray appends to failures."""
    return " ".join((info.message or "").split()).split(", last available logs")[0]


def _when(millis: int | None) -> str:
    if not millis:
        return "-"
    return datetime.fromtimestamp(millis / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


COMMANDS = [submit, status, logs, stop, list_jobs]
