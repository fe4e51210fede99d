"""Face alignment in torch, batched: dlib.get_face_chip's steps on any device.

face_chips(images, landmarks, device) -> (N, size, size, 3) uint8 chips, one per face; images[i]
and landmarks[i] are face i's (H, W, 3) uint8 image and (5, 2) points. The same steps as
worker.face.align (which is exact): the chip's rectangle from the 5-point template, the face's
area cropped, dlib's pyramid_down<2> (a [1 4 6 4 1] filter, every other pixel, truncated) until
the rectangle is at most twice the chip, then one batched bilinear grid_sample
(affine_grid's sampling grid, corners aligned) for all faces; samples without 4 neighbours in
the image are black. Within 1 grey level of dlib on average (float sums, not dlib's integers).
"""

import numpy as np
import torch
import torch.nn.functional as F

from worker.face.align import plan_chip


def _pyramid_down(image: torch.Tensor) -> torch.Tensor:
    """dlib's pyramid_down<2> on (C, H, W) float values 0..255: ((H-3)//2, (W-3)//2) output
    (strided slices: faster than a conv with one channel on the CPU)."""
    e = 2 * ((image.shape[2] - 3) // 2)  # output column c reads input columns 2c .. 2c+4
    x = image
    rows = x[:, :, 0:e:2] + x[:, :, 4 : e + 4 : 2] + 4 * (x[:, :, 1 : e + 1 : 2] + x[:, :, 3 : e + 3 : 2])
    rows = rows + 6 * x[:, :, 2 : e + 2 : 2]
    e = 2 * ((image.shape[1] - 3) // 2)
    out = rows[:, 0:e:2] + rows[:, 4 : e + 4 : 2] + 4 * (rows[:, 1 : e + 1 : 2] + rows[:, 3 : e + 3 : 2])
    out = out + 6 * rows[:, 2 : e + 2 : 2]
    return torch.floor(out / 256.0)


def _source(image: np.ndarray, landmarks: np.ndarray, size: int, padding: float, device) -> tuple:
    """Face i's pixels at the pyramid level dlib samples from (C, h, w float on device) and the
    chip corners tl, tr, bl in them."""
    plan = plan_chip(landmarks, image.shape[:2], size, padding)
    if plan.box is None:
        return None, None
    bl, bt, br, bb = plan.box
    source = torch.from_numpy(np.ascontiguousarray(image[bt : bb + 1, bl : br + 1])).to(device)
    source = source.permute(2, 0, 1).float()
    for _ in range(plan.levels):
        if source.shape[1] <= 8 or source.shape[2] <= 8:
            source = source[:, :0, :0]
            break
        source = _pyramid_down(source)
    return source, plan.corners


def face_chips(
    images: list[np.ndarray], landmarks: list[np.ndarray], size: int = 150, padding: float = 0.25,
    device: str | torch.device = "cpu",
) -> np.ndarray:  # fmt: skip
    """The chips dlib.get_face_chip would give, for many faces in one grid_sample.

    images: (H, W, 3) uint8 RGB each (one per face; the same array may repeat); landmarks: (5, 2)
    points (x, y) in dlib's 5-point order. Returns (N, size, size, 3) uint8."""
    n = len(images)
    chips = np.zeros((n, size, size, 3), dtype=np.uint8)
    if n == 0:
        return chips
    sources, corners, keep = [], [], []
    for i, (image, points) in enumerate(zip(images, landmarks)):
        source, tl_tr_bl = _source(image, np.asarray(points, dtype=np.float64), size, padding, device)
        if source is None or source.shape[1] < 2 or source.shape[2] < 2:
            continue
        sources.append(source)
        corners.append(tl_tr_bl)
        keep.append(i)
    if not sources:
        return chips
    height = max(s.shape[1] for s in sources)
    width = max(s.shape[2] for s in sources)
    batch = torch.zeros((len(sources), 3, height, width), device=device)
    for j, source in enumerate(sources):
        batch[j, :, : source.shape[1], : source.shape[2]] = source
    # Chip (u, v) in [-1, 1] (corners aligned) -> source pixel tl + (u+1)/2 (tr-tl) + (v+1)/2 (bl-tl),
    # as affine_grid's theta in the padded batch's normalised coordinates.
    tl, tr, bl = (torch.tensor(np.array(corners)[:, k], dtype=torch.float64) for k in range(3))
    centre = tl + (tr - tl) / 2 + (bl - tl) / 2
    pixels_to_unit = torch.tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)], dtype=torch.float64)
    theta = torch.stack([(tr - tl) / 2, (bl - tl) / 2, centre], dim=2) * pixels_to_unit.view(1, 2, 1)
    theta[:, :, 2] -= 1.0
    grid = F.affine_grid(theta.float().to(device), [len(sources), 3, size, size], align_corners=True)
    sampled = F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    # Samples without 4 neighbours inside the face's own source are black (as dlib).
    points = (grid.double() + 1) / pixels_to_unit.to(device)
    limits = torch.tensor([[s.shape[2], s.shape[1]] for s in sources], device=device, dtype=torch.float64)
    floor = torch.floor(points + 1e-6)
    inside = ((floor >= 0) & (floor + 1 < limits.view(-1, 1, 1, 2))).all(dim=-1)
    sampled = torch.floor(sampled.clamp(0, 255)) * inside[:, None].float()
    chips[keep] = sampled.permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy()
    return chips
