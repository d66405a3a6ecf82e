"""Where everything of one output lives: the face rows in one folder, control state out of readers' way.

    OUTPUT/data/*.parquet                  the face rows, and nothing else: point any reader here
    OUTPUT/.batch-parse/lease.json         the run writing now (output/lease.py); lease.lock beside it
    OUTPUT/.batch-parse/source.json        the one source these labels are of (output/source_identity.py)
    OUTPUT/.batch-parse/model.json         the one model version these labels are of
    OUTPUT/.batch-parse/index/*.parquet    which images the data files hold complete (pipeline/commit.py)
    OUTPUT/.batch-parse/manifests/         what each run listed and set out to do
    OUTPUT/.batch-parse/staging/RUN/       a run's data files before it publishes them into data/

Why this shape: pandas, pyarrow.dataset, polars, DuckDB, Ray Data and Hugging Face datasets read
`OUTPUT/data` as exactly the face rows. Control state sits in a dot folder, which pyarrow (so
pandas), Ray Data and datasets also skip when given OUTPUT itself; polars and DuckDB do not skip
it, which is why the README names `OUTPUT/data`. Staged files are invisible to every reader: a
run's files reach `data/` only through a publish step that the run's lease fences (commit.py).

Outputs of batch-parse <= 0.4 kept one folder per model version (`OUTPUT/<model>-<hash>/data`, with
`_index`, `_manifests`, `_source.json` beside it, and `OUTPUT/_lease.json`); `legacy_version_dir`
names it, and pipeline/migrate.py moves it into this layout on the next run of that model.
"""

from __future__ import annotations

from dataclasses import dataclass

from batch_parse.storage.location import Location

DATA_DIR = "data"
STATE_DIR = ".batch-parse"


@dataclass(frozen=True)
class OutputLayout:
    """The paths of one output, as pyarrow filesystems spell them (`bucket/key` on S3)."""

    location: Location

    def _state(self, *parts: str) -> str:
        return self.location.fs_path(STATE_DIR, *parts)

    @property
    def data_dir(self) -> str:
        return self.location.fs_path(DATA_DIR)

    @property
    def data_uri(self) -> str:
        """The dataset's location as the user spells it: what the README and the summary name."""
        return self.location.join(DATA_DIR)

    @property
    def state_dir(self) -> str:
        return self._state()

    @property
    def index_dir(self) -> str:
        return self._state("index")

    @property
    def manifests_dir(self) -> str:
        return self._state("manifests")

    @property
    def staging_root(self) -> str:
        return self._state("staging")

    def staging_dir(self, run_id: str) -> str:
        return self._state("staging", run_id)

    @property
    def source_file(self) -> str:
        return self._state("source.json")

    @property
    def model_file(self) -> str:
        return self._state("model.json")

    def legacy_version_dir(self, version_folder: str) -> str:
        return self.location.fs_path(version_folder)
