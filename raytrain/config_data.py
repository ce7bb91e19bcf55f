"""The experiment YAML's `data` section (and `Strict`, the base every section shares), kept apart from
raytrain.config so neither file grows past a screenful; raytrain.config imports both back, so
`from raytrain.config import DataConfig` is the one way to name them.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class AugmentConfig(Strict):
    """The standard speed-recipe augmentations, on the training split only, applied on the worker's device to
    whole batches (`raytrain.techniques.augment`), seeded by (seed, epoch, rank)."""
    crop: int = Field(0, ge=0)
    """Random crop back to the image size after zero-padding each side by this many pixels (0: off)."""
    flip: bool = False
    """Random horizontal flip (half of the images)."""
    resized_crop: Optional[tuple[float, float]] = None
    """Random-resized crop: the area fraction's range, e.g. [0.35, 1.0] (aspect 3/4..4/3), resized back."""
    cutout: int = Field(0, ge=0)
    """Zero a random square of this side in each image (0: off)."""

    @field_validator("resized_crop")
    @classmethod
    def _scale(cls, v):
        if v is not None and not 0.0 < v[0] <= v[1] <= 1.0:
            raise ValueError(f"needs 0 < min <= max <= 1 (got {list(v)})")
        return v

    def enabled(self) -> bool:
        return bool(self.crop or self.flip or self.resized_crop or self.cutout)


class DataConfig(Strict):
    """Which data, where it is, and how workers get it (materialised or streamed)."""
    dataset: Literal["digits", "mnist", "parquet", "images"] = "digits"
    """digits: sklearn's bundled 8x8 digits (offline). mnist: the standard IDX files (downloaded when
    missing). parquet: a user Parquet file or directory at `path`. images: an ImageFolder tree at `path`
    (`train/<class>/<image>` beside `val/<class>/<image>`, or `<class>/<image>`; classes are the folder
    names, sorted)."""
    path: Optional[str] = None
    """mnist: the IDX folder (default `$RAYTRAIN_DATA/mnist`, else `~/.cache/raytrain/mnist`). parquet: a
    file, folder or URI (`s3://`, `gs://`, any pyarrow/fsspec filesystem). images: the tree's folder or URI."""
    features: str = "image"
    """Parquet: feature column: fixed-shape arrays or lists of numbers, or encoded images (PNG/JPEG bytes, as
    a binary column or the Hugging Face `{bytes, path}` struct)."""
    label: str = "label"
    """Parquet: class-label column: integer class ids, or class names (strings: ids in sorted order, the
    list recorded in the run)."""
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    """Fraction of the training data held out for validation, seeded by `seed` (mnist: of its 60,000 training
    images; streamed Parquet holds out whole files). Searches and early stopping read this split."""
    val_path: Optional[str] = None
    """Parquet / images: a separate validation set (same layout) instead of holding out `val_fraction`."""
    test_path: Optional[str] = None
    """Parquet / images: a separate test set (same layout as `val_path`), read once at the end of a run and
    reported as `test_accuracy`. mnist's test set is always its official 10,000 images; digits has none."""
    shape: Optional[list[int]] = None
    """Parquet: reshape flat feature lists to this per-example shape, e.g. [1, 28, 28] (default: as stored)."""
    image_size: Optional[Union[int, list[int]]] = None
    """Encoded images: resize every image to this size (an int for square, or [height, width]; PIL,
    bilinear) as it is decoded (default: as stored, and every image must have the first one's size)."""
    channels: Optional[Literal[1, 3]] = None
    """Encoded images: convert every image to grayscale (1) or RGB (3) (default: the first image decides:
    grayscale modes give 1, everything else 3)."""
    num_classes: Optional[int] = Field(None, ge=2)
    """Parquet: number of classes (default: the label column's largest value + 1, from Parquet statistics)."""
    upscale: int = Field(1, ge=1, le=8)
    """digits only: repeat each pixel this many times per side (8x8 -> 32x32 at 4), a heavier benchmark task."""
    ingest: Literal["auto", "materialize", "stream"] = "auto"
    """materialize: decode once on the driver, hand workers ready blocks (a worker in the calling process reads it
    as arrays). stream: Ray Data reads and decodes
    Parquet while training (the driver never holds the table). auto: materialize up to `materialize_max_mb`."""
    materialize_max_mb: float = Field(2048.0, gt=0.0)
    """auto: the largest dataset (uncompressed size in its Parquet metadata; decoded size for images) that
    is materialised."""
    stream_cpus: float = Field(1.0, gt=0.0)
    """stream: CPUs reserved for Ray Data's read and decode tasks beside the training workers."""
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    """Training-split augmentation (off by default), e.g. `{crop: 4, flip: true}`."""
    device_cache: Union[Literal["auto"], bool] = "auto"
    """Keep each worker's training shard on its device as stored (uint8 stays uint8) and cut shuffled
    batches there. auto: on a GPU when the shard fits in a quarter of its free memory; never on a CPU."""

    @field_validator("test_path")
    @classmethod
    def _test_set(cls, v, info):
        dataset = info.data.get("dataset")
        if v is not None and dataset in ("digits", "mnist"):
            has = "its official test set is used" if dataset == "mnist" else "it has no test set"
            raise ValueError(f"parquet and images datasets only ({dataset}: {has}); remove data.test_path")
        return v

    @field_validator("image_size")
    @classmethod
    def _size(cls, v):
        sizes = [v] if isinstance(v, int) else v
        if v is not None and (len(sizes) not in (1, 2) or min(sizes) < 1):
            raise ValueError("give one positive int or [height, width]")
        return v[0] if isinstance(v, list) and len(v) == 1 else v
