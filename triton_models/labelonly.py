"""Label-only training: a defect classifier from folders of good and defective images (no
masks) whose heatmap shows where its evidence is. `python -m triton_models.train DATA
--label-only` (or DATA without ground_truth/) trains with `fit`; the trainer then calibrates,
fits the out-of-domain statistics and writes the card as for every model.

The network is `CellNet` (`triton_models/net.py`), a small convolutional encoder that scores
cells of 32 (`cells-coarse`, the default) or 16 pixels (`cells`), inside the deployable
`InspectqSeg`. The image is a bag of cells (multiple-instance learning): its defect logit is
a smooth maximum of the cell logits, so the label's gradient reaches the cells that carry
the evidence, and every cell of a good image is a labelled negative. The same cell logits,
upsampled, are the `defect_prob` heatmap.

Training: every batch is half good, half defective (class balancing); label-preserving
augmentation (flips and, unless `--no-turns`, transpositions: all 8 turns and mirrors, which
the served model then averages over; shifts of up to 16 px; one brightness and contrast
change for all channels, so grayscale stays gray); an image larger than the 256 px tile is
trained on as the service scores it, one native-scale tile at a time (a random window);
AdamW with a cosine schedule over the time budget (the schedule ends when the budget does);
a stratified share of the training images picks the best checkpoint by image AUROC (early
stopping).
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from inspectq.imaging import image_score
from triton_models import metrics, mvtec
from triton_models.evaluate import service_input
from triton_models.net import CELL_SHARPNESS, CellNet, InspectqSeg

#: Per-step decay of the weights' moving average (a horizon of about 200 steps), reached
#: after a warm-up: step n averages with decay min(EMA_DECAY, (1 + n) / (10 + n)).
EMA_DECAY = 0.995


def ema(averaged: Tensor, current: Tensor, count: Tensor | int) -> Tensor:
    decay = min(EMA_DECAY, (1 + int(count)) / (10 + int(count)))
    return decay * averaged + (1 - decay) * current


def build(num_classes: int, input_pool: int = 2) -> InspectqSeg:
    """The label-only model: `CellNet` cells pooled by a smooth maximum into the score."""
    return InspectqSeg(CellNet(num_classes, input_pool=input_pool), CELL_SHARPNESS)


def augment(images: np.ndarray, rng: np.random.Generator, shift: int = 16,
            tile: int = mvtec.TILE, turns: bool = True) -> Tensor:
    """Label-preserving augmentation of uint8 (B,3,H,W): flips, shifts, brightness, and with
    `turns` a transposition of square windows (with the flips, all 8 turns and mirrors). An
    image larger than the service's tile is seen as the service scores it, a `tile` px
    window at native scale (a random one; the service takes the max over all of them)."""
    height, width = images.shape[-2:]
    crop_h, crop_w = min(height, tile), min(width, tile)
    out = np.empty((len(images), images.shape[1], crop_h, crop_w), np.uint8)
    for j, image in enumerate(images):
        padded = np.pad(image, ((0, 0), (shift, shift), (shift, shift)), mode="reflect")
        y0 = rng.integers(0, height + 2 * shift - crop_h + 1)
        x0 = rng.integers(0, width + 2 * shift - crop_w + 1)
        image = padded[:, y0 : y0 + crop_h, x0 : x0 + crop_w]
        image = image[:, :, ::-1] if rng.integers(2) else image
        image = image[:, ::-1] if rng.integers(2) else image
        if turns and crop_h == crop_w and rng.integers(2):
            image = image.transpose(0, 2, 1)
        gain, offset = rng.uniform(0.8, 1.2), rng.uniform(-20, 20)
        out[j] = np.clip(image.astype(np.float32) * gain + offset, 0, 255)
    return torch.from_numpy(out)


def loss_fn(model: InspectqSeg, images: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    cells, image_logit, presence = model.heads(model.normalize(images))
    loss = F.binary_cross_entropy_with_logits(image_logit, (labels > 0).float())
    good = labels == 0
    if good.any():  # a good image's every cell is a labelled negative
        loss = loss + F.softplus(torch.logsumexp(cells[good][:, 1:], 1)).mean()
    if num_classes > 2:  # which defect: the pooled per-class maps against the folder
        onehot = F.one_hot(labels, num_classes)[:, 1:].float()
        loss = loss + F.binary_cross_entropy_with_logits(presence, onehot)
    return loss


@torch.inference_mode()
def scores(model: nn.Module, images: np.ndarray, batch: int = 32) -> np.ndarray:
    """Image scores as the service computes them: the max over each image's tiles (images
    loaded at the service's scale, `mvtec.load(size=None)`)."""
    model.eval()
    tiles = [service_input(image).tiles for image in images]
    flat = np.concatenate(tiles)
    tile_scores = np.concatenate([model(torch.from_numpy(flat[i : i + batch]))[2][:, 0].numpy()
                                  for i in range(0, len(flat), batch)])
    ends = np.cumsum([len(t) for t in tiles])
    return np.array([image_score(part) for part in np.split(tile_scores, ends[:-1])])


def fit(data: mvtec.Dataset, val: mvtec.Dataset, max_seconds: float, seed: int,
        batch: int = 32, lr: float = 3e-3, max_steps: int | None = None,
        eval_every: int = 100, input_pool: int = 2,
        dihedral: bool = True) -> tuple[InspectqSeg, dict[str, object]]:
    """Train until max_seconds (or max_steps); keep the checkpoint best on `val`.

    With `dihedral` (surfaces with no up or left) the windows are turned and mirrored in
    training, and the returned model averages its cells over the tile's 8 turns and mirrors
    (`InspectqSeg.dihedral`); the checkpoints are picked on one pass (8 times cheaper), the
    card's figures come from the model as served. Without it, only left-right and up-down
    mirrors are trained on and the model makes one pass.

    The checkpoints are of an exponential moving average of the weights (decay `EMA_DECAY`,
    BatchNorm statistics included): on a few thousand noisy labels it ranks held-out images
    more steadily than the raw weights of any one step. Channels-last memory makes a CPU
    step about 10-20% cheaper; the model is returned in the default layout."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build(len(data.classes), input_pool).to(memory_format=torch.channels_last)
    average = AveragedModel(model, avg_fn=ema, use_buffers=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    good, bad = np.flatnonzero(data.labels == 0), np.flatnonzero(data.labels > 0)
    best: tuple[float, int, dict[str, Tensor]] = (-1.0, 0, copy.deepcopy(model.state_dict()))
    history = []

    def checkpoint() -> None:
        nonlocal best
        val_auroc = metrics.auroc(scores(average.module, val.images), val.labels > 0)
        history.append([step, round(time.monotonic() - start), round(val_auroc, 4)])
        bar.set_postfix(val_auroc=f"{val_auroc:.4f}")
        if val_auroc >= best[0]:  # a tie: the later, longer-trained weights
            best = (val_auroc, step, copy.deepcopy(average.module.state_dict()))

    bar = tqdm(total=max_steps, desc="train cells", unit="step")
    start = time.monotonic()
    step = 0
    while True:
        elapsed = time.monotonic() - start
        progress = max(elapsed / max_seconds, step / max_steps if max_steps else 0.0)
        if progress >= 1.0:
            break
        warm = min(1.0, (step + 1) / 50)
        for group in optimizer.param_groups:
            group["lr"] = lr * warm * 0.5 * (1 + math.cos(math.pi * progress))
        index = np.concatenate([rng.choice(good, batch // 2),
                                rng.choice(bad, batch - batch // 2)])
        model.train()
        images = augment(data.images[index], rng, turns=dihedral).contiguous(
            memory_format=torch.channels_last)
        loss = loss_fn(model, images, torch.from_numpy(data.labels[index]), len(data.classes))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        average.update_parameters(model)
        step += 1
        bar.update()
        if step % eval_every == 0:
            checkpoint()
    if not history or history[-1][0] != step:  # the final weights get their evaluation too
        checkpoint()
    bar.close()
    model.load_state_dict(best[2])
    model = model.to(memory_format=torch.contiguous_format).eval()
    model.dihedral = dihedral
    seconds = time.monotonic() - start
    return model, {
        "mode": "image labels only: multiple-instance cell classifier",
        "steps": step,
        "batch": batch,
        "lr": lr,
        "seconds": round(seconds, 1),
        "seconds_per_step": round(seconds / max(step, 1), 3),
        "ended_by": "steps" if max_steps and step >= max_steps else "time budget",
        "weights": f"exponential moving average, decay up to {EMA_DECAY}",
        "turns_and_mirrors": "trained on all 8, served as their average" if dihedral
        else "left-right and up-down mirrors trained on, one pass served",
        "best_step": best[1],
        "best_val_auroc": round(best[0], 4),
        "val_history_step_seconds_auroc": history,
    }
