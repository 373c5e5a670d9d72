"""How an image becomes model input, and the tile scores an image score: one copy of the rule,
used by the workers (stage 3, ``preprocess``, and the image score of ``postprocess``), the
trainer and ``inspectq model evaluate`` (``triton_models.evaluate``), so a model is measured
on exactly the tiles the service sends it.

Decoding normalizes every supported file (JPEG, PNG, BMP, TIFF; grayscale, RGB, RGBA, 8 or
16 bit unsigned samples) to 8-bit RGB, because the model contract takes RGB 0..255:

* **Upright.** The file's EXIF orientation (a camera held sideways writes orientation 6 and
  stores the raster as the sensor read it) is applied, so the model sees the part upright and
  sizes, boxes and the mask are in upright pixels.
* **16-bit samples by their real bit depth.** Cameras store 10, 12 or 14-bit data in 16-bit
  files. Dividing by 65535 would squeeze 12-bit data into 0..15 (a nearly black image the
  model passes), so the bit depth is taken as the smallest of 9..16 bits whose range holds
  the image's largest sample (:func:`sample_bits`), and samples are scaled by that range:
  max 4095 or less means 12-bit data, scaled by 4095. A 16-bit exposure that happens to stay
  below 4096 is scaled the same way (brightened); 8-bit images are never stretched.

The model only ever sees tiles of exactly ``tile_size`` x ``tile_size`` so that requests of
all workers batch together in Triton. How an image becomes tiles:

* **Small images** (both sides <= ``tile_size``) are resized to one tile; the outputs are
  resized back to the original size.
* **Larger images** are cut into overlapping tiles, ``tile_stride`` apart, with the last tile
  of each row and column moved back to end exactly at the image edge, so every pixel is
  covered and no tile reads past the image. A side shorter than a tile (e.g. 200 x 1600) is
  first padded by mirroring up to ``tile_size``; the padding is cropped off after stitching.

Outputs are stitched back (:func:`stitch`) where tiles overlap by two rules:

* ``defect_prob`` is a **weighted mean** over the tiles covering the pixel, each tile's
  weight falling linearly from its centre to its edges (:func:`tile_weights`): where two
  tiles disagree, the heatmap passes from one to the other across their overlap instead of
  jumping where a tile begins (a plain mean leaves a visible seam there);
* ``class_map`` is the class of the covering tile that is **most sure** the pixel is
  defective (highest ``defect_prob``), so a defect seen well by one tile is not erased by a
  neighbour that sees it only at its border.

The image score is the **max** over tiles of ``image_score``: a part is as bad as its worst
tile, and a defect shown whole by one tile is not diluted by the clean tiles around it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from inspectq.tiling import tile_starts


class UndecodableImage(Exception):
    """The bytes are not an image OpenCV can read, or of an unsupported pixel type."""


def sample_bits(max_sample: int) -> int:
    """The bit depth of 16-bit samples whose largest value is ``max_sample``: the smallest of
    9..16 bits whose range holds it (511 -> 9, 4095 -> 12, 4096 -> 13, 65535 -> 16).
    ``api/overlay.py`` applies the same rule to Pillow images (the API needs no OpenCV)."""
    return max(9, int(max_sample).bit_length())


def decode_image(data: bytes) -> np.ndarray:
    """Decode ``data`` to an ``(H, W, 3)`` uint8 RGB array, upright.

    16-bit samples are scaled to 8 bit over their real bit depth (see the module docstring);
    alpha is dropped. Multi-page TIFFs give their first page.
    """
    if not data:
        raise UndecodableImage("the file is empty")
    try:
        # Any flags but IMREAD_UNCHANGED make OpenCV apply the EXIF orientation; ANYDEPTH
        # keeps 16-bit samples, ANYCOLOR keeps grey as one channel (and drops alpha).
        raw = cv2.imdecode(np.frombuffer(data, dtype=np.uint8),
                           cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    except cv2.error as error:
        raise UndecodableImage(f"OpenCV could not decode the file: {error}") from error
    if raw is None or raw.size == 0:
        raise UndecodableImage("the file is not an image in a supported format")
    if raw.dtype == np.uint16:
        full = 2 ** sample_bits(int(raw.max())) - 1
        raw = ((raw.astype(np.uint32) * 255 + full // 2) // full).astype(np.uint8)
    elif raw.dtype != np.uint8:
        raise UndecodableImage(f"unsupported pixel type {raw.dtype}")
    if raw.ndim == 2:
        return cv2.cvtColor(raw, cv2.COLOR_GRAY2RGB)
    channels = raw.shape[2]
    if channels == 3:
        return cv2.cvtColor(raw, cv2.COLOR_BGR2RGB)
    raise UndecodableImage(f"unsupported channel count {channels}")


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


def image_score(tile_scores: np.ndarray) -> float:
    """The image's defect score: the max over its tiles (see the module docstring)."""
    return float(np.max(tile_scores))


def stitch(
    layout: ModelInput, class_maps: np.ndarray, defect_probs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Full-image ``(class_map uint8, defect_prob float32)``, both ``(height, width)``."""
    if layout.resized:
        size = (layout.width, layout.height)
        class_map = cv2.resize(class_maps[0], size, interpolation=cv2.INTER_NEAREST)
        prob = cv2.resize(defect_probs[0].astype(np.float32), size,
                          interpolation=cv2.INTER_LINEAR)
        return class_map, prob
    tile = class_maps.shape[1]
    weights = tile_weights(tile)
    prob_sum = np.zeros(layout.padded_shape, np.float32)
    weight_sum = np.zeros(layout.padded_shape, np.float32)
    best_prob = np.full(layout.padded_shape, -1.0, np.float32)
    class_map = np.zeros(layout.padded_shape, np.uint8)
    for (y, x), tile_classes, tile_prob in zip(
        layout.origins, class_maps, defect_probs, strict=True
    ):
        window = (slice(y, y + tile), slice(x, x + tile))
        prob_sum[window] += weights * tile_prob
        weight_sum[window] += weights
        better = tile_prob > best_prob[window]
        best_prob[window] = np.where(better, tile_prob, best_prob[window])
        class_map[window] = np.where(better, tile_classes, class_map[window])
    crop = (slice(0, layout.height), slice(0, layout.width))
    return class_map[crop], (prob_sum / weight_sum)[crop]


def tile_weights(tile: int) -> np.ndarray:
    """(tile, tile) stitching weights: the product of each axis's distance to the nearer
    edge (1 at the edge pixels, tile / 2 at the centre). Never 0, so a pixel only one tile
    covers (the image's border) keeps that tile's value."""
    ramp = np.minimum(np.arange(1, tile + 1), np.arange(tile, 0, -1)).astype(np.float32)
    return np.outer(ramp, ramp)
