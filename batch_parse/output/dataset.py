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
models with other classes read the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from batch_parse.output.codec import decode_crop, decode_label_map, place_label_map
from batch_parse.output.layout import DATA_DIR
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

    def __getattr__(self, name: str):
        if name in ("dataset", "metadata", "output"):  # not set yet: never recurse
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
    schema = pa.unify_schemas([f.schema for f in output.files if f.schema is not None], promote_options="permissive")
    first = output.files[0]  # one model per data/ folder: any file's metadata describes them all
    schema = schema.with_metadata(first.schema.metadata if first.schema is not None else None)
    dataset = ds.dataset([f.path for f in output.files], schema=schema, format="parquet", filesystem=output.filesystem)
    return FaceDataset(dataset, first.metadata, output)


__all__ = ["FaceDataset", "open_output"]
