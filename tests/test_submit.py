"""`batch-parse submit/status/logs/list/stop` against a real local Ray cluster with token auth on."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import requests
import yaml

from conftest import free_ports

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
JOB_TIMEOUT_S = 120.0
IMAGES = 3


@dataclass
class RayHead:
    url: str  # dashboard
    token: str
    temp_dir: Path


def _free_port_range(count: int) -> tuple[int, int]:
    """`count` consecutive free ports, for Ray's worker processes."""
    for base in range(20000 + secrets.randbelow(20000), 60000, count):
        with ExitStack() as held:
            try:
                for port in range(base, base + count):
                    s = held.enter_context(socket.socket())
                    s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return base, base + count - 1
    pytest.fail("no range of free ports for Ray workers")


def _cluster_env(token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    # Ray 2.60 local clusters turn token auth on by default; pin it on, with a token of our own,
    # so the test never depends on (or writes) the developer's ~/.ray/auth_token.
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0")
    # The job's entrypoint is `python -m batch_parse.cli`: that python must be this one.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO)
    return env


@pytest.fixture(scope="module")
def ray_head():
    token = secrets.token_hex(16)
    # Short and dedicated: Ray's socket paths must stay under 107 bytes, and teardown looks
    # for leftovers by this path.
    temp_dir = Path(tempfile.mkdtemp(prefix="bp-ray-", dir="/tmp"))
    gcs, dashboard, client, agent, agent_grpc, env_agent, metrics, objects, nodes = free_ports(9)
    low, high = _free_port_range(40)
    command = [
        str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
        f"--port={gcs}", f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={env_agent}", f"--metrics-export-port={metrics}",
        f"--object-manager-port={objects}", f"--node-manager-port={nodes}",
        f"--min-worker-port={low}", f"--max-worker-port={high}",
        # 3 logical CPUs on a 2-core machine: the job driver reserves 1 (entrypoint_num_cpus),
        # the model actor 1, and Ray Data's read/decode tasks need 1 to make progress.
        "--num-cpus=3", "--num-gpus=0", "--include-dashboard=true",
        "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1",
        f"--temp-dir={temp_dir}", "--disable-usage-stats",
    ]  # fmt: skip
    log_path = temp_dir / "ray-start.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=_cluster_env(token), start_new_session=True
        )
    head = RayHead(f"http://127.0.0.1:{dashboard}", token, temp_dir)
    try:
        _wait_for_dashboard(head, process, log_path)
        yield head
    finally:
        _stop_cluster(process, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_dashboard(head: RayHead, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    headers = {"Authorization": f"Bearer {head.token}"}
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"ray start exited with {process.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}")
        try:
            # The job API, not just the HTTP server: it answers once its module is up.
            if requests.get(f"{head.url}/api/jobs/", headers=headers, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    pytest.fail(f"Ray dashboard at {head.url} not up after {START_TIMEOUT_S:.0f} s")


def _stop_cluster(process: subprocess.Popen, temp_dir: Path) -> None:
    """Stop only this cluster (`ray stop` would stop every Ray on the machine)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # `ray start --block` then stops the processes it started
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT_S)
    # Leftovers of this cluster name its temp dir on their command line; nothing else does.
    for pid in _pids_mentioning(str(temp_dir)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _pids_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if text.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


def _cli(head: RayHead, *args: str, token: str | None = "cluster", timeout: float = 60.0, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = str(REPO)
    if token:
        env["RAY_AUTH_TOKEN"] = head.token if token == "cluster" else token
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "batch_parse.cli", *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO,
    )  # fmt: skip


def _tiny_spec(root: Path, face_jpegs, name: str) -> Path:
    images = root / "images"
    images.mkdir(parents=True)
    for i, data in enumerate(face_jpegs(IMAGES)):
        (images / f"face_{i}.jpg").write_bytes(data)
    spec = {
        "name": name,
        "source": "images",  # relative: read against the spec's folder, shipped absolute
        "output": "labels",
        "batch_size": 4,
        "resources": {"gpus_per_actor": 0, "cpus_per_actor": 1, "min_actors": 1, "max_actors": 1},
        "device": "cpu",
    }
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _wait_for_status(head: RayHead, job_id: str, wanted: set[str]) -> str:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        done = _cli(head, "status", job_id, "--address", head.url)
        assert done.returncode == 0, done.stderr
        status = done.stdout.splitlines()[0].split(": ", 1)[1]
        if status in wanted:
            return status
        time.sleep(1)
    pytest.fail(f"{job_id} not in {wanted} after {JOB_TIMEOUT_S:.0f} s")


def test_submit_runs_a_real_job_and_reports_it(ray_head: RayHead, tmp_path: Path, face_jpegs):
    spec = _tiny_spec(tmp_path, face_jpegs, "tiny-faces")
    job_id = "tiny-faces-run-1"
    submitted = _cli(ray_head, "submit", str(spec), "--address", ray_head.url, "--submission-id", job_id, timeout=JOB_TIMEOUT_S)
    assert submitted.stdout.splitlines()[0] == f"submitted {job_id} to {ray_head.url}", submitted.stdout + submitted.stderr
    assert submitted.stdout.rstrip().splitlines()[-1] == f"{job_id}: SUCCEEDED", submitted.stdout + submitted.stderr
    assert submitted.returncode == 0

    status = _cli(ray_head, "status", job_id, "--address", ray_head.url)
    assert status.returncode == 0
    assert status.stdout.splitlines()[0] == f"{job_id}: SUCCEEDED"
    assert "entrypoint: python -m batch_parse.cli run --spec job.yaml" in status.stdout

    logs = _cli(ray_head, "logs", job_id, "--address", ray_head.url)
    assert logs.returncode == 0 and logs.stdout.strip()
    assert logs.stdout.strip().splitlines()[-1] in submitted.stdout  # what submit streamed is the job's log

    listed = _cli(ray_head, "list", "--address", ray_head.url)
    assert any(line.split()[:2] == [job_id, "SUCCEEDED"] for line in listed.stdout.splitlines()), listed.stdout

    # The job really labelled the images: one ok row per JPEG under the spec's output folder.
    tables = [pq.read_table(p) for p in sorted((tmp_path / "labels").rglob("*.parquet"))]
    rows = [t for t in tables if {"key", "status", "label_map"} <= set(t.column_names)]
    assert rows, f"no output Parquet under {tmp_path / 'labels'}"
    keys = sorted(k for t in rows for k in t.column("key").to_pylist())
    assert keys == [f"face_{i}.jpg" for i in range(IMAGES)]
    assert {s for t in rows for s in t.column("status").to_pylist()} == {"ok"}


def test_submit_passes_on_the_exit_code_of_retryable_errors(ray_head: RayHead, s3_server, tmp_path: Path, face_jpegs):
    """Credentials that can list but not read: the job exits 3 (images not done), and so does submit."""
    bucket = s3_server.make_bucket("submit-listonly")
    for i, data in enumerate(face_jpegs(2)):
        s3_server.client().put_object(Bucket=bucket, Key=f"in/{i}.jpg", Body=data)
    spec = {
        "name": "list-only", "source": f"s3://{bucket}/in", "output": "labels", "endpoint_url": s3_server.endpoint_url,
        "fetch_attempts": 1, "device": "cpu", "resources": {"gpus_per_actor": 0, "cpus_per_actor": 1, "min_actors": 1, "max_actors": 1},
        "runtime_env": {"env_vars": s3_server.list_only_env()},
    }  # fmt: skip
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    submitted = _cli(ray_head, "submit", str(path), "--address", ray_head.url, "--submission-id", "list-only-1", timeout=JOB_TIMEOUT_S)
    assert submitted.returncode == 3, submitted.stdout[-2000:] + submitted.stderr[-2000:]
    assert "NOT DONE: 2 image(s) failed with errors that can pass (access_denied 2)" in submitted.stdout
    assert submitted.stdout.rstrip().splitlines()[-1].startswith("list-only-1: FAILED")


def test_stop_a_running_job(ray_head: RayHead, tmp_path: Path, face_jpegs):
    spec = _tiny_spec(tmp_path, face_jpegs, "to-stop")
    submitted = _cli(ray_head, "submit", str(spec), "--address", ray_head.url, "--no-wait")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split()[1]
    assert job_id.startswith("to-stop-")  # default id: <spec name>-<UTC timestamp>

    stopped = _cli(ray_head, "stop", job_id, "--address", ray_head.url)
    assert stopped.returncode == 0 and stopped.stdout.strip() == f"stop requested for {job_id}", stopped.stdout
    assert _wait_for_status(ray_head, job_id, {"STOPPED", "SUCCEEDED", "FAILED"}) == "STOPPED"
    again = _cli(ray_head, "stop", job_id, "--address", ray_head.url)
    assert again.stdout.strip() == f"{job_id} was not running: STOPPED"

    reused = _cli(ray_head, "submit", str(spec), "--address", ray_head.url, "--submission-id", job_id, "--no-wait")
    assert reused.returncode == 1 and reused.stdout == ""
    assert reused.stderr.strip().startswith(f"Error: Ray cluster at {ray_head.url}: ") and "already exists" in reused.stderr
    assert len(reused.stderr.strip().splitlines()) == 1, reused.stderr


def test_unknown_job_is_one_line(ray_head: RayHead):
    for verb in ("status", "logs", "stop"):
        done = _cli(ray_head, verb, "no-such-job", "--address", ray_head.url)
        assert done.returncode == 1, verb
        assert done.stderr.strip() == f"Error: no such job at {ray_head.url}: Job no-such-job does not exist", verb


def test_runtime_env_ships_this_checkout_and_the_spec(tmp_path: Path):
    from importlib.metadata import version

    import batch_parse
    from batch_parse.cli.jobs import _runtime_env, _weights_not_read
    from batch_parse.jobspec import load_job_spec
    from batch_parse.model.registry import REGISTRY

    path = tmp_path / "job.yaml"
    path.write_text(
        "name: env\nsource: s3://faces/in\noutput: s3://faces/out\n"
        "runtime_env: {env_vars: {HF_HUB_OFFLINE: '1'}, pip: [simplejpeg]}\n"
    )
    spec = load_job_spec(path)
    plain = _runtime_env(spec, tmp_path, pin_pip=False)
    # Of the weights that ship in the package, only the file of the spec's model (the default: v4)
    # travels; all of them together would pass the 100 MiB a Ray job's upload may hold.
    others = [f"model/weights/stn-icnn-v{v}.safetensors" for v in (1, 2, 3)]
    assert plain == {
        "working_dir": str(tmp_path),
        "py_modules": [str(Path(batch_parse.__file__).parent)],
        "excludes": ["__pycache__", "*.pyc", *others],
        "pip": ["simplejpeg"],
        "env_vars": {"HF_HUB_OFFLINE": "1"},
    }
    pinned = _runtime_env(spec, tmp_path, pin_pip=True)
    assert pinned["pip"] == ["simplejpeg", f"batch-parse=={version('batch-parse')}"]
    path.write_text(path.read_text() + "model: stn-icnn/v2\n")
    v2 = _runtime_env(load_job_spec(path), tmp_path, pin_pip=False)
    assert v2["excludes"][2:] == [f"model/weights/stn-icnn-v{v}.safetensors" for v in (1, 3, 4)]
    assert _weights_not_read(str(REGISTRY["stn-icnn/v2"])) == v2["excludes"][2:]  # the same file named by its path


def test_missing_or_wrong_token_is_one_line(ray_head: RayHead, tmp_path: Path):
    # HOME elsewhere: a developer's ~/.ray/auth_token must not stand in for the missing token.
    missing = _cli(ray_head, "list", "--address", ray_head.url, token=None, env_extra={"HOME": str(tmp_path)})
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        f"Error: the Ray cluster at {ray_head.url} needs an auth token; set RAY_AUTH_TOKEN or "
        "RAY_AUTH_TOKEN_PATH (`ray get-auth-token` on the head node prints it)"
    )
    wrong = _cli(ray_head, "list", "--address", ray_head.url, token="not-the-token")
    assert wrong.returncode == 1
    assert wrong.stderr.strip() == f"Error: the Ray cluster at {ray_head.url} rejected the auth token"

    token_file = tmp_path / "token"
    token_file.write_text(ray_head.token + "\n")
    from_file = _cli(
        ray_head, "list", "--address", ray_head.url, token=None,
        env_extra={"HOME": str(tmp_path), "RAY_AUTH_TOKEN_PATH": str(token_file)},
    )  # fmt: skip
    assert from_file.returncode == 0, from_file.stderr
    for done in (missing, wrong, from_file):
        assert ray_head.token not in done.stdout + done.stderr
