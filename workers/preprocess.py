"""Stage 3: decode the image and cut it into model input tiles.

Decoding normalizes every supported file (JPEG, PNG, BMP, TIFF; grayscale, RGB, RGBA, 8 or
16 bit) to 8-bit RGB, because the model contract takes RGB 0..255.

The model only ever sees tiles of exactly ``tile_size`` x ``tile_size`` so that requests of
all workers batch together in Triton. How an image becomes tiles:

* **Small images** (both sides <= ``tile_size``) are resized to one tile; the outputs are
  resized back to the original size.
* **Larger images** are cut into overlapping tiles, ``tile_stride`` apart, with the last tile
  of each row and column moved back to end exactly at the image edge, so every pixel is
  covered and no tile reads past the image. A side shorter than a tile (e.g. 200 x 1600) is
  first padded by mirroring up to ``tile_size``; the padding is cropped off after stitching.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


class UndecodableImage(Exception):
    """The bytes are not an image OpenCV can read, or of an unsupported pixel type."""


def decode_image(data: bytes) -> np.ndarray:
    """Decode ``data`` to an ``(H, W, 3)`` uint8 RGB array.

    16-bit samples are scaled to 8 bit over their full range (divided by 257); alpha is
    dropped. Multi-page TIFFs give their first page.
    """
    if not data:
        raise UndecodableImage("the file is empty")
    try:
        raw = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as error:
        raise UndecodableImage(f"OpenCV could not decode the file: {error}") from error
    if raw is None or raw.size == 0:
        raise UndecodableImage("the file is not an image in a supported format")
    if raw.dtype == np.uint16:
        raw = ((raw.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif raw.dtype != np.uint8:
        raise UndecodableImage(f"unsupported pixel type {raw.dtype}")
    if raw.ndim == 2:
        return cv2.cvtColor(raw, cv2.COLOR_GRAY2RGB)
    channels = raw.shape[2]
    if channels == 1:
        return cv2.cvtColor(raw[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(raw, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(raw, cv2.COLOR_BGRA2RGB)
    raise UndecodableImage(f"unsupported channel count {channels}")


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets along one side of ``length`` >= ``tile``: every ``stride``, plus one
    final tile flush with the end when the strides do not land on it exactly."""
    if length < tile:
        raise ValueError("pad the side to at least one tile first")
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


@dataclass(frozen=True)
class ModelInput:
    """Tiles for the model and how to put their outputs back in original image pixels.

    ``tiles`` is ``(N, 3, tile, tile)`` uint8, channel-first as the contract wants.
    ``origins`` are the tiles' ``(y, x)`` in the padded image; ``resized`` says the image was
    resized to one tile instead. ``padded_shape`` is the ``(H, W)`` the tiles cover.
    """

    tiles: np.ndarray
    origins: list[tuple[int, int]]
    height: int
    width: int
    padded_shape: tuple[int, int]
    resized: bool


def make_model_input(image: np.ndarray, tile: int, stride: int) -> ModelInput:
    """Turn an ``(H, W, 3)`` RGB image into model tiles (see the module docstring)."""
    height, width = image.shape[:2]
    if height <= tile and width <= tile:
        one = cv2.resize(image, (tile, tile), interpolation=cv2.INTER_LINEAR)
        return ModelInput(
            tiles=one.transpose(2, 0, 1)[np.newaxis].copy(),
            origins=[(0, 0)],
            height=height,
            width=width,
            padded_shape=(tile, tile),
            resized=True,
        )
    pad_y, pad_x = max(0, tile - height), max(0, tile - width)
    padded = cv2.copyMakeBorder(image, 0, pad_y, 0, pad_x, cv2.BORDER_REFLECT)
    padded_h, padded_w = padded.shape[:2]
    origins = [
        (y, x)
        for y in tile_starts(padded_h, tile, stride)
        for x in tile_starts(padded_w, tile, stride)
    ]
    tiles = np.stack([padded[y:y + tile, x:x + tile].transpose(2, 0, 1) for y, x in origins])
    return ModelInput(
        tiles=np.ascontiguousarray(tiles),
        origins=origins,
        height=height,
        width=width,
        padded_shape=(padded_h, padded_w),
        resized=False,
    )
