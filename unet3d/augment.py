"""Data augmentation, channels-last: images (x, y, z, channels), label maps (x, y, z).

Two families:

- The legacy port's: the 48 axis permutations of a cube (`generate_permutation_keys`,
  `random_permutation_key`, `permute_data`, `reverse_permute_data`, each exactly invertible) and
  `augment_data` (random per-axis scaling about the centre and random flips).
- The paper / nnU-Net BraTS recipe (`AugmentConfig`, `sample_spatial_transform`, `extract_patch`,
  `augment_intensities`, `mirror`): rotation, per-axis scaling and elastic deformation combined into
  one mapping from output voxels to source coordinates, evaluated only for the output patch and
  interpolated straight from the volume (linear for images, nearest for labels, both from the same
  coordinates so they stay aligned); then mirroring, gamma, brightness and Gaussian noise.

Every random draw comes from the `numpy.random.Generator` passed in: same seed, same output.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Sequence

import numba
import numpy as np

from unet3d.errors import InputError

PermutationKey = tuple[tuple[int, int], int, int, int, int]


# --------------------------------------------------------------------------- legacy permutations

def generate_permutation_keys() -> set[PermutationKey]:
    """The 48 keys ((rotate_y, rotate_z), flip_x, flip_y, flip_z, transpose) of the cube's symmetries.

    rotate_y / rotate_z count quarter turns in the (x, z) and (y, z) planes, drawn from
    {(0, 0), (0, 1), (1, 1)}; the flips reverse an axis; transpose swaps x and z.
    """
    rotations = itertools.combinations_with_replacement(range(2), 2)
    return set(itertools.product(rotations, range(2), range(2), range(2), range(2)))


_SORTED_KEYS = sorted(generate_permutation_keys())


def random_permutation_key(rng: np.random.Generator | None = None) -> PermutationKey:
    """One of the 48 keys, uniformly (`rng` defaults to a fresh unseeded generator)."""
    rng = np.random.default_rng() if rng is None else rng
    return _SORTED_KEYS[int(rng.integers(len(_SORTED_KEYS)))]


def _check_cube(data: np.ndarray) -> None:
    if not data.shape[0] == data.shape[1] == data.shape[2]:
        raise InputError(f"permutations need cubic patches; got spatial shape {data.shape[:3]} "
                         "(use a cubic --patch_shape or turn permutation off)")


def permute_data(data: np.ndarray, key: PermutationKey) -> np.ndarray:
    """Apply permutation `key` to `data` (x, y, z) or (x, y, z, channels), a cube; returns a copy."""
    _check_cube(data)
    (rotate_y, rotate_z), flip_x, flip_y, flip_z, transpose = key
    if rotate_y:
        data = np.rot90(data, rotate_y, axes=(0, 2))
    if rotate_z:
        data = np.rot90(data, rotate_z, axes=(1, 2))
    if flip_x:
        data = data[::-1]
    if flip_y:
        data = data[:, ::-1]
    if flip_z:
        data = data[:, :, ::-1]
    if transpose:
        data = np.swapaxes(data, 0, 2)
    return np.ascontiguousarray(data)


def reverse_permute_data(data: np.ndarray, key: PermutationKey) -> np.ndarray:
    """The exact inverse of `permute_data(data, key)`."""
    _check_cube(data)
    (rotate_y, rotate_z), flip_x, flip_y, flip_z, transpose = key
    if transpose:
        data = np.swapaxes(data, 0, 2)
    if flip_z:
        data = data[:, :, ::-1]
    if flip_y:
        data = data[:, ::-1]
    if flip_x:
        data = data[::-1]
    if rotate_z:
        data = np.rot90(data, -rotate_z, axes=(1, 2))
    if rotate_y:
        data = np.rot90(data, -rotate_y, axes=(0, 2))
    return np.ascontiguousarray(data)


# --------------------------------------------------------------------------- interpolation

@numba.njit(cache=True, nogil=True)
def _interpolate(volume, label, coords, out, out_label):  # pragma: no cover - compiled
    """Trilinear `volume` (x, y, z, c) and nearest `label` (x, y, z) at `coords` (3, px, py, pz);
    points outside the volume read 0."""
    nx, ny, nz, nc = volume.shape
    with_label = label.shape[0] > 0
    one = np.float32(1.0)
    for i in range(coords.shape[1]):
        for j in range(coords.shape[2]):
            for k in range(coords.shape[3]):
                x, y, z = coords[0, i, j, k], coords[1, i, j, k], coords[2, i, j, k]
                x0, y0, z0 = int(np.floor(x)), int(np.floor(y)), int(np.floor(z))
                fx, fy, fz = x - x0, y - y0, z - z0
                gx, gy, gz = one - fx, one - fy, one - fz
                if 0 <= x0 < nx - 1 and 0 <= y0 < ny - 1 and 0 <= z0 < nz - 1:
                    for c in range(nc):  # all 8 neighbours inside: no checks
                        out[i, j, k, c] = (
                            gx * (gy * (gz * volume[x0, y0, z0, c] + fz * volume[x0, y0, z0 + 1, c])
                                  + fy * (gz * volume[x0, y0 + 1, z0, c]
                                          + fz * volume[x0, y0 + 1, z0 + 1, c]))
                            + fx * (gy * (gz * volume[x0 + 1, y0, z0, c]
                                          + fz * volume[x0 + 1, y0, z0 + 1, c])
                                    + fy * (gz * volume[x0 + 1, y0 + 1, z0, c]
                                            + fz * volume[x0 + 1, y0 + 1, z0 + 1, c])))
                else:
                    for c in range(nc):
                        value = np.float32(0.0)
                        for n in range(8):
                            dx, dy, dz = n >> 2, (n >> 1) & 1, n & 1
                            xi, yi, zi = x0 + dx, y0 + dy, z0 + dz
                            if 0 <= xi < nx and 0 <= yi < ny and 0 <= zi < nz:
                                value += ((fx if dx else gx) * (fy if dy else gy)
                                          * (fz if dz else gz) * volume[xi, yi, zi, c])
                        out[i, j, k, c] = value
                if with_label:
                    xi, yi, zi = int(np.floor(x + 0.5)), int(np.floor(y + 0.5)), int(np.floor(z + 0.5))
                    inside = 0 <= xi < nx and 0 <= yi < ny and 0 <= zi < nz
                    out_label[i, j, k] = label[xi, yi, zi] if inside else 0


def interpolate(volume: np.ndarray, coords: np.ndarray, label: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """Sample `volume` (x, y, z, channels) linearly and `label` (x, y, z) by nearest neighbour at
    voxel coordinates `coords` (3, px, py, pz); points outside the volume read 0.

    Returns (float32 (px, py, pz, channels), label patch of label's dtype or None).
    """
    volume = np.ascontiguousarray(volume, dtype=np.float32)
    coords = np.ascontiguousarray(coords, dtype=np.float32)
    out = np.empty((*coords.shape[1:], volume.shape[-1]), dtype=np.float32)
    if label is None:
        _interpolate(volume, np.zeros((0, 0, 0), np.uint8), coords, out, np.zeros((0, 0, 0), np.uint8))
        return out, None
    label = np.ascontiguousarray(label)
    out_label = np.empty(coords.shape[1:], dtype=label.dtype)
    _interpolate(volume, label, coords, out, out_label)
    return out, out_label


def _grid_coordinates(matrix: np.ndarray, centre: Sequence[float], patch_shape: Sequence[int],
                      displacement: np.ndarray | None = None) -> np.ndarray:
    """Source coordinates (3, px, py, pz) = centre + matrix @ (o - patch centre) [+ displacement]."""
    axes = [np.arange(n, dtype=np.float32) - (n - 1) / 2 for n in patch_shape]
    coords = np.empty((3, *patch_shape), dtype=np.float32)
    for row in range(3):
        coords[row] = (matrix[row, 0] * axes[0][:, None, None] + matrix[row, 1] * axes[1][None, :, None]
                       + matrix[row, 2] * axes[2][None, None, :] + centre[row])
    if displacement is not None:
        coords += displacement
    return coords


def augment_data(data: np.ndarray, truth: np.ndarray, scale_deviation: float | None = None,
                 flip: bool = True, rng: np.random.Generator | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The legacy port's augmentation: random scaling about the centre and random flips.

    Args:
        data: image (x, y, z, channels).
        truth: label map (x, y, z).
        scale_deviation: per-axis scale factors are drawn from N(1, scale_deviation) (None: none);
            a factor s > 1 enlarges the content by s.
        flip: flip each axis with probability 0.5.
        rng: random generator (default: a fresh unseeded one).

    Returns:
        (data float32, truth) on the same grid; images are interpolated linearly and labels by
        nearest neighbour from the same coordinates, outside the source reads 0.
    """
    rng = np.random.default_rng() if rng is None else rng
    scale = (rng.normal(1.0, scale_deviation, 3) if scale_deviation else np.ones(3))
    signs = np.where(rng.random(3) < 0.5, -1.0, 1.0) if flip else np.ones(3)
    matrix = np.diag(signs / scale)
    centre = [(n - 1) / 2 for n in data.shape[:3]]
    coords = _grid_coordinates(matrix, centre, data.shape[:3])
    return interpolate(data, coords, truth)


# --------------------------------------------------------------------------- paper recipe

@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """The paper / nnU-Net BraTS augmentation; every probability is per sample.

    Intensities are in store units (the paper's [0, 1] rescaling of z-scores clipped to [-5, 5],
    so 0.1 is one standard deviation of the brain).
    """

    p_rotation: float = 0.3
    max_rotation_degrees: float = 30.0        # uniform in +-this about each axis
    p_scaling: float = 0.3
    scale_range: tuple[float, float] = (0.65, 1.6)   # >1 zooms out (a larger region is sampled)
    scale_per_axis: bool = True
    p_elastic: float = 0.3
    elastic_magnitude: tuple[float, float] = (0.0, 4.0)  # control-point displacement std, voxels
    elastic_spacing: int = 16                 # control-point spacing of the cubic B-spline, voxels
    mirror_axes: tuple[int, ...] = (0, 1, 2)  # each flipped with probability 0.5
    p_gamma: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)
    p_brightness: float = 0.3
    brightness_range: tuple[float, float] = (0.7, 1.3)
    p_noise: float = 0.1
    noise_std_range: tuple[float, float] = (0.0, 0.03)

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name.startswith("p_") and not 0.0 <= value <= 1.0:
                raise InputError(f"AugmentConfig.{field.name}={value}: a probability is in [0, 1]")
        if min(self.scale_range) <= 0 or self.scale_range[0] > self.scale_range[1]:
            raise InputError(f"AugmentConfig.scale_range={self.scale_range}: need 0 < low <= high")
        if self.elastic_spacing < 2:
            raise InputError(f"AugmentConfig.elastic_spacing={self.elastic_spacing}: need >= 2 voxels")
        if not set(self.mirror_axes) <= {0, 1, 2}:
            raise InputError(f"AugmentConfig.mirror_axes={self.mirror_axes}: axes are 0, 1, 2")


#: The augmentations a recipe names (`TrainConfig.augmentation`): nnU-Net's BraTS settings, and
#: the paper's list (Isensee et al. 2017: rotation, scaling, elastic deformation, gamma,
#: mirroring; no brightness or noise, one scale for all axes: nnU-Net added those later). The
#: paper gives no probabilities or ranges: nnU-Net's are kept for what it lists.
AUGMENTATIONS: dict[str, AugmentConfig] = {
    "nnunet": AugmentConfig(),
    "paper2017": AugmentConfig(scale_per_axis=False, p_brightness=0.0, p_noise=0.0),
}


@dataclasses.dataclass
class SpatialTransform:
    """Output voxel o of a patch -> source coordinate centre + matrix @ (o - patch centre) + d(o).

    `displacement` is the elastic field d (3, px, py, pz) or None.
    """

    matrix: np.ndarray
    displacement: np.ndarray | None = None

    @property
    def is_identity(self) -> bool:
        return self.displacement is None and np.array_equal(self.matrix, np.eye(3))


def rotation_matrix(angles: Sequence[float]) -> np.ndarray:
    """Rotation about x, then y, then z by `angles` (radians), 3x3."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _bspline_weights(n: int, spacing: int, n_control: int) -> np.ndarray:
    """Cubic B-spline weights (n, n_control) spreading control points over n voxels."""
    t = np.arange(n) / spacing + 1.0  # control point 0 lies one spacing before voxel 0
    d = np.abs(t[:, None] - np.arange(n_control)[None, :])
    return np.where(d < 1, 2 / 3 - d ** 2 + d ** 3 / 2, np.where(d < 2, (2 - d) ** 3 / 6, 0.0))


def elastic_displacement(rng: np.random.Generator, patch_shape: Sequence[int], magnitude: float,
                         spacing: int) -> np.ndarray:
    """A smooth random displacement field (3, px, py, pz), float32, in voxels.

    Gaussian control-point displacements (std `magnitude`) every `spacing` voxels, spread by a
    cubic B-spline (separable, so it costs a few small matrix products, not a 3D filter).
    """
    n_control = [n // spacing + 4 for n in patch_shape]
    weights = [_bspline_weights(n, spacing, m) for n, m in zip(patch_shape, n_control)]
    field = np.empty((3, *patch_shape), dtype=np.float32)
    for row in range(3):
        control = rng.normal(0.0, magnitude, n_control)
        field[row] = np.einsum("ai,bj,ck,ijk->abc", *weights, control, optimize=True)
    return field


def _draw_scale(rng: np.random.Generator, scale_range: tuple[float, float]) -> float:
    """nnU-Net's draw when the range straddles 1: half the time shrink (low..1), half enlarge
    (1..high), so zooming in and out are equally likely; uniform otherwise."""
    low, high = scale_range
    if low < 1 < high:
        return float(rng.uniform(low, 1.0) if rng.random() < 0.5 else rng.uniform(1.0, high))
    return float(rng.uniform(low, high))


def sample_spatial_transform(rng: np.random.Generator, config: AugmentConfig,
                             patch_shape: Sequence[int]) -> SpatialTransform:
    """Draw rotation, scaling and elastic deformation (each with its probability)."""
    matrix = np.eye(3)
    if rng.random() < config.p_rotation:
        limit = np.deg2rad(config.max_rotation_degrees)
        matrix = rotation_matrix(rng.uniform(-limit, limit, 3)) @ matrix
    if rng.random() < config.p_scaling:
        n = 3 if config.scale_per_axis else 1
        scale = [_draw_scale(rng, config.scale_range) for _ in range(n)]
        matrix = matrix @ np.diag(np.broadcast_to(scale, 3))
    displacement = None
    if rng.random() < config.p_elastic:
        magnitude = rng.uniform(*config.elastic_magnitude)
        displacement = elastic_displacement(rng, patch_shape, magnitude, config.elastic_spacing)
    return SpatialTransform(matrix, displacement)


def extract_patch(read_region, volume_shape: Sequence[int], centre: Sequence[float],
                  patch_shape: Sequence[int], transform: SpatialTransform | None = None
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """The patch of `patch_shape` centred at `centre` (voxel coordinates), seen through `transform`.

    Args:
        read_region: callable(corner, shape) -> (image (x, y, z, channels), label (x, y, z) or
            None) reading that box of the volume, 0 outside it (`DataStore.read_patch` bound to a
            case fits).
        volume_shape: (x, y, z) extent of the volume.
        centre: source position of the patch centre; for an identity transform it must make the
            corner, centre - (patch_shape - 1) / 2, integral.
        transform: spatial transform, None for a plain crop.

    Only the part of the volume the transformed patch covers is read, and interpolation is
    computed only at the patch's voxels; points outside the volume read 0.
    """
    patch_shape = tuple(int(n) for n in patch_shape)
    corner = [int(round(c - (n - 1) / 2)) for c, n in zip(centre, patch_shape)]
    if transform is None or transform.is_identity:
        return read_region(corner, patch_shape)
    coords = _grid_coordinates(transform.matrix, centre, patch_shape, transform.displacement)
    flat = coords.reshape(3, -1)
    low = np.maximum(np.floor(flat.min(axis=1)).astype(int), 0)
    high = np.minimum(np.floor(flat.max(axis=1)).astype(int) + 2, volume_shape)
    if np.any(high <= low):  # the whole patch lies outside the volume
        return read_region(corner, patch_shape)
    image, label = read_region(low, high - low)
    coords -= low.astype(np.float32)[:, None, None, None]
    return interpolate(image, coords, label)


def mirror(rng: np.random.Generator, axes: Sequence[int], *arrays: np.ndarray | None
           ) -> list[np.ndarray | None]:
    """Flip each of `axes` with probability 0.5, the same flips for every array."""
    flips = tuple(axis for axis in axes if rng.random() < 0.5)
    return [a if a is None or not flips else np.ascontiguousarray(np.flip(a, flips)) for a in arrays]


def augment_intensities(rng: np.random.Generator, image: np.ndarray, config: AugmentConfig
                        ) -> np.ndarray:
    """Gamma, brightness and Gaussian noise, drawn per channel, in place on float32 `image`
    (x, y, z, channels); returns it."""
    for channel in range(image.shape[-1]):
        view = image[..., channel]
        if rng.random() < config.p_gamma:
            np.maximum(view, 0.0, out=view)
            np.power(view, np.float32(rng.uniform(*config.gamma_range)), out=view)
        if rng.random() < config.p_brightness:
            view *= np.float32(rng.uniform(*config.brightness_range))
        if rng.random() < config.p_noise:
            std = rng.uniform(*config.noise_std_range)
            view += rng.standard_normal(view.shape, dtype=np.float32) * np.float32(std)
    return image
