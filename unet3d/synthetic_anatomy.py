"""Drawing synthetic cases: a brain with tissue contrasts, a bias field, noise and tumours.

`generate_case` draws, as a pure function of a shape and a random generator (`unet3d.synthetic`
writes the results under the names of a BraTS convention):

- a skull-stripped head: an irregular ellipsoidal brain, every modality and the label map exactly 0
  outside it (and at least 1 inside it, so `image > 0` is the brain mask);
- tissue classes (CSF with ventricles, folded grey matter, white matter) with the contrasts of real
  MRI: T1 WM > GM > CSF; T2 CSF > GM > WM; FLAIR CSF dark, GM > WM; T1ce like T1;
- a smooth multiplicative bias field per modality (about +-20 %) and Gaussian noise;
- a tumour of random shape, size and position with nested sub-regions: oedema (label 2)
  outermost, an enhancing rim (4) around a necrotic core (1). Enhancing tumour is bright on T1ce,
  oedema bright on T2 and FLAIR, the whole tumour darker than WM on T1, necrosis dark on T1ce.
  Every 4th case (1-based case 4, 8, ...) has no enhancing tumour; its core is necrosis only;
- what a convention adds (`features`; `unet3d.synthetic.case_features` chooses them): a
  resection cavity beside the tumour (fluid: dark on t1, t1ce and FLAIR, bright on t2), a cyst
  inside the core (paediatric), several lesions (metastases).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from unet3d.errors import InputError

#: Smallest size of each dimension; smaller grids cannot hold the brain's tissue and tumour.
MIN_DIM = 32

#: The four MRI sequences, in the order they are drawn and written.
MODALITY_KEYS: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")

#: Values of the `SyntheticCase.tissue` map.
BACKGROUND, CSF, GREY_MATTER, WHITE_MATTER, TUMOUR = 0, 1, 2, 3, 4

#: Noise-free intensity of each region per modality, indexed by region:
#: (background, CSF, grey matter, white matter, necrosis, oedema, enhancing tumour, resection
#: cavity, cyst).
INTENSITIES: dict[str, tuple[float, ...]] = {
    "t1": (0.0, 250.0, 550.0, 800.0, 300.0, 600.0, 500.0, 200.0, 350.0),
    "t1ce": (0.0, 300.0, 580.0, 780.0, 250.0, 620.0, 1500.0, 220.0, 330.0),
    "t2": (0.0, 1800.0, 1100.0, 800.0, 1700.0, 1500.0, 1200.0, 1900.0, 2000.0),
    "flair": (0.0, 150.0, 650.0, 500.0, 700.0, 1100.0, 850.0, 120.0, 500.0),
}

#: Standard deviation of the additive Gaussian noise per modality.
NOISE_STD: dict[str, float] = {"t1": 25.0, "t1ce": 25.0, "t2": 30.0, "flair": 20.0}

#: The bias field is exp(BIAS_AMPLITUDE * f) with f a smooth field scaled to [-1, 1].
BIAS_AMPLITUDE = 0.2

# Label value (0, 1, 2, 4, and 5 cavity, 6 cyst; index) -> region index into INTENSITIES; 0
# keeps the tissue class.
_LABEL_REGION = np.array([0, 4, 5, 0, 6, 7, 8], dtype=np.uint8)
#: The tissue kind (`unet3d.conventions.KINDS`) of each label value of `SyntheticCase.label`.
LABEL_KINDS = {1: "core", 2: "oedema", 4: "enhancing", 5: "cavity", 6: "cyst"}

# Brain semi-axes as fractions of the grid size (about 140 x 170 x 125 voxels in BraTS' grid).
_BRAIN_SEMI_AXES = (0.29, 0.36, 0.40)
# Relative irregularity of the brain outline.
_BRAIN_IRREGULARITY = 0.08
# Whole-tumour radius as a fraction of the mean brain semi-axis, and its floor in voxels.
_TUMOUR_RADIUS = (0.2, 0.38)
_MIN_TUMOUR_RADIUS = 6.0
# Relative irregularity of the tumour outline.
_TUMOUR_IRREGULARITY = 0.4


@dataclass
class SyntheticCase:
    """One synthetic case; every array is indexed (x, y, z) and has the case's shape.

    Attributes:
        images: int16 image per modality, keyed "t1", "t1ce", "t2", "flair". Inside the brain
            `image = clip(rint(clean * bias + noise), 1, 32767)`, with `clean = self.clean(key)`;
            0 outside the brain.
        label: uint8 labels: 0 background, 1 necrosis, 2 oedema, 4 enhancing tumour (the
            BraTS 2020 values), 5 resection cavity, 6 cyst (`LABEL_KINDS`); writers number them
            as their convention does.
        tissue: uint8 class map: 0 background (outside the brain), 1 CSF, 2 grey matter,
            3 white matter, 4 tumour (every voxel with label > 0).
        bias: float32 multiplicative bias field per modality (smooth, about 0.82 to 1.22, defined
            on the whole grid).
    """

    images: dict[str, np.ndarray]
    label: np.ndarray
    tissue: np.ndarray
    bias: dict[str, np.ndarray]

    @property
    def brain(self) -> np.ndarray:
        """Boolean brain mask (tissue > 0)."""
        return self.tissue > 0

    def regions(self) -> np.ndarray:
        """uint8 region map indexing `INTENSITIES`: tissue 0-3 outside the tumour, then
        4 necrosis, 5 oedema, 6 enhancing tumour, 7 resection cavity, 8 cyst."""
        return np.where(self.label > 0, _LABEL_REGION[self.label], self.tissue)

    def clean(self, modality: str) -> np.ndarray:
        """Noise- and bias-free float32 image of `modality`."""
        table = np.asarray(INTENSITIES[modality], dtype=np.float32)
        return table[self.regions()]


def check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    try:
        dims = tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        raise InputError(f"shape {shape!r}: expected three integers such as (240, 240, 155)"
                         ) from None
    if len(dims) != 3 or any(int(n) != n for n in shape):
        raise InputError(f"shape {tuple(shape)}: expected three integers (x, y, z) such as "
                         "(240, 240, 155)")
    if min(dims) < MIN_DIM:
        raise InputError(f"shape {dims}: every dimension must be at least {MIN_DIM} voxels to hold "
                         "a brain with tissue and tumour; use a larger shape such as (64, 64, 48)")
    return dims


def _upsampling_matrix(n_nodes: int, n_out: int) -> np.ndarray:
    """(n_out, n_nodes) matrix of cubic-spline upsampling of `n_nodes` samples to `n_out`."""
    return ndimage.zoom(np.eye(n_nodes), (n_out / n_nodes, 1.0), order=3, mode="nearest",
                        grid_mode=False).astype(np.float32)


def smooth_field(shape: Sequence[int], nodes: Sequence[int],
                 rng: np.random.Generator) -> np.ndarray:
    """A smooth random float32 field of `shape`, scaled so that its largest magnitude is 1.

    White noise on a coarse grid of `nodes` (x, y, z) points is upsampled with cubic splines
    (`scipy.ndimage.zoom`, order 3), one axis at a time: the 1D zoom of an identity matrix is the
    upsampling matrix of each axis, so a full-size field costs three small matrix products instead
    of a full-resolution filter. Features are about `shape / nodes` voxels wide whatever the shape.
    """
    coarse = rng.standard_normal(tuple(nodes)).astype(np.float32)
    wx, wy, wz = (_upsampling_matrix(n, s) for n, s in zip(nodes, shape))
    field = np.einsum("ijk,zk->ijz", coarse, wz)  # (nx, ny, z)
    field = np.einsum("ijz,yj->iyz", field, wy)  # (nx, y, z)
    field = np.tensordot(wx, field, axes=(1, 0))  # (x, y, z)
    field /= max(float(np.abs(field).max()), 1e-6)
    return field


def _box(center: np.ndarray, half_width: np.ndarray, shape: Sequence[int]) -> tuple[slice, ...]:
    """Slices of the part of the grid within `half_width` voxels of `center`."""
    start = np.maximum(np.floor(center - half_width), 0).astype(int)
    stop = np.minimum(np.ceil(center + half_width) + 1, shape).astype(int)
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop))


def _axis_coordinates(box: tuple[slice, ...], center: np.ndarray) -> list[np.ndarray]:
    """Offsets from `center` of the voxels in `box`, one broadcastable float32 array per axis."""
    coordinates = []
    for axis, (part, c) in enumerate(zip(box, center)):
        values = np.arange(part.start, part.stop, dtype=np.float32) - np.float32(c)
        view = [1, 1, 1]
        view[axis] = len(values)
        coordinates.append(values.reshape(view))
    return coordinates


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 rotation matrix."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))[None, :]
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _draw_brain(shape: tuple[int, int, int], rng: np.random.Generator,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Brain mask and tissue map (0 background, 1 CSF, 2 GM, 3 WM), plus the brain's centre and
    semi-axes in voxels."""
    size = np.asarray(shape, dtype=float)
    center = (size - 1) / 2 + rng.uniform(-0.02, 0.02, 3) * size
    semi_axes = np.asarray(_BRAIN_SEMI_AXES) * size * rng.uniform(0.95, 1.03, 3)
    gx, gy, gz = (c / np.float32(a) for c, a in
                  zip(_axis_coordinates(tuple(slice(0, n) for n in shape), center), semi_axes))

    # Normalised radius: < 1 inside the irregular brain outline.
    outline = smooth_field(shape, (4, 4, 4), rng)
    rho = np.sqrt(gx * gx + gy * gy + gz * gz) / (1 + _BRAIN_IRREGULARITY * outline)
    brain = rho < 1

    # Cortex: sulcal CSF on the surface over folded grey matter; white matter inside.
    folds = smooth_field(shape, (14, 16, 10), rng)
    tissue = np.full(shape, WHITE_MATTER, dtype=np.uint8)
    tissue[rho > 0.83 + 0.08 * folds] = GREY_MATTER
    tissue[rho > 0.95 + 0.05 * folds] = CSF

    # Lateral ventricles: two ellipsoids beside the midline, elongated front to back.
    ventricle_axes = np.array([0.1, 0.35, 0.18]) * semi_axes
    for side in (-1.0, 1.0):
        ventricle_center = center + np.array([0.15 * side, -0.05, 0.1]) * semi_axes
        box = _box(ventricle_center, ventricle_axes + 1, shape)
        vx, vy, vz = (c / np.float32(a) for c, a in
                      zip(_axis_coordinates(box, ventricle_center), ventricle_axes))
        inside = vx * vx + vy * vy + vz * vz < 1
        tissue[box][inside] = CSF

    tissue[~brain] = BACKGROUND
    return brain, tissue, center, semi_axes


def _draw_tumour(shape: tuple[int, int, int], brain: np.ndarray, center: np.ndarray,
                 semi_axes: np.ndarray, rng: np.random.Generator, enhancing: bool,
                 scale: float = 1.0) -> np.ndarray:
    """uint8 label map with one tumour: oedema 2 around a core of enhancing rim 4 and necrosis 1
    (necrosis only when not `enhancing`); `scale` scales its size."""
    # Centre: uniform in the inner half (in normalised brain coordinates) of the brain.
    offset = rng.uniform(-0.5, 0.5, 3)
    while np.linalg.norm(offset) > 0.5:
        offset = rng.uniform(-0.5, 0.5, 3)
    tumour_center = center + offset * semi_axes
    radius = max(rng.uniform(*_TUMOUR_RADIUS) * float(semi_axes.mean()) * scale,
                 _MIN_TUMOUR_RADIUS)
    axes = radius * rng.uniform(0.7, 1.3, 3)
    rotation = _random_rotation(rng)
    core_fraction = rng.uniform(0.55, 0.8)
    necrosis_fraction = rng.uniform(0.4, 0.65)

    # Work in the box holding every voxel the deformed ellipsoid can reach.
    box = _box(tumour_center, np.full(3, axes.max() / (1 - _TUMOUR_IRREGULARITY) + 1), shape)
    dx, dy, dz = _axis_coordinates(box, tumour_center)
    squared = np.zeros([s.stop - s.start for s in box], dtype=np.float32)
    for row, axis_length in zip(rotation.T.astype(np.float32), axes):
        along = dx * row[0] + dy * row[1] + dz * row[2]
        squared += (along / np.float32(axis_length)) ** 2
    distance = np.sqrt(squared)

    # Nested regions, each the inside of the ellipsoid deformed by its own smooth field (so the
    # rim thickness varies), and each eroded from the next outer one so that a layer of at least
    # one voxel always separates necrosis from oedema and the core from the background.
    def deformed(threshold: float, irregularity: float) -> np.ndarray:
        field = smooth_field(distance.shape, (6, 6, 6), rng)
        return distance * (1 + irregularity * field) < threshold

    whole = deformed(1.0, _TUMOUR_IRREGULARITY) & brain[box]
    core = deformed(core_fraction, 0.6 * _TUMOUR_IRREGULARITY) & ndimage.binary_erosion(whole)
    necrosis = (deformed(core_fraction * necrosis_fraction, 0.6 * _TUMOUR_IRREGULARITY)
                & ndimage.binary_erosion(core))
    label = np.zeros(shape, dtype=np.uint8)
    label_box = label[box]
    label_box[whole] = 2
    if enhancing:
        label_box[core] = 4
        label_box[necrosis] = 1
    else:
        label_box[core] = 1
    return label


def _sphere(shape: Sequence[int], center: np.ndarray, radius: float) -> np.ndarray:
    """Boolean mask of the voxels within `radius` of `center`."""
    box = _box(center, np.full(3, radius + 1), shape)
    dx, dy, dz = _axis_coordinates(box, center)
    mask = np.zeros(shape, dtype=bool)
    mask[box] = dx * dx + dy * dy + dz * dz <= np.float32(radius) ** 2
    return mask


def _equivalent_radius(mask: np.ndarray) -> float:
    return float((3 * mask.sum() / (4 * np.pi)) ** (1 / 3))


def _add_features(label: np.ndarray, brain: np.ndarray, center: np.ndarray,
                  semi_axes: np.ndarray, rng: np.random.Generator, features: Sequence[str],
                  enhancing: bool) -> np.ndarray:
    """`label` with the `features` drawn in: "lesions" (two more, smaller tumours), "cyst" (6, a
    sphere inside the core), "cavity" (5, a fluid sphere beside the tumour, replacing oedema and
    brain, never the core)."""
    shape = label.shape
    if "lesions" in features:  # up to two more, each apart from the others
        for _ in range(30):
            more = _draw_tumour(shape, brain, center, semi_axes, rng, enhancing, scale=0.5)
            if not (ndimage.binary_dilation(more > 0, iterations=2) & (label > 0)).any():
                label = np.where(more > 0, more, label)
                if ndimage.label(label > 0)[1] >= 3:
                    break
    if "cyst" in features:
        core = np.isin(label, (1, 4))
        inner = ndimage.binary_erosion(core, iterations=2)
        points = np.argwhere(inner if inner.any() else core)
        middle = points[rng.integers(len(points))].astype(float)
        label[_sphere(shape, middle, max(2.0, 0.45 * _equivalent_radius(core))) & core] = 6
    if "cavity" in features:
        tumour = label > 0
        edge = np.argwhere(tumour & ~ndimage.binary_erosion(tumour))
        point = edge[rng.integers(len(edge))].astype(float)
        direction = point - np.argwhere(tumour).mean(axis=0)
        direction /= max(float(np.linalg.norm(direction)), 1e-6)
        radius = max(3.0, 0.5 * _equivalent_radius(tumour))
        cavity = _sphere(shape, point + 0.6 * radius * direction, radius)
        label[cavity & brain & np.isin(label, (0, 2))] = 5
    return label


def generate_case(shape: Sequence[int], rng: np.random.Generator,
                  enhancing: bool = True, features: Sequence[str] = ()) -> SyntheticCase:
    """Draw one synthetic case (a pure function of `shape`, the state of `rng` and `enhancing`).

    Args:
        shape: grid size (x, y, z), each at least `MIN_DIM` (32); BraTS' is (240, 240, 155).
            Brain, tissue and tumour scale with the shape.
        rng: the random generator to draw from, e.g. `np.random.default_rng([seed, case])`.
        enhancing: whether the tumour has an enhancing rim (label 4); if not, its core is
            necrosis (label 1) only. The same `rng` state gives the same anatomy either way.
        features: what else to draw (`case_features`): "lesions", "cyst", "cavity".

    Returns:
        A `SyntheticCase` of int16 images, uint8 labels (ET = 4), the uint8 tissue map and the
        float32 bias fields, all of `shape`.

    Raises:
        InputError: if `shape` is not three integers of at least 32.
    """
    shape = check_shape(shape)
    brain, tissue, center, semi_axes = _draw_brain(shape, rng)
    label = _draw_tumour(shape, brain, center, semi_axes, rng, enhancing)
    if features:
        label = _add_features(label, brain, center, semi_axes, rng, features, enhancing)
    tissue[label > 0] = TUMOUR

    bias = {}
    for key in MODALITY_KEYS:
        bias[key] = np.exp(np.float32(BIAS_AMPLITUDE) * smooth_field(shape, (4, 4, 4), rng))

    regions = np.where(label > 0, _LABEL_REGION[label], tissue)[brain]
    images = {}
    for key in MODALITY_KEYS:
        table = np.asarray(INTENSITIES[key], dtype=np.float32)
        noise = rng.standard_normal(regions.size, dtype=np.float32) * np.float32(NOISE_STD[key])
        values = table[regions] * bias[key][brain] + noise
        image = np.zeros(shape, dtype=np.int16)
        image[brain] = np.clip(np.rint(values), 1, np.iinfo(np.int16).max).astype(np.int16)
        images[key] = image
    return SyntheticCase(images=images, label=label, tissue=tissue, bias=bias)
