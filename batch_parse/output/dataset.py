"""`batch_parse.open_output(path)`: an output's face rows as a pyarrow dataset, decodable in one call.

    faces = batch_parse.open_output("labels/")              # or parse_location("s3://bucket/labels", endpoint_url=...)
    table = faces.to_table(columns=["key", "face_index", "mouth_confidence"])   # any pyarrow Dataset call
    row = faces.head(1).to_pylist()[0]
    faces.label_map(row)                                      # (h, w) uint8 class indices of the face's region
    faces.photo_label_map(row)                                # the same placed in its photo: (height, width)
    faces.crop(row, "mouth")                                  # (h, w, 3) uint8 RGB
    faces.to_ray(); faces.to_hf()                             # Ray Data / Hugging Face datasets, images decoded

Only files batch-parse wrote are in it (foreign Parquet files are left out, and listed in
`foreign`); the class names and colours come from the files' own metadata, so outputs of
models with other classes read the same way. Images with only some of their faces in data/ (a
run killed while it published its files: the next run redoes them) are left out, counted in
`incomplete_images`, with a warning: a reader never sees a 4-face photo as a 3-face one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import warnings

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from batch_parse.output.codec import decode_crop, decode_label_map, place_label_map
from batch_parse.output.layout import DATA_DIR, STATE_DIR
from batch_parse.output.reader import Output
from batch_parse.output.reader import open_output as _scan
from batch_parse.output.schema import file_class_colors, file_class_names
from batch_parse.storage.location import Location


@dataclass
class FaceDataset:
    """The face rows of one output. Unknown attributes are the pyarrow Dataset's own (`to_table`,
    `scanner`, `count_rows`, `head`, `schema`, `filter`, ...)."""

    dataset: ds.Dataset
    metadata: dict  # batch_parse metadata of the files: class_names, class_colors, parts, model, ...
    output: Output
    incomplete_ids: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # left out: a torn output

    @property
    def incomplete_images(self) -> int:
        """Images left out because only some of their faces are in the output (the next run redoes them)."""
        return len(self.incomplete_ids)

    def __getattr__(self, name: str):
        if name in ("dataset", "metadata", "output", "incomplete_ids"):  # not set yet: never recurse
            raise AttributeError(name)
        return getattr(self.dataset, name)

    @property
    def files(self) -> list[str]:
        return [f.path for f in self.output.files]

    @property
    def foreign(self) -> list[str]:
        return list(self.output.foreign)

    @property
    def class_names(self) -> list[str]:
        return list(file_class_names(self.metadata))  # files from before the key existed: their 9 classes

    @property
    def class_colors(self) -> list[tuple[int, int, int]]:
        return [tuple(c) for c in file_class_colors(self.metadata)]

    def label_map(self, row: dict) -> np.ndarray | None:
        """The face's label map, (h, w) uint8 class indices over its region (place it at label_map_x/_y)."""
        return None if not row.get("label_map") else decode_label_map(row["label_map"])

    def photo_label_map(self, row: dict) -> np.ndarray | None:
        """The face's label map placed in its photo's pixels, (height, width); None for rows without one."""
        face = self.label_map(row)
        if face is None:
            return None
        return place_label_map(face, row["label_map_x"], row["label_map_y"], row["height"], row["width"])

    def crop(self, row: dict, part: str) -> np.ndarray | None:
        """The part's crop (e.g. "mouth", "eye_1"), (h, w, 3) uint8 RGB; None where the window was off the frame."""
        data = row.get(f"{part}_crop")
        return None if not data else decode_crop(data)

    def to_ray(self, columns: Sequence[str] | None = None):
        """A Ray Data dataset of the same files (label maps and crops stay bytes: decode them in map_batches)."""
        import ray

        dataset = ray.data.read_parquet(self.files, filesystem=self.output.filesystem)
        if self.incomplete_images:
            torn = set(self.incomplete_ids.tolist())
            dataset = dataset.filter(lambda row: row["id"] not in torn)
        return dataset.select_columns(list(columns)) if columns else dataset

    def to_hf(self, columns: Sequence[str] | None = None):
        """A Hugging Face `datasets.Dataset`: `label_map` and the crops as Image features (PIL images on access),
        `status` and the class names as metadata. Reads the rows into memory: select columns for big outputs."""
        try:
            import datasets
        except ImportError:
            raise ImportError("to_hf needs Hugging Face datasets: pip install 'batch-parse[export]'") from None
        table = self.dataset.to_table(columns=list(columns) if columns else None)
        images = [name for name in table.column_names if name == "label_map" or name.endswith("_crop")]
        for name in images:
            column = table[name].combine_chunks()
            struct = pa.StructArray.from_arrays([column, pa.nulls(len(column), pa.string())], names=["bytes", "path"],
                                                mask=column.is_null())
            table = table.set_column(table.schema.get_field_index(name), name, struct)
        dataset = datasets.Dataset(table)
        for name in images:
            dataset = dataset.cast_column(name, datasets.Image())
        dataset.info.description = f"batch-parse face rows; classes (label_map pixel values): {', '.join(self.class_names)}"
        return dataset


def open_output(path: str | Location) -> FaceDataset:
    """The face rows of the output at `path` (the folder given to `batch-parse run`, or its data/ folder).

    ValueError (one line) if there are none; StorageError if the store cannot be read.
    """
    output = _scan(path if isinstance(path, Location) else path.rstrip("/"))
    data_root = output.location.fs_path(DATA_DIR)
    if any(f.path.startswith(data_root + "/") for f in output.files):
        # OUTPUT given: its data/ is the dataset (older per-model folders beside it are not this model's rows).
        output.files = [f for f in output.files if f.path.startswith(data_root + "/")]
        output.corrections = [c for c in output.corrections if c.startswith(data_root + "/")]
    schema = pa.unify_schemas([f.schema for f in output.files if f.schema is not None], promote_options="permissive")
    first = output.files[0]  # one model per data/ folder: any file's metadata describes them all
    schema = schema.with_metadata(first.schema.metadata if first.schema is not None else None)
    dataset = ds.dataset([f.path for f in output.files], schema=schema, format="parquet", filesystem=output.filesystem)
    if output.corrections:
        warnings.warn(f"{output.location.uri}: left out {len(output.corrections)} file(s) of human corrections among the "
                      f"model's rows (e.g. {output.relative(output.corrections[0])}): move them out of data/ and open them "
                      "on their own", stacklevel=2)
    torn = _torn(output)
    if torn.size:
        dataset = dataset.filter(~pc.field("id").isin(pa.array(torn, pa.int64())))
        warnings.warn(f"{output.location.uri}: {torn.size} image(s) have only some of their faces in the output (a run was "
                      "interrupted while publishing): left out; the next run of the same command completes them",
                      stacklevel=2)
    return FaceDataset(dataset, first.metadata, output, torn)


def _torn(output: Output) -> np.ndarray:
    """Ids of the images the output holds only in part (commit.torn_images), for its data folder."""
    from batch_parse.pipeline.commit import torn_images

    location = output.location
    if [f.path for f in output.files] == [location.fs_path()]:
        return np.empty(0, np.int64)  # one file given: nothing beside it to complete its images
    data_dir = location.fs_path(DATA_DIR)
    if any(f.path.startswith(data_dir + "/") for f in output.files):
        return torn_images(output.filesystem, data_dir, location.fs_path(STATE_DIR, "index"))
    root = location.fs_path()  # the data folder itself, or a folder of data files
    parent = root.rsplit("/", 1)[0] if root.rsplit("/", 1)[-1] == DATA_DIR else root
    return torn_images(output.filesystem, root, f"{parent}/{STATE_DIR}/index")


__all__ = ["FaceDataset", "open_output"]
