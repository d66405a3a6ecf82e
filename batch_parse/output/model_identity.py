"""One model per output: the output records the weights its labels come from and refuses others.

    OUTPUT/.batch-parse/model.json   {"model_version": "stn-icnn/default@4f8fdf62", "sha256": "..."}

`OUTPUT/data` is one dataset with one schema: rows of two weights files would mix label
conventions (and, between 9- and 10-class models, columns) in it. The record compares weights,
not names: `stn-icnn/default` and `stn-icnn/v4` are the same labels when their hashes agree.
"""

from __future__ import annotations

import json

import pyarrow.fs as pafs

from batch_parse.model.registry import version_named
from batch_parse.output.layout import STATE_DIR, OutputLayout
from batch_parse.storage.location import Location


def claim_model(fs: pafs.FileSystem, output: Location, model_version: str, sha256: str, record: bool = True) -> bool:
    """ValueError (one line) if the output holds other weights; True if it records these. When it
    records none, they are recorded now, or with record=False later (job.py: once images are listed)."""
    path = OutputLayout(output).model_file
    shown = output.join(STATE_DIR, "model.json")
    try:
        with fs.open_input_stream(path) as f:
            recorded = json.loads(f.read())
    except FileNotFoundError:
        if not record:
            return False
        if isinstance(fs, pafs.LocalFileSystem):
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as f:
            f.write(json.dumps({"model_version": model_version, "sha256": sha256}).encode())
        return True
    except ValueError:
        raise ValueError(f"{shown} is not a model record: remove it if {output.join('data')} is empty") from None
    if not isinstance(recorded, dict) or not isinstance(recorded.get("sha256"), str):
        raise ValueError(f"{shown} is not a model record: remove it if {output.join('data')} is empty")
    if recorded["sha256"] != sha256:
        # `stn-icnn/default` moves between versions: name the version that wrote the output.
        writer = version_named(recorded["sha256"])
        raise ValueError(
            f"output {output.uri} holds labels of {recorded.get('model_version', 'other weights')}; refusing "
            f"{model_version}: use another output for these weights, or the model that wrote it "
            f"(--model {writer or 'WEIGHTS'})"
        )
    return True
