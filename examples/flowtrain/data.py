"""Integer image data sets, split into training, validation and test sets.

Every loader returns images as int64 tensors of shape (N, C, H, W) with values in
{0, ..., K - 1}. Nothing is downloaded: the digits and the two sample photos ship with
scikit-learn, and IDX files are read from a path the user gives.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flowtrain.errors import UsageError
from flowtrain.model import MAX_NUM_BINS

__all__ = [
    "IDX_UINT8_3D_MAGIC",
    "ImageSplits",
    "check_levels",
    "load_data",
    "load_digits_splits",
    "load_idx_splits",
    "load_photo_splits",
    "read_idx_images",
    "split_examples",
]

#: Magic number of an IDX file of unsigned bytes with 3 dimensions (images, rows, columns).
IDX_UINT8_3D_MAGIC = 0x00000803

#: The first two bytes of every gzip file (RFC 1952).
GZIP_MAGIC = b"\x1f\x8b"

#: Fixed seed of the random splits, so that every run uses the same test set.
SPLIT_SEED = 0

#: Fractions of the examples (or photo blocks) that go to the validation and test sets.
VALIDATION_FRACTION = 0.1
TEST_FRACTION = 0.1

_IDX_TYPE_NAMES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "short", 0x0C: "int", 0x0D: "float", 0x0E: "double"}


@dataclass(frozen=True)
class ImageSplits:
    """Training, validation and test images with their number of levels K."""

    name: str
    train: torch.Tensor
    validation: torch.Tensor
    test: torch.Tensor
    num_bins: int

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape (C, H, W) of one image."""
        return tuple(self.train.shape[1:])  # type: ignore[return-value]

    @property
    def num_dims(self) -> int:
        """Number of dimensions D = C * H * W of one image."""
        return math.prod(self.shape)


def split_counts(num_examples: int) -> tuple[int, int, int]:
    """Return the sizes of the training, validation and test sets for `num_examples` items."""
    num_validation = max(1, round(num_examples * VALIDATION_FRACTION))
    num_test = max(1, round(num_examples * TEST_FRACTION))
    return num_examples - num_validation - num_test, num_validation, num_test


def split_examples(images: torch.Tensor, source: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split images at random, with the fixed `SPLIT_SEED`, into 80/10/10 percent sets.

    Raises:
        UsageError: If there are fewer than 3 images, one for each set.
    """
    if len(images) < 3:
        raise UsageError(
            f"{source} contains {len(images)} images; the program needs at least 3 (one each for "
            f"training, validation and test). Pass a file with more images."
        )
    num_train, num_validation, _ = split_counts(len(images))
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SPLIT_SEED))
    train = images[order[:num_train]]
    validation = images[order[num_train : num_train + num_validation]]
    test = images[order[num_train + num_validation :]]
    return train, validation, test


def load_digits_splits() -> ImageSplits:
    """Load scikit-learn's 1,797 digits, 8x8 images with 17 levels (0 to 16)."""
    from sklearn.datasets import load_digits

    images = torch.as_tensor(load_digits().images, dtype=torch.int64).unsqueeze(1)
    train, validation, test = split_examples(images, "the digits data set")
    return ImageSplits("digits", train, validation, test, num_bins=17)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """Convert uint8 RGB to 8-bit gray levels with the ITU-R BT.601 weights, rounded."""
    gray = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return np.clip(np.rint(gray), 0, 255).astype(np.uint8)


def load_photo_splits(patch_size: int = 8, *, grayscale: bool = False) -> ImageSplits:
    """Cut scikit-learn's two sample photos (427x640 RGB, 8 bits) into square patches.

    Each photo is tiled with blocks of 4 x 4 patches, and whole blocks are assigned at random
    (fixed seed) to the training, validation and test sets, 80/10/10 percent. Patches do not
    overlap, and every patch lies inside one block, so no test patch shares a pixel with a
    training patch. The strip of rows or columns that does not fill a block is dropped.

    Raises:
        UsageError: If `patch_size` is not an integer from 2 to 32.
    """
    if not 2 <= patch_size <= 32:
        raise UsageError(f"--patch-size must be an integer from 2 to 32 pixels, got {patch_size}")
    from sklearn.datasets import load_sample_images

    block = 4 * patch_size
    blocks = []
    for photo in load_sample_images().images:
        pixels = _luma(photo)[..., None] if grayscale else photo
        rows, columns = pixels.shape[0] // block, pixels.shape[1] // block
        tiles = pixels[: rows * block, : columns * block]
        tiles = tiles.reshape(rows, block, columns, block, -1).transpose(0, 2, 1, 3, 4)
        blocks.append(tiles.reshape(rows * columns, block, block, -1))
    all_blocks = np.concatenate(blocks)

    def to_patches(selected: np.ndarray) -> torch.Tensor:
        count, channels = len(selected), selected.shape[-1]
        patches = selected.reshape(count, 4, patch_size, 4, patch_size, channels)
        patches = patches.transpose(0, 1, 3, 5, 2, 4).reshape(count * 16, channels, patch_size, patch_size)
        return torch.as_tensor(np.ascontiguousarray(patches), dtype=torch.int64)

    num_train, num_validation, _ = split_counts(len(all_blocks))
    order = torch.randperm(len(all_blocks), generator=torch.Generator().manual_seed(SPLIT_SEED)).numpy()
    train = to_patches(all_blocks[order[:num_train]])
    validation = to_patches(all_blocks[order[num_train : num_train + num_validation]])
    test = to_patches(all_blocks[order[num_train + num_validation :]])
    name = f"photos-{'gray' if grayscale else 'rgb'}-{patch_size}x{patch_size}"
    return ImageSplits(name, train, validation, test, num_bins=256)


def _gunzip(compressed: bytes, where: str) -> bytes:
    """Decompress gzip data; `where` names the file in the error message.

    Raises:
        UsageError: If the data are truncated or corrupt (a bad header, an invalid deflate
            stream or a failed CRC-32 or length check).
    """
    try:
        return gzip.decompress(compressed)
    except EOFError:
        problem = "the file is truncated: its gzip stream ends early"
    except (OSError, zlib.error) as error:
        # gzip raises BadGzipFile, an OSError, for a bad header or checksum, and zlib.error
        # for an invalid deflate stream.
        problem = f"the file is corrupt: its gzip data are invalid ({error})"
    raise UsageError(
        f"{where}: {problem}. Copy or download the file again, or pass the uncompressed IDX file."
    )


def read_idx_images(path: str | Path) -> torch.Tensor:
    """Read an IDX file of uint8 images (magic number 0x00000803), plain or gzip-compressed.

    The header is the 4-byte magic number and three big-endian uint32 sizes (images, rows,
    columns), followed by images * rows * columns bytes of pixels, as in the MNIST files.

    Returns:
        The images, shape (N, 1, rows, columns), dtype int64.

    Raises:
        UsageError: If the file is missing or unreadable, is not a uint8 3-D IDX file, or its
            size does not match its header.
    """
    path = Path(path)
    where = f"--idx-images {str(path)!r}"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{where}: file not found. Pass the path of an IDX image file such as train-images-idx3-ubyte.") from None
    except IsADirectoryError:
        raise UsageError(f"{where} is a folder. Pass the path of an IDX image file.") from None
    except OSError as error:
        raise UsageError(f"{where}: cannot read the file ({error.strerror or error}). Check the path and the file's permissions.") from None
    if raw[:2] == GZIP_MAGIC:
        raw = _gunzip(raw, where)

    if len(raw) < 4:
        raise UsageError(
            f"{where}: the file is {len(raw)} bytes long, shorter than the 16-byte header of a "
            f"uint8 3-D IDX file. The file is truncated or not an IDX file."
        )
    (magic,) = struct.unpack(">I", raw[:4])
    if magic != IDX_UINT8_3D_MAGIC:
        described = ""
        if magic >> 16 == 0 and (magic >> 8) & 0xFF in _IDX_TYPE_NAMES:
            described = f" (IDX {_IDX_TYPE_NAMES[(magic >> 8) & 0xFF]} data with {magic & 0xFF} dimensions)"
        raise UsageError(
            f"{where}: invalid magic number 0x{magic:08x}{described}; expected 0x{IDX_UINT8_3D_MAGIC:08x}, "
            f"the magic number of uint8 images with 3 dimensions. Pass an IDX image file such as "
            f"train-images-idx3-ubyte, not a label file or another format."
        )
    if len(raw) < 16:
        raise UsageError(
            f"{where}: the file is {len(raw)} bytes long, shorter than the 16-byte header of a "
            f"uint8 3-D IDX file. The file is truncated; copy it again."
        )
    count, rows, columns = struct.unpack(">III", raw[4:16])
    if count == 0 or rows < 2 or columns < 2:
        raise UsageError(
            f"{where}: the header gives {count} images of {rows}x{columns} pixels; the program "
            f"needs at least one image of at least 2x2 pixels."
        )

    expected = count * rows * columns
    found = len(raw) - 16
    if found != expected:
        state = "truncated" if found < expected else "longer than its header says"
        raise UsageError(
            f"{where}: the file is {state}: its header gives {count} images of {rows}x{columns} "
            f"pixels ({expected} bytes after the 16-byte header), but {found} bytes follow. "
            f"Download or copy the file again."
        )
    pixels = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(count, 1, rows, columns)
    return torch.as_tensor(pixels.astype(np.int64))


def load_idx_splits(path: str | Path) -> ImageSplits:
    """Load an IDX image file with 256 levels and split it 80/10/10 percent at random."""
    images = read_idx_images(path)
    train, validation, test = split_examples(images, f"--idx-images {str(path)!r}")
    return ImageSplits(f"idx:{Path(path).name}", train, validation, test, num_bins=256)


def check_levels(splits: ImageSplits, num_bins: int, option: str = "--num-bins") -> None:
    """Check that every value lies in {0, ..., num_bins - 1}.

    Raises:
        UsageError: If a value is negative or >= `num_bins`.
    """
    for part, images in (("training", splits.train), ("validation", splits.validation), ("test", splits.test)):
        low, high = int(images.min()), int(images.max())
        if low < 0 or high >= num_bins:
            bad = high if high >= num_bins else low
            raise UsageError(
                f"the {part} images of {splits.name} contain the value {bad}, outside "
                f"{{0, ..., {num_bins - 1}}} for {option} {num_bins}. Pass {option} {high + 1} "
                f"or more, or quantize the data to {num_bins} levels."
            )


def num_bins_range_problem(num_bins: int) -> str:
    """Describe what is wrong with a number of levels K outside 2 to `MAX_NUM_BINS`, and the fix."""
    problem = f"expected an integer from 2 to {MAX_NUM_BINS}, got {num_bins}"
    if num_bins > MAX_NUM_BINS:
        problem += (
            f". The flow computes in float32, whose spacing near {num_bins} is too coarse to keep "
            f"the dequantization noise inside bins that fine. Quantize the data to at most "
            f"{MAX_NUM_BINS} levels."
        )
    return problem


def load_data(
    dataset: str,
    *,
    idx_images: str | None = None,
    patch_size: int = 8,
    grayscale: bool = False,
    num_bins: int | None = None,
) -> ImageSplits:
    """Load and validate the data set named by the command-line options.

    Args:
        dataset: "digits", "photos" or "idx".
        idx_images: Path of the IDX image file, for "idx".
        patch_size: Side of the square photo patches, in pixels, for "photos".
        grayscale: Whether photo patches are converted to gray levels (1 channel).
        num_bins: The number of levels K; by default that of the data set (17 for the digits,
            256 for photos and IDX files).

    Raises:
        UsageError: If the data cannot be loaded or contain values outside {0, ..., K - 1}.
    """
    if dataset == "digits":
        splits = load_digits_splits()
    elif dataset == "photos":
        splits = load_photo_splits(patch_size, grayscale=grayscale)
    elif dataset == "idx":
        if idx_images is None:
            raise UsageError("--dataset idx needs --idx-images PATH, the IDX image file to train on")
        splits = load_idx_splits(idx_images)
    else:
        raise UsageError(f"invalid --dataset {dataset!r}; choose digits, photos or idx")

    if num_bins is not None:
        if not 2 <= num_bins <= MAX_NUM_BINS:
            raise UsageError(f"--num-bins: {num_bins_range_problem(num_bins)}")
        check_levels(splits, num_bins)
        splits = ImageSplits(splits.name, splits.train, splits.validation, splits.test, num_bins)
    else:
        check_levels(splits, splits.num_bins)
    return splits
