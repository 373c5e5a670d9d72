"""The pure stages on real arrays: decode, tiling, stitching, regions, decisions, PNGs."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from inspectq.imaging import UndecodableImage, decode_image, image_score, make_model_input, stitch
from inspectq.result import Decision, Thresholds, decide
from inspectq.tiling import tile_starts
from workers.postprocess import find_regions
from workers.render import HEATMAP_MAX_SIDE, heatmap_png, mask_png

CLASSES = ("background", "scratch", "pit")


def _encode(ext: str, array: np.ndarray) -> bytes:
    ok, data = cv2.imencode(ext, array)
    assert ok
    return data.tobytes()


# --- decode -------------------------------------------------------------------------------

@pytest.mark.parametrize("ext", [".png", ".bmp", ".tiff"])
def test_decode_colour_is_rgb_in_lossless_formats(ext: str) -> None:
    bgr = np.zeros((5, 7, 3), np.uint8)
    bgr[..., 0] = 10  # blue
    bgr[..., 2] = 200  # red
    rgb = decode_image(_encode(ext, bgr))
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 0] == 200).all() and (rgb[..., 2] == 10).all()


def test_decode_jpeg_grayscale_rgba_and_16_bit() -> None:
    gray = np.full((8, 9), 77, np.uint8)
    assert (decode_image(_encode(".jpg", gray)) == 77).all()
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 1] = 150
    rgba[..., 3] = 0  # fully transparent: alpha is dropped, colour kept
    assert decode_image(_encode(".png", rgba))[..., 1].tolist() == [[150] * 4] * 4
    deep = np.array([[0, 257, 65535, 32768]], np.uint16)
    out = decode_image(_encode(".png", deep))
    assert out.shape == (1, 4, 3) and out[0, :, 0].tolist() == [0, 1, 255, 128]
    deep_tiff = np.full((3, 3, 3), 65535, np.uint16)
    assert (decode_image(_encode(".tiff", deep_tiff)) == 255).all()


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"0" * 20])
def test_decode_rejects_non_images(data: bytes) -> None:
    with pytest.raises(UndecodableImage):
        decode_image(data)


def _with_orientation(rgb: np.ndarray, fmt: str, orientation: int) -> bytes:
    """``rgb`` stored as is, with an EXIF orientation tag (as a camera held sideways writes)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, fmt, exif=exif, **({"quality": 100} if fmt == "JPEG" else {}))
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize(("orientation", "turns"), [(6, -1), (8, 1), (3, 2)])
def test_decode_applies_the_exif_orientation(fmt: str, orientation: int, turns: int) -> None:
    """Orientation 6: the camera was turned, the raster is stored 90 degrees counter-clockwise
    of upright; the model must see it turned back (``turns`` quarter turns, as np.rot90)."""
    stored = np.full((48, 64, 3), 60, np.uint8)  # landscape, as the sensor read it
    stored[4:20, 8:40] = 230  # a bright block near the stored top-left corner
    rgb = decode_image(_with_orientation(stored, fmt, orientation))
    expected = np.rot90(stored, k=turns)
    assert rgb.shape == expected.shape
    assert np.abs(rgb.astype(int) - expected).max() <= (16 if fmt == "JPEG" else 0)


@pytest.mark.parametrize(("bits", "ext"), [(10, ".png"), (12, ".png"), (12, ".tiff"), (14, ".png")])
def test_decode_scales_16_bit_samples_by_their_real_bit_depth(bits: int, ext: str) -> None:
    """12-bit data in a 16-bit file spans 0..4095: it is scaled by 4095, not 65535."""
    full = 2 ** bits - 1
    grey = np.array([[0, (full + 1) // 2, full, full // 4]], np.uint16)
    assert decode_image(_encode(ext, grey))[0, :, 0].tolist() == [
        round(v * 255 / full) for v in grey[0].tolist()]
    colour = np.zeros((2, 2, 3), np.uint16)
    colour[0, 0] = (0, 0, full)  # BGR: a full red sample
    colour[1, 1] = (full // 2, 0, 0)
    rgb = decode_image(_encode(ext, colour))
    assert rgb[0, 0].tolist() == [255, 0, 0] and rgb[1, 1].tolist() == [0, 0, 127]


@pytest.mark.parametrize(("max_sample", "divisor"), [  # full 16 bit: the test further up
    (0, 511), (300, 511), (511, 511), (512, 1023), (4095, 4095), (4096, 8191)])
def test_the_bit_depth_is_the_smallest_of_9_to_16_that_holds_the_largest_sample(
    max_sample: int, divisor: int
) -> None:
    grey = np.array([[max_sample, 256]], np.uint16)
    assert decode_image(_encode(".png", grey))[0, 1, 0] == round(256 * 255 / divisor)


# --- tiling and stitching -----------------------------------------------------------------

def test_tile_starts_end_flush_with_the_edge() -> None:
    assert tile_starts(1600, 256, 128) == [*range(0, 1345, 128), 1344]
    assert tile_starts(256, 256, 128) == [0]
    assert tile_starts(512, 256, 128) == [0, 128, 256]


@pytest.mark.parametrize("shape", [(256, 1600), (257, 300), (200, 1600), (1000, 700)])
def test_tiles_cover_every_pixel_of_large_images(shape: tuple[int, int]) -> None:
    height, width = shape
    image = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    layout = make_model_input(image, 256, 128)
    assert layout.tiles.shape[1:] == (3, 256, 256) and layout.tiles.dtype == np.uint8
    covered = np.zeros(layout.padded_shape, int)
    for (y, x), tile in zip(layout.origins, layout.tiles, strict=True):
        covered[y:y + 256, x:x + 256] += 1
        region = image[y:y + 256, x:x + 256]  # the part of the tile inside the image
        assert (tile.transpose(1, 2, 0)[: region.shape[0], : region.shape[1]] == region).all()
    assert (covered[:height, :width] >= 1).all()


def test_steel_strip_is_twelve_tiles_in_one_row() -> None:
    layout = make_model_input(np.zeros((256, 1600, 3), np.uint8), 256, 128)
    assert len(layout.tiles) == 12 and {y for y, _ in layout.origins} == {0}
    assert layout.origins[-1] == (0, 1344) and not layout.resized


def test_stitch_of_a_known_pattern_maps_back_to_original_pixels() -> None:
    """Each tile 'sees' the pattern at its own offset; stitching must rebuild the image."""
    height, width = 300, 700
    truth_prob = np.fromfunction(lambda y, x: (x + y) / (height + width), (height, width))
    truth_class = ((np.arange(width) // 100) % 3).astype(np.uint8)[np.newaxis].repeat(height, 0)
    layout = make_model_input(np.zeros((height, width, 3), np.uint8), 256, 128)
    prob_p = np.zeros(layout.padded_shape, np.float32)
    prob_p[:height, :width] = truth_prob
    class_p = np.zeros(layout.padded_shape, np.uint8)
    class_p[:height, :width] = truth_class
    tiles_prob = np.stack([prob_p[y:y + 256, x:x + 256] for y, x in layout.origins])
    tiles_class = np.stack([class_p[y:y + 256, x:x + 256] for y, x in layout.origins])
    class_map, prob = stitch(layout, tiles_class, tiles_prob)
    assert class_map.shape == prob.shape == (height, width)
    assert np.allclose(prob, truth_prob, atol=1e-6)
    assert (class_map == truth_class).all()


def test_stitch_blends_disagreeing_tiles_without_a_seam_and_keeps_the_surest_class() -> None:
    layout = make_model_input(np.zeros((256, 384, 3), np.uint8), 256, 128)
    assert layout.origins == [(0, 0), (0, 128)]
    probs = np.stack([np.full((256, 256), 0.2, np.float32), np.full((256, 256), 0.8, np.float32)])
    classes = np.stack([np.full((256, 256), 1, np.uint8), np.full((256, 256), 2, np.uint8)])
    class_map, prob = stitch(layout, classes, probs)
    assert np.allclose(prob[:, :128], 0.2) and np.allclose(prob[:, 256:], 0.8)
    # across the overlap the heatmap rises steadily from one tile's value to the other's,
    # equal weights (the mean) at its centre; no step where the second tile begins
    row = prob[0, 127:257]
    assert (np.diff(row) > 0).all() and np.diff(row).max() < 0.02
    assert np.isclose(prob[0, 191:193].mean(), 0.5, atol=1e-3)
    assert (class_map[:, :128] == 1).all() and (class_map[:, 128:] == 2).all()


def test_small_images_are_resized_to_one_tile_and_back() -> None:
    image = np.zeros((100, 60, 3), np.uint8)
    layout = make_model_input(image, 256, 128)
    assert layout.resized and layout.tiles.shape == (1, 3, 256, 256)
    tile_class = np.zeros((1, 256, 256), np.uint8)
    tile_class[0, 128:, :] = 2  # lower half of the tile = lower half of the image
    class_map, prob = stitch(layout, tile_class, np.zeros((1, 256, 256), np.float32))
    assert class_map.shape == (100, 60) and prob.shape == (100, 60)
    assert (class_map[:49] == 0).all() and (class_map[51:] == 2).all()


# --- regions, score, decision -------------------------------------------------------------

def test_regions_of_drawn_blobs_in_original_pixels() -> None:
    class_map = np.zeros((256, 1600), np.uint8)
    prob = np.zeros((256, 1600), np.float32)
    cv2.rectangle(class_map, (1500, 10), (1539, 29), 1, thickness=-1)  # 40 x 20 scratch
    prob[10:30, 1500:1540] = 0.9
    cv2.circle(class_map, (100, 200), 10, 2, thickness=-1)  # pit
    prob[190:211, 90:111] = 0.7
    class_map[5, 5] = 2  # a 1 px speck: noise
    regions = find_regions(class_map, prob, CLASSES, min_region_px=12)
    assert [r.class_name for r in regions] == ["scratch", "pit"]
    scratch, pit = regions
    assert scratch.bbox == (1500, 10, 1540, 30) and scratch.area_px == 800
    assert scratch.score == pytest.approx(0.9)
    assert scratch.area_ratio == pytest.approx(800 / (256 * 1600), abs=1e-6)  # 6 decimals
    assert pit.bbox == (90, 190, 111, 211) and pit.score == pytest.approx(0.7)
    assert scratch.model_dump(by_alias=True)["bbox"] == (1500, 10, 1540, 30)


def test_a_connected_defect_is_one_region_of_its_majority_class() -> None:
    """A pit whose rim the model half-labelled as scratch stays one pit, scored by its mean."""
    class_map = np.zeros((64, 64), np.uint8)
    prob = np.zeros((64, 64), np.float32)
    class_map[10:30, 10:30] = 2  # 400 px of pit
    class_map[10:30, 30:34] = 1  # an 80 px scratch-labelled fringe touching it
    prob[10:30, 10:30] = 0.9
    prob[10:30, 30:34] = 0.4
    (region,) = find_regions(class_map, prob, CLASSES, min_region_px=12)
    assert region.class_name == "pit"
    assert region.bbox == (10, 10, 34, 30) and region.area_px == 480
    assert region.score == pytest.approx((400 * 0.9 + 80 * 0.4) / 480, abs=5e-5)  # 4 decimals


def test_fragments_of_one_thin_defect_are_one_region() -> None:
    """A thin defect the model broke into pieces with 2 px gaps is reported once; a blob
    26 px away stays a region of its own."""
    class_map = np.zeros((64, 128), np.uint8)
    prob = np.zeros((64, 128), np.float32)
    for x0 in (10, 22, 34):  # three 10 px pieces of a 2 px wide crack, 2 px apart
        class_map[30:32, x0:x0 + 10] = 2
    class_map[10:20, 70:80] = 1
    prob[class_map > 0] = 0.8
    regions = sorted(find_regions(class_map, prob, CLASSES, min_region_px=12),
                     key=lambda r: r.bbox)
    assert [r.bbox for r in regions] == [(10, 30, 44, 32), (70, 10, 80, 20)]
    assert regions[0].area_px == 60  # only the defect pixels count, not the closed gaps


def test_image_score_is_the_worst_tile() -> None:
    assert image_score(np.array([0.1, 0.93, 0.2], np.float32)) == pytest.approx(0.93)


@pytest.mark.parametrize(
    ("score", "expected"),
    [(0.0, Decision.PASS), (0.3999, Decision.PASS), (0.40, Decision.REVIEW),
     (0.5, Decision.REVIEW), (0.65, Decision.REVIEW), (0.6501, Decision.REJECT),
     (1.0, Decision.REJECT)],
)
def test_traffic_light_boundaries(score: float, expected: Decision) -> None:
    assert decide(score, Thresholds(pass_threshold=0.40, reject_threshold=0.65)) is expected


# --- render -------------------------------------------------------------------------------

def test_mask_png_holds_class_indices() -> None:
    class_map = np.zeros((64, 80), np.uint8)
    class_map[10:30, 20:50] = 1
    class_map[40:44, 5:9] = 4
    mask = cv2.imdecode(np.frombuffer(mask_png(class_map), np.uint8), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (64, 80) and mask.dtype == np.uint8 and (mask == class_map).all()


def _decoded(png: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)


def test_heatmap_png_holds_the_defect_probability_in_grey_levels() -> None:
    prob = np.zeros((64, 80), np.float32)
    prob[10:30, 20:50] = 0.95
    prob[40:44, 5:9] = 1.2  # out of range: clipped to 1
    heatmap = _decoded(heatmap_png(prob))
    assert heatmap.shape == (64, 80) and heatmap.dtype == np.uint8 and heatmap.ndim == 2
    assert (heatmap[10:30, 20:50] == 242).all()  # round(0.95 * 255)
    assert (heatmap[40:44, 5:9] == 255).all() and heatmap[0, 0] == 0


def test_a_large_image_gets_its_heatmap_scaled_down_to_the_longest_side() -> None:
    prob = np.zeros((1000, 4000), np.float32)
    prob[:, 2000:] = 0.5
    heatmap = _decoded(heatmap_png(prob))
    assert heatmap.shape == (HEATMAP_MAX_SIDE // 4, HEATMAP_MAX_SIDE)
    assert heatmap[100, 0] == 0 and heatmap[100, -1] == 128  # round(0.5 * 255)
