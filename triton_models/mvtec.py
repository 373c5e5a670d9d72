"""Reading a folder in the MVTec AD layout, synthetic or real.

    ROOT/train/good/*.png                 defect-free
    ROOT/test/good/*.png                  defect-free
    ROOT/test/<class>/*.png               defective, one class per folder
    ROOT/ground_truth/<class>/<stem>_mask.png   optional: without it, image labels only

Every image is resized to `size` x `size` (masks with nearest-neighbour), the tile size of
the model contract; or, with `size=None`, kept as the service sees it: an image of at most
256 x 256 is resized to 256 x 256 (the service's one tile), a larger one keeps its native
scale (the service cuts it into native-scale tiles), and all must then share one shape.
Any common image suffix is accepted (.png, .jpg, .bmp, .tif).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from inspectq.imaging import UndecodableImage, decode_image

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass
class Dataset:
    """Images (N,3,S,S) uint8 RGB; labels (N,) class index (0 = good); masks (N,S,S) class
    index per pixel, or None when the folder has no ground_truth/."""

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None
    classes: list[str]
    files: list[str]

    def subset(self, index: np.ndarray) -> Dataset:
        masks = None if self.masks is None else self.masks[index]
        return Dataset(self.images[index], self.labels[index], masks, self.classes,
                       [self.files[i] for i in index])


def defect_folders(root: Path) -> list[str]:
    test = root / "test"
    if not test.is_dir():
        raise FileNotFoundError(f"{test}: not found; expected the MVTec AD layout (test/<class>/)")
    return sorted(p.name for p in test.iterdir() if p.is_dir() and p.name != "good")


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)


TILE = 256  # the contract's tile size


def read_rgb(path: Path, size: int | None) -> np.ndarray:
    """(3,H,W) uint8 RGB, decoded as the service decodes uploads (EXIF orientation, 16-bit
    samples by their bit depth) and sized as the module docstring says."""
    try:
        rgb = decode_image(Path(path).read_bytes())
    except UndecodableImage as error:
        raise ValueError(f"{path}: {error}") from error
    if size is None and max(rgb.shape[:2]) <= TILE:
        rgb = cv2.resize(rgb, (TILE, TILE), interpolation=cv2.INTER_LINEAR)  # as the service
    elif size is not None and rgb.shape[:2] != (size, size):
        rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
    return rgb.transpose(2, 0, 1)


def _read_mask(root: Path, cls: str, image: Path, height: int, width: int) -> np.ndarray:
    path = root / "ground_truth" / cls / f"{image.stem}_mask.png"
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise FileNotFoundError(f"{path}: mask missing for {image}")
    if mask.shape != (height, width):
        mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    return mask > 127


def load(root: Path, classes: list[str] | None = None, size: int | None = 256,
         use_masks: bool = True) -> Dataset:
    """Load every image under `root`. `classes` fixes the class order (index 1.. = defect
    classes); by default the sorted folder names of test/. Masks are used when
    ground_truth/ exists and `use_masks` is true. `size=None`: as the service sees the
    images (see the module docstring)."""
    root = Path(root)
    found = defect_folders(root)
    classes = list(classes) if classes else found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ValueError(f"{root}: defect folders {unknown} are not in classes {classes}")
    with_masks = use_masks and (root / "ground_truth").is_dir()
    entries: list[tuple[Path, int, str | None]] = []
    for folder in (root / "train" / "good", root / "test" / "good"):
        entries += [(p, 0, None) for p in _images_in(folder)]
    for k, cls in enumerate(classes, start=1):
        entries += [(p, k, cls) for p in _images_in(root / "test" / cls)]
    if not entries:
        raise FileNotFoundError(f"{root}: no images found")
    first = read_rgb(entries[0][0], size)
    height, width = first.shape[1:]
    images = np.empty((len(entries), 3, height, width), np.uint8)
    labels = np.array([k for _, k, _ in entries], np.int64)
    masks = np.zeros((len(entries), height, width), np.uint8) if with_masks else None
    for i, (path, k, cls) in enumerate(tqdm(entries, desc=f"load {root.name}", unit="img")):
        image = first if i == 0 else read_rgb(path, size)
        if image.shape != first.shape:
            raise ValueError(f"{path}: {image.shape[2]}x{image.shape[1]}, but "
                             f"{entries[0][0]} is {width}x{height}; pass a --size to resize all")
        images[i] = image
        if masks is not None and cls is not None:
            masks[i][_read_mask(root, cls, path, height, width)] = k
    return Dataset(images, labels, masks, ["background", *classes],
                   [str(p.relative_to(root)) for p, _, _ in entries])


def split(data: Dataset, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (per label) train/held-out index split."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for label in np.unique(data.labels):
        idx = rng.permutation(np.flatnonzero(data.labels == label))
        n_held = round(len(idx) * fraction)
        held.append(idx[:n_held])
        train.append(idx[n_held:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))
