"""Shared fixtures: a real S3 server (SeaweedFS `weed mini`) for the session, real face JPEGs, one torch thread."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path

import pytest

# benchmarks/s3server.py (a user-facing script, not part of the package) is the one weed mini launcher.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import s3server  # noqa: E402
from corpus import face_jpegs as _face_jpegs  # noqa: E402

# Re-exported: test modules take it from here.
from s3server import free_ports  # noqa: E402, F401


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """A real S3 endpoint for the whole session; its credentials are in os.environ meanwhile.

    The environment variables are what the code under test (and Ray workers, which inherit
    the environment) use through the standard AWS credential chain.
    """
    root = tmp_path_factory.mktemp("seaweedfs")
    with ExitStack() as stack:
        try:
            server = stack.enter_context(s3server.running(root))
        except s3server.S3ServerError as exc:
            pytest.fail(f"{exc}; its last lines:\n{_tail(root / 'weed.log')}")
        env = stack.enter_context(pytest.MonkeyPatch.context())
        for name in s3server.CLEARED_ENV:
            env.delenv(name, raising=False)
        for name, value in server.env().items():
            env.setenv(name, value)
        yield server


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@pytest.fixture(scope="session")
def face_jpegs():
    """`face_jpegs(n)`: the bytes of the first n real UTKFace crops (200x200 JPEG), sorted by name."""
    return _face_jpegs


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module: the model fixtures were made single-threaded, and on a
    busy 2-core box OpenMP threads spin against other jobs (a 200x200 parse: 11 s with 2, 0.15 s with 1)."""
    import torch  # here, not at the top: most test modules never load torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _label_demo(tmp_path_factory, **options) -> Path:
    import ray

    from batch_parse.demo import IMAGES_DIR
    from batch_parse.pipeline.job import connect_ray, run_job
    from batch_parse.pipeline.options import JobOptions

    dst = tmp_path_factory.mktemp("demo-output") / "labels"
    connect_ray()
    try:
        summary = run_job(JobOptions(source=str(IMAGES_DIR), output=str(dst), batch_size=4, **options))
    finally:
        ray.shutdown()
    assert summary.exit_code == 0
    return dst


@pytest.fixture(scope="session")
def demo_output(tmp_path_factory) -> Path:
    """The labelling job's real output for the bundled demo photos (local Ray, batch size 4, the
    default model), made once for every module that reads it (exports, imports); tests copy it
    before changing it."""
    return _label_demo(tmp_path_factory)


@pytest.fixture(scope="session")
def demo_output_9_classes(tmp_path_factory) -> Path:
    """The same by stn-icnn/v2, a model without `skin`: what a class the model lacks does to imports."""
    return _label_demo(tmp_path_factory, model="stn-icnn/v2")


@pytest.fixture(scope="module")
def ray_local(s3_server):
    """One local Ray for a module's jobs (each run_job would otherwise start and stop its own),
    started after the S3 credentials are in the environment, which Ray's workers inherit."""
    import ray

    from batch_parse.pipeline.job import connect_ray

    connect_ray()
    yield
    ray.shutdown()
