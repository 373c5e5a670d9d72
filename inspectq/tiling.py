"""Where the model's tiles fall along one side of an image: one rule, used by the workers to
cut images (``inspectq.imaging``) and by ingest to size a job's time limits
(``inspectq.queue.time_limits``)."""

from __future__ import annotations


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets along one side of ``length`` >= ``tile``: every ``stride``, plus one
    final tile flush with the end when the strides do not land on it exactly."""
    if length < tile:
        raise ValueError("pad the side to at least one tile first")
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def tiles_along(length: int, tile: int, stride: int) -> int:
    """How many tiles one side makes; a side shorter than a tile is padded (or resized) to
    one."""
    return len(tile_starts(max(length, tile), tile, stride))
