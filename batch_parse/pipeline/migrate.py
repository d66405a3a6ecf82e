"""Moves an output of batch-parse <= 0.4 (one folder per model version) into today's layout.

    before: OUTPUT/<model>-<hash>/data/*.parquet, .../_manifests/, .../_index/, .../_source.json,
            OUTPUT/_lease.json, OUTPUT/_lease.lock
    after:  OUTPUT/data/*.parquet, OUTPUT/.batch-parse/... (output/layout.py)

The run of a model moves the folders of its own weights (matched by the hash in the folder name)
under its lease; their old index is dropped, so the run then reads every moved file once and seals
it in the new index format. Each move is one file, so a kill mid-way leaves files in both places
and the next run moves the rest. Folders of other weights are left where they are (they are not
this dataset's rows): read them at OUTPUT/<model>-<hash>/data, or move them to an output of their own.
"""

from __future__ import annotations

import json
import time

import pyarrow.fs as pafs

from batch_parse.output.layout import OutputLayout

LEGACY_LEASE, LEGACY_LOCK = "_lease.json", "_lease.lock"


def version_folder(model_name: str, sha256: str) -> str:
    """The per-version folder name batch-parse <= 0.4 wrote under OUTPUT."""
    return f"{model_name.replace('/', '-')}-{sha256[:8]}"


def legacy_folders(fs: pafs.FileSystem, layout: OutputLayout, sha256: str) -> list[str]:
    """OUTPUT/<model>-<hash> folders holding output of these weights."""
    root = layout.location.fs_path()
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except FileNotFoundError:
        return []
    return sorted(i.path for i in infos if i.type == pafs.FileType.Directory and i.base_name.endswith(f"-{sha256[:8]}")
                  and fs.get_file_info(f"{i.path}/data").type == pafs.FileType.Directory)


def migrate(fs: pafs.FileSystem, layout: OutputLayout, sha256: str, fence) -> int:
    """Move the legacy folders of these weights into the layout; how many files were moved."""
    _check_legacy_lease(fs, layout)
    moved = 0
    for folder in legacy_folders(fs, layout, sha256):
        fence()
        moved += _move_tree(fs, f"{folder}/data", layout.data_dir, skip_hidden=True)
        moved += _move_tree(fs, f"{folder}/_manifests", layout.manifests_dir)
        source = f"{folder}/_source.json"
        if fs.get_file_info(source).type == pafs.FileType.File:
            if fs.get_file_info(layout.source_file).type == pafs.FileType.NotFound:
                _ensure_dir(fs, layout.state_dir)
                fs.move(source, layout.source_file)
            else:
                fs.delete_file(source)
        fs.delete_dir(folder)  # what is left: the old-format index, Ray's hidden temporaries
    return moved


def _move_tree(fs: pafs.FileSystem, src: str, dst: str, skip_hidden: bool = False) -> int:
    infos = fs.get_file_info(pafs.FileSelector(src, recursive=True, allow_not_found=True))
    moved = 0
    for info in infos:
        relative = info.path[len(src) + 1 :]
        if info.type != pafs.FileType.File or (skip_hidden and any(p.startswith((".", "_")) for p in relative.split("/"))):
            continue
        target = f"{dst}/{relative}"
        _ensure_dir(fs, target.rsplit("/", 1)[0])
        fs.move(info.path, target)
        moved += 1
    return moved


def _ensure_dir(fs: pafs.FileSystem, path: str) -> None:
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(path, recursive=True)


def _check_legacy_lease(fs: pafs.FileSystem, layout: OutputLayout) -> None:
    """Refuse while a run of an older batch-parse holds the output; remove its lease when it expired
    (a crash), and the old lock file, which dataset readers trip on."""
    lease = layout.location.fs_path(LEGACY_LEASE)
    try:
        with fs.open_input_stream(lease) as f:
            record = json.loads(f.read())
        if isinstance(record, dict) and float(record.get("expires_unix", 0)) >= time.time():
            raise ValueError(f"output {layout.location.uri} is being written by an older batch-parse "
                             f"({record.get('holder', 'unknown holder')}): wait for it to end")
        fs.delete_file(lease)
    except (FileNotFoundError, TypeError):
        pass
    except ValueError as exc:
        if "older batch-parse" in str(exc):
            raise
        fs.delete_file(lease)  # unreadable: nothing live can be named by it
    lock = layout.location.fs_path(LEGACY_LOCK)
    if fs.get_file_info(lease).type == pafs.FileType.NotFound and fs.get_file_info(lock).type == pafs.FileType.File:
        fs.delete_file(lock)
