"""Network definitions: the segmentation backbones and the deployable inspectq model.

`InspectqSeg` wraps any backbone that maps a normalized float image (N,3,H,W) to per-pixel
class logits (N,C,H,W) and adds what the model contract needs: uint8 input normalized
inside, and compact outputs (uint8 class map, fp16 defect probability, fp32 image score).

The image score is a pooled view of the segmentation itself: a smooth maximum (log-mean-exp
with a sharpness r) of the per-pixel defect logit, passed through a learned affine map and a
sigmoid. Trained with the image label, it is a calibrated probability whether or not masks
exist, and it needs no second head. With masks r = `POOL_SHARPNESS` (near a mean of the top
pixels). From image labels alone the map is first averaged over `LABEL_ONLY_CELL`-pixel
cells and r = `LABEL_ONLY_SHARPNESS`, closer to a max: the image label's gradient lands on
the few most suspicious regions instead of spreading over all 65,536 pixels, and the class
map becomes a coarse heatmap of those regions.

Two post-training steps (`triton_models.calibrate`) fill buffers that the exported file
keeps: a Platt calibration of the image logit (`calib_scale`, `calib_bias`; identity until
fitted), so the served `image_score` is calibrated on held-out data, and the out-of-domain
statistics of the training set (`OodScore`, which any model can hold): the Mahalanobis
distance of a tile's pooled encoder features from the training tiles' mean, divided by the
threshold distance, is the fourth output `ood_score` (> 1 = out of domain).
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn

POOL_SHARPNESS = 2.0
LABEL_ONLY_SHARPNESS = 10.0
LABEL_ONLY_CELL = 8
#: CellNet's stage widths and the sharpness of its smooth maximum over cells.
CELL_WIDTHS = (16, 32, 64, 96)
CELL_SHARPNESS = 4.0
#: The label-only architectures: CellNet's input pooling (cells of 8 x that many pixels).
CELL_INPUT_POOL = {"cells": 2, "cells-coarse": 4}
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """A small U-Net. With `stem_stride=2` the first layer halves the resolution, which
    cuts the FLOPs about sixfold on CPU; logits are upsampled bilinearly at the end.
    `forward_features` also returns the spatial mean of every encoder level's features
    (sum(widths) = 240 values per image), the statistics the out-of-domain score uses."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (16, 32, 64, 128),
                 stem_stride: int = 2) -> None:
        super().__init__()
        self.stem_stride = stem_stride
        self.stem = nn.Sequential(conv_bn_relu(3, widths[0], stem_stride),
                                  conv_bn_relu(widths[0], widths[0]))
        self.down = nn.ModuleList(
            nn.Sequential(conv_bn_relu(a, b, 2), conv_bn_relu(b, b))
            for a, b in pairwise(widths)
        )
        # Decoder blocks, deepest first: block j merges the upsampled map with skip -2-j.
        self.up = nn.ModuleList(
            nn.Sequential(conv_bn_relu(b + a, a), conv_bn_relu(a, a))
            for a, b in reversed(list(pairwise(widths)))
        )
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        self.feature_dim = sum(widths)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[0]

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(logits (N,C,H,W), pooled encoder features (N, feature_dim))."""
        size = x.shape[-2:]
        skips = [self.stem(x)]
        for block in self.down:
            skips.append(block(skips[-1]))
        features = torch.cat([skip.mean((2, 3)) for skip in skips], 1)
        y = skips[-1]
        for j, block in enumerate(self.up):
            skip = skips[len(skips) - 2 - j]
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = block(torch.cat([y, skip], 1))
        logits = self.head(y)
        if self.stem_stride != 1:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits, features


class LRASPP(nn.Module):
    """torchvision's LRASPP-MobileNetV3-Large (random init), for the architecture comparison."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        from torchvision.models.segmentation import lraspp_mobilenet_v3_large

        self.inner = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                               num_classes=num_classes)
        self.feature_dim = 960  # channels of MobileNetV3-Large's last stage

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x)["out"]

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        stages = self.inner.backbone(x)
        logits = F.interpolate(self.inner.classifier(stages), size=x.shape[-2:],
                               mode="bilinear", align_corners=False)
        return logits, stages["high"].mean((2, 3))


class CellNet(nn.Module):
    """The label-only backbone: class logits per cell, not per pixel. The input is pooled
    by the mean, the minimum and the maximum of each `input_pool` x `input_pool` block (a
    one-pixel crack, dark or bright, survives), then four 3x3 conv stages with max-pooling
    between them (a thin line's response is kept where a strided convolution could step
    over it) and a 1x1 head per cell: 16 px cells and 0.189 GFLOPs per 256 px tile with
    `input_pool` 2 (`cells`), 32 px cells and 0.047 with 4 (`cells-coarse`), against the
    U-Net's 1.34. The background logit is fixed
    at 0, so a cell's defect logits are its evidence against a good surface; `InspectqSeg`
    pools the cells into the image score and upsamples them into the heatmap. Features for
    the out-of-domain score: every stage's spatial mean (sum(widths) + the last width)."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] = CELL_WIDTHS,
                 input_pool: int = 2) -> None:
        super().__init__()
        self.input_pool = input_pool
        stages: list[nn.Module] = [conv_bn_relu(9, widths[0])]
        for a, b in pairwise(widths):
            stages.append(nn.Sequential(nn.MaxPool2d(2), conv_bn_relu(a, b)))
        stages.append(conv_bn_relu(widths[-1], widths[-1]))
        self.stages = nn.ModuleList(stages)
        self.head = nn.Conv2d(widths[-1], num_classes - 1, 1)
        self.feature_dim = sum(widths) + widths[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[0]

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(cell logits (N,C,h,w) with background 0, one per 8 * input_pool pixels,
        pooled features (N, D))."""
        p = self.input_pool
        y = torch.cat([F.avg_pool2d(x, p), -F.max_pool2d(-x, p), F.max_pool2d(x, p)], 1)
        pooled = []
        for stage in self.stages:
            y = stage(y)
            pooled.append(y.mean((2, 3)))
        defects = self.head(y)
        background = torch.zeros_like(defects[:, :1])
        return torch.cat([background, defects], 1), torch.cat(pooled, 1)


def build_backbone(arch: str, num_classes: int) -> nn.Module:
    if arch in CELL_INPUT_POOL:
        return CellNet(num_classes, input_pool=CELL_INPUT_POOL[arch])
    if arch == "unet-s2":
        return UNet(num_classes, stem_stride=2)
    if arch == "unet-full":
        return UNet(num_classes, stem_stride=1)
    if arch == "lraspp":
        return LRASPP(num_classes)
    raise ValueError(f"unknown architecture {arch!r}")


ARCHITECTURES = ("unet-s2", "unet-full", "cells", "cells-coarse", "lraspp")


def smooth_max(z: Tensor, sharpness: float) -> Tensor:
    """Log-mean-exp over the spatial dims of (N,K,H,W): between the mean and the max."""
    flat = z.flatten(2)
    n = float(flat.shape[2])
    return (torch.logsumexp(sharpness * flat, 2) - math.log(n)) / sharpness


def dihedral(x: Tensor, turn: int, mirror: int) -> Tensor:
    """x (N,C,H,W) mirrored left-right if bit 0 of `mirror`, up-down if bit 1, then
    transposed if `turn`: with the identity, the 8 symmetries of a square tile."""
    if mirror & 1:
        x = torch.flip(x, [3])
    if mirror & 2:
        x = torch.flip(x, [2])
    return x.transpose(2, 3) if turn else x


def undo_dihedral(x: Tensor, turn: int, mirror: int) -> Tensor:
    """The inverse of `dihedral`: a map of the transformed tile back in the tile's frame."""
    x = x.transpose(2, 3) if turn else x
    if mirror & 2:
        x = torch.flip(x, [2])
    if mirror & 1:
        x = torch.flip(x, [3])
    return x


class OodScore(nn.Module):
    """Out-of-domain score (N,1) of pooled features (N,D): their Mahalanobis distance from
    the training features' mean, divided by the threshold distance (1.0 = the threshold).
    Identity statistics until `triton_models.calibrate.fit_ood` fills them."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("precision", torch.eye(dim))
        self.register_buffer("threshold", torch.tensor(1.0))

    def distance(self, features: Tensor) -> Tensor:
        """Mahalanobis distance (N,) from the training mean."""
        centred = features - self.mean
        squared = ((centred @ self.precision) * centred).sum(1)
        return torch.sqrt(torch.clamp(squared, min=0.0))

    def forward(self, features: Tensor) -> Tensor:
        return (self.distance(features) / self.threshold).unsqueeze(1)


class InspectqSeg(nn.Module):
    """The deployable model: uint8 images in, the contract's three outputs and the optional
    `ood_score` out.

    `dihedral`: the backbone's logits and features are averaged over the tile's 8 turns and
    mirrors (4 mirrors if the tile is not square), each mapped back to the tile's frame:
    test-time augmentation for a model trained with the same turns (the label-only
    `CellNet`, whose surfaces have no up or left), 8 times the backbone's cost."""

    def __init__(self, backbone: nn.Module, pool_sharpness: float = POOL_SHARPNESS,
                 pool_cell: int = 1, dihedral: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.dihedral = dihedral
        self.score_scale = nn.Parameter(torch.tensor(1.0))
        self.score_bias = nn.Parameter(torch.tensor(0.0))
        self.pool_sharpness = pool_sharpness
        self.pool_cell = pool_cell
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))
        self.register_buffer("calib_scale", torch.tensor(1.0))
        self.register_buffer("calib_bias", torch.tensor(0.0))
        self.ood = OodScore(int(backbone.feature_dim))

    def normalize(self, images: Tensor) -> Tensor:
        return (images.float() / 255.0 - self.mean) / self.std

    def logits_and_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The backbone's (logits, pooled features) of normalized x, averaged over the 8
        turns and mirrors if `dihedral`."""
        if not self.dihedral:
            return self.backbone.forward_features(x)
        logits_sum, features_sum = self.backbone.forward_features(x)
        count = 1
        for turn in range(2 if x.shape[-1] == x.shape[-2] else 1):
            for mirror in range(0 if turn else 1, 4):  # bit 0: left-right, bit 1: up-down
                y = dihedral(x, turn, mirror)
                logits, features = self.backbone.forward_features(y)
                logits_sum = logits_sum + undo_dihedral(logits, turn, mirror)
                features_sum = features_sum + features
                count += 1
        return logits_sum / count, features_sum / count

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(pixel logits, image logit (N,), per-class presence logits (N,K)) of normalized x."""
        logits = self.backbone(x)
        image_logit, presence = self.pool(logits)
        return logits, image_logit, presence

    def pool(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """(image logit (N,), per-class presence logits (N,K)) of pixel logits (N,C,H,W);
        the image logit is not calibrated yet (see `forward`)."""
        background = logits[:, :1]
        any_defect = torch.logsumexp(logits[:, 1:], 1, keepdim=True) - background
        per_class = logits[:, 1:] - background
        if self.pool_cell > 1:
            any_defect = F.avg_pool2d(any_defect, self.pool_cell)
            per_class = F.avg_pool2d(per_class, self.pool_cell)
        pooled = smooth_max(any_defect, self.pool_sharpness)[:, 0]
        image_logit = self.score_scale * pooled + self.score_bias
        presence = smooth_max(per_class, self.pool_sharpness)
        return image_logit, presence

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        logits, features = self.logits_and_features(self.normalize(images))
        image_logit, _ = self.pool(logits)
        if logits.shape[-2:] != images.shape[-2:]:  # a coarse backbone (CellNet): its cells
            logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear",
                                   align_corners=False)
        class_map = torch.argmax(logits, 1).to(torch.uint8)
        defect_prob = (1.0 - torch.softmax(logits, 1)[:, 0]).to(torch.float16)
        calibrated = self.calib_scale * image_logit + self.calib_bias
        image_score = torch.sigmoid(calibrated).unsqueeze(1)
        return class_map, defect_prob, image_score, self.ood(features)
