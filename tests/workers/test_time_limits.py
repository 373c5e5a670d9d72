"""Time limits that follow the work: computed at ingest from the image's size, they must
count exactly the tiles the worker will send."""

from __future__ import annotations

import numpy as np
import pytest

from inspectq.config import Settings
from inspectq.imaging import make_model_input
from inspectq.jobs import ImageRef
from inspectq.queue import TimeLimits, max_hard_limit_s, time_limits
from inspectq.tiling import tiles_along


@pytest.mark.parametrize(("width", "height"), [
    (1, 1), (256, 256), (257, 256), (200, 1600), (1600, 256), (383, 384), (384, 385),
    (1000, 700), (4096, 3000),
])
def test_tile_count_is_the_workers_own(width: int, height: int) -> None:
    settings = Settings()
    tile, stride = settings.tile_size, settings.tile_stride
    layout = make_model_input(np.zeros((height, width, 3), np.uint8), tile, stride)
    assert len(layout.origins) == tiles_along(width, tile, stride) * tiles_along(
        height, tile, stride)


def _image(width: int | None, height: int | None) -> ImageRef:
    return ImageRef(key="k", sha256="0" * 64, bytes=1, content_type="image/jpeg",
                    width=width, height=height)


def test_limits_grow_with_the_tiles_and_stay_below_the_visibility_timeout() -> None:
    settings = Settings()  # 120/150 s, 0.5 s per tile, visibility 600 s
    per_tile = settings.task_time_per_tile_s
    assert time_limits(settings, _image(256, 256)) == TimeLimits(120, 150)
    assert time_limits(settings, _image(None, None)) == TimeLimits(120, 150)  # older records
    twelve = time_limits(settings, _image(4096, 3000))  # 31 x 23 = 713 tiles
    assert twelve == TimeLimits(round(120 + 712 * per_tile, 1), round(150 + 712 * per_tile, 1))
    forty = time_limits(settings, _image(8000, 5000))
    assert forty.hard_s == max_hard_limit_s(settings) == 570
    assert forty.hard_s - forty.soft_s == 30


def test_doubling_keeps_the_gap_and_the_cap() -> None:
    assert TimeLimits(120, 150).doubled(570) == TimeLimits(240, 270)
    assert TimeLimits(400, 430).doubled(570) == TimeLimits(540, 570)
    assert TimeLimits(540, 570).doubled(570) == TimeLimits(540, 570)  # no more room
