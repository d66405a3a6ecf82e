"""`batch-parse export`: a job's output in the formats labelling and dataset tools open as they are.

One module per format (coco, cvat, labelstudio, hf, fiftyone), each a function
`export(photos, out, originals, result, labels)`; faces.py reads the output photo by photo for all of them.
`labels` (LabelSet) is what the output's own metadata says about its labels: the classes and
colours of the model that wrote it, so a 9-class output never offers a `skin` class to annotate.
Every format writes into a fresh local folder OUT; originals are referenced by their key (a local
path or an s3:// URI) unless `--copy-images` puts them in OUT/images (hf: inside the Parquet).
"""

from __future__ import annotations

import importlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from batch_parse.model.licence import Licence, output_licence
from batch_parse.output.schema import model_version_of
from batch_parse.storage.location import Location

FORMATS = ("coco", "cvat", "labelstudio", "hf", "fiftyone")
IMAGES_DIR = "images"  # where --copy-images puts the originals, named by faces.copied_name(key)


@dataclass(frozen=True)
class LabelSet:
    """The labels an export describes, from the output files' metadata (never from labels.py's full list)."""

    class_names: tuple[str, ...]  # label map values index these; background first
    class_colors: tuple[tuple[int, int, int], ...]
    model_versions: tuple[str, ...]  # model@hash of the files exported
    licence: Licence  # the labels' terms, from the files' metadata (model/licence.py)

    @property
    def part_classes(self) -> tuple[tuple[int, str], ...]:
        """(index, name) of every class but background: the categories and labels a tool offers."""
        return tuple((i, name) for i, name in enumerate(self.class_names) if i)


def label_set(files) -> LabelSet:
    """The LabelSet of output files (reader.OutputFile): their model's classes and colours.

    Class lists are prefixes of labels.CLASS_NAMES (a 9-class model's are a 10-class one's minus
    skin), so files of two models (exported apart by --where model_version) describe their labels
    with the longest list; one model's files always agree.
    """
    from batch_parse.output.schema import file_class_colors, file_class_names

    metas = [f.metadata for f in files]
    longest = max(metas, key=lambda m: len(file_class_names(m)))
    versions = sorted({model_version_of(m) for m in metas})
    # One model per export (export_output refuses two unless --where picks one): its files share one licence.
    return LabelSet(file_class_names(longest), file_class_colors(longest), tuple(versions), output_licence(longest))


@dataclass
class ExportResult:
    """What an export wrote: counts for the summary and the files a user opens in the tool."""

    format: str
    out: Path
    images: int = 0
    faces: int = 0
    parts: int = 0  # part masks: COCO annotations, Label Studio results, CVAT objects
    copied: int = 0
    incomplete: int = 0  # images left out: only some of their faces in the output (a torn publish)
    files: list[str] = field(default_factory=list)  # relative to out
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        parts = f", {self.parts} part mask(s)" if self.parts else ""
        lines = [f"exported {self.images} image(s), {self.faces} face(s){parts} as {self.format} to {self.out}"]
        if self.copied:
            into = "the Parquet" if self.format == "hf" else self.out / IMAGES_DIR
            lines.append(f"copied {self.copied} original(s) into {into}")
        lines += [f"  {name}" for name in self.files]
        lines += [f"note: {note}" for note in self.notes]
        return lines


def export_output(dst: str | Location, out: str | os.PathLike, fmt: str, *, where: str | None = None, limit: int | None = None,
                  copy_images: bool = False,
                  progress: Callable[[int, int, int], None] | None = None) -> ExportResult:
    """Export the output at `dst` to the fresh folder `out` in format `fmt`; ValueError on a user mistake.

    progress(rows_read, rows_total, images_done) is called as the rows stream by.
    """
    # Here, not at the top: the CLI imports this package for FORMATS alone.
    from batch_parse.export.faces import Originals, iter_photos
    from batch_parse.export.where import parse_where
    from batch_parse.output.reader import open_output

    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: one of {', '.join(FORMATS)}")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    if str(out).startswith("s3://"):
        raise ValueError("OUT must be a local folder (the tools import from files)")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty folder: export into a new one")
    condition = parse_where(where) if where else None
    module = importlib.import_module(f"batch_parse.export.{fmt}")
    module.check_installed()  # before reading anything: a missing library is a one-line error, not a half export
    output = open_output(dst)
    versions = sorted({model_version_of(f.metadata) for f in output.files})
    if len(versions) > 1 and not (condition and "model_version" in condition.columns):
        # The same image labelled by two models would be exported twice, as two conflicting images.
        raise ValueError(f"{output.location.uri} holds {len(versions)} model versions ({', '.join(versions)}): export one, "
                         f"with --where \"model_version == '{versions[-1]}'\" or DST set to its folder")
    total = sum(f.num_rows for f in output.files)
    result = ExportResult(format=fmt, out=out)
    rows_read = 0

    def advance(rows: int) -> None:
        nonlocal rows_read
        rows_read += rows
        if progress is not None:
            progress(rows_read, total, result.images)

    incomplete: list = []
    photos = iter_photos(output, condition, limit, columns=module.COLUMNS, progress=advance, incomplete=incomplete)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        module.export(photos, out, Originals(output.location) if copy_images else None, result, label_set(output.files))
    except BaseException:
        # No half export left behind to be imported by mistake; the folder was empty or new.
        if created:
            shutil.rmtree(out, ignore_errors=True)
        else:
            for child in out.iterdir():
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
        raise
    if output.corrections:
        result.notes.append(f"left out {len(output.corrections)} file(s) of human corrections among the model's rows "
                            f"(e.g. {output.relative(output.corrections[0])}): move them out of data/ and export them on their own")
    if incomplete:
        result.incomplete = len(incomplete)
        result.notes.append(f"left out {len(incomplete)} image(s) with only some of their faces in {dst} (e.g. "
                            f"{incomplete[0].key}): a run was interrupted while publishing; the next run of the same "
                            "command completes them (publishes the rest or labels them again), then export again")
    if result.images == 0:
        result.notes.append("no image matched" + (f" --where {condition}" if condition else "") + ": the export is empty")
    return result
