"""The affinity-model interface, and the classical baseline that needs no training.

An affinity model maps a block of EM (z, y, x) to affinities (C, z, y, x) in [0, 1]: channel c at
voxel v is the affinity between v and v + offsets[c] (offsets point backwards, e.g. (-1, 0, 0));
1 means the same object. The first three channels are always the nearest neighbours along z, y, x,
which is all the watershed and the region adjacency graph use. Learned models (FGNet, the 3D U-Net
student) implement the same interface.

The baseline, :class:`IntensityBaseline`, reads membranes off the image: FIB-SEM membranes are thin
dark sheets, so a voxel's boundary evidence is a mix of a ridge (sheet) detector, the largest
eigenvalue of the Hessian of the Gaussian-smoothed image, and plain darkness. Affinity between two
neighbours is one minus the larger boundary evidence of the two.
"""

from __future__ import annotations

import contextlib
import itertools
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

import numpy as np
from scipy import ndimage

from segmentation.errors import InputError

if TYPE_CHECKING:
    from segmentation.volume import Volume

NEAREST = ((-1, 0, 0), (0, -1, 0), (0, 0, -1))


class AffinityModel(ABC):
    """Block of EM in, affinities out. ``context`` voxels of input are needed on every side."""

    name: str = "model"
    offsets: tuple[tuple[int, int, int], ...] = NEAREST
    whole_sections: bool = False  # True: blocks must span whole sections (2D models on SAM2)
    # True: predict spreads over the threads it is given (``threads``), so that on one machine
    # one process with every core predicts faster than a worker per core (a network)
    threaded: bool = False

    @property
    @abstractmethod
    def context(self) -> tuple[int, int, int]:
        """Voxels of image needed beyond an output block on each side, z, y, x."""

    def fit(self, samples: Sequence[np.ndarray]) -> None:
        """Set global normalisation from samples of the volume (the same for every block):
        crops spread over it, the central one first."""

    @abstractmethod
    def predict(self, image: np.ndarray) -> np.ndarray:
        """Affinities (C, z, y, x), float32 in [0, 1], for every voxel of ``image``."""

    @contextlib.contextmanager
    def threads(self, count: Optional[int]) -> Iterator[None]:
        """Predict with ``count`` CPU threads for a while (None: as many as it would anyway);
        a model that starts no threads of its own ignores it."""
        yield

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "offsets": [list(o) for o in self.offsets]}

    @property
    def title(self) -> str:
        """How messages name this model."""
        return f"affinity model {self.name}"


# Edge of the calibration crops. The statistics' cost grows with the crops' voxels (every crop
# runs through the whole network), and the student was trained on 32 x 96 x 96 patches, each
# normalised by its own statistics. Measured with five crops (the 3D U-Net, `python -m
# benchmarks models`' scoring; fit time on the whole demo, one process per size):
#   edge 128: 23-24 s, VOI 1.184 on the validation sections, 0.332 on gala_train
#   edge 112: 15-16 s, 1.170 and 0.332
#   edge  96:  8-9 s,  1.199 and 0.377
#   edge  80:  (less), 1.185 and 0.387
# 112 is the smallest that costs nothing in accuracy. Part of the affinity stage's key: a
# resumed run never mixes blocks normalised by different statistics.
CALIBRATION_CROP = 112


def calibration_samples(image: Volume, size: int = CALIBRATION_CROP, count: int = 4
                        ) -> list[np.ndarray]:
    """Crops for a model's global normalisation, which every block then shares: the central
    one first, then up to ``count`` more on a grid that spreads them over the volume
    (normalisation statistics from one part of the demo differ from the pooled ones by 1.6 to
    3.2 / 255 in the affinities and cost up to 0.05 bits of VOI)."""
    def start(centre: int, n: int) -> int:
        return max(0, min(centre - size // 2, n - size))

    grid = [np.linspace(size // 2, max(size // 2, n - size // 2), -(-n // size)).round()
            .astype(int) for n in image.shape]
    centres = list(itertools.product(*grid))
    picked = np.random.default_rng(0).choice(len(centres), min(count, len(centres)),
                                             replace=False)  # the same crops every run
    chosen = [centres[int(i)] for i in sorted(picked)]
    starts = [tuple(start(n // 2, n) for n in image.shape)]
    starts += [tuple(start(int(c), n) for c, n in zip(centre, image.shape)) for centre in chosen]
    return [image.read(*(slice(s, s + min(size, n)) for s, n in zip(corner, image.shape)))
            for corner in dict.fromkeys(starts)]


def neighbour_slices(c: int, distance: int = 1) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """(voxels v, voxels v - d e_c) along axis c: the pairs that affinity channel c joins."""
    here, there = [slice(None)] * 3, [slice(None)] * 3
    here[c], there[c] = slice(distance, None), slice(None, -distance)
    return tuple(here), tuple(there)


def affinities_from_boundary(boundary: np.ndarray) -> np.ndarray:
    """Nearest-neighbour affinities from a boundary map: 1 - max(b(v), b(v - e_c))."""
    affinities = np.empty((3,) + boundary.shape, np.float32)
    for c in range(3):
        here, there = neighbour_slices(c)
        np.subtract(1.0, boundary, out=affinities[c])
        affinities[c][here] = 1.0 - np.maximum(boundary[here], boundary[there])
    return affinities


def boundary_from_affinities(affinities: np.ndarray) -> np.ndarray:
    """uint8 boundary map (255 = certain boundary) from the nearest-neighbour channels.

    Accepts float affinities in [0, 1] or uint8 affinities in [0, 255].
    """
    if affinities.ndim != 4 or affinities.shape[0] < 3:
        raise InputError(f"affinities must be (C >= 3, z, y, x), got shape {affinities.shape}")
    nearest = affinities[:3]
    if nearest.dtype == np.uint8:
        # 255 - round(sum / 3) in integers (a third never ties): ten times the float mean's
        # speed, and the pipeline computes it twice for every voxel
        total = nearest[0].astype(np.uint16)
        total += nearest[1]
        total += nearest[2]
        total += 1
        total //= 3
        return (255 - total).astype(np.uint8)
    if np.isnan(nearest).any():
        raise InputError("affinities contain NaN values")
    mean = nearest.mean(axis=0, dtype=np.float32)
    return ((1.0 - np.clip(mean, 0.0, 1.0)) * 255.0).round().astype(np.uint8)


def quantize(affinities: np.ndarray, source: str = "the affinity model") -> np.ndarray:
    """Float affinities in [0, 1] to uint8 0..255, the form they are stored in. NaN has no
    uint8 value (a cast would make it 0, 'certain boundary', silently): it is an error that
    names where the affinities came from."""
    if np.isnan(affinities).any():
        raise InputError(f"{source} predicted NaN affinities ({int(np.isnan(affinities).sum())}"
                         f" values): its weights are broken, or it was given a non-finite image")
    return (np.clip(affinities, 0.0, 1.0) * 255.0).round().astype(np.uint8)


@dataclass
class IntensityBaseline(AffinityModel):
    """Membranes from image intensity: ridge (Hessian) plus darkness, no training needed."""

    voxel_size: Sequence[float] = (10.0, 10.0, 10.0)  # nm, z, y, x
    sigma_nm: float = 15.0  # smoothing scale of both cues
    ridge_weight: float = 0.7  # the rest is darkness
    low: Optional[float] = None  # intensity that counts as black (fit: 1st percentile)
    high: Optional[float] = None  # intensity that counts as white (fit: 99th percentile)
    ridge_scale: Optional[float] = None  # ridge strength that counts as certain (fit: 99th pct.)
    name: str = field(default="intensity-baseline", init=False)

    @property
    def sigma(self) -> tuple[float, float, float]:
        return tuple(self.sigma_nm / v for v in self.voxel_size)

    @property
    def context(self) -> tuple[int, int, int]:
        return tuple(int(np.ceil(4 * s)) + 1 for s in self.sigma)

    def fit(self, samples: Sequence[np.ndarray]) -> None:
        sample = samples[0]  # the central crop
        image = sample.astype(np.float32)
        self.low, self.high = (float(v) for v in np.percentile(image, [1, 99]))
        if self.high - self.low < 1.0:  # a flat sample says nothing about contrast
            info = np.iinfo(sample.dtype) if sample.dtype.kind in "ui" else None
            self.low, self.high = (float(info.min), float(info.max)) if info else (0.0, 1.0)
        ridge = self._ridge(image)
        # a floor, so that noise in a membrane-free sample is not read as membranes
        self.ridge_scale = max(float(np.percentile(ridge, 99)), 0.01 * (self.high - self.low))

    def predict(self, image: np.ndarray) -> np.ndarray:
        if self.low is None or self.ridge_scale is None:
            self.fit([image])
        return affinities_from_boundary(self.boundary(image))

    def boundary(self, image: np.ndarray) -> np.ndarray:
        image = image.astype(np.float32, copy=False)
        smooth = ndimage.gaussian_filter(image, self.sigma)
        dark = 1.0 - np.clip((smooth - self.low) / (self.high - self.low), 0.0, 1.0)
        ridge = np.clip(self._ridge(image) / self.ridge_scale, 0.0, 1.0)
        return (self.ridge_weight * ridge + (1.0 - self.ridge_weight) * dark).astype(np.float32)

    def _ridge(self, image: np.ndarray) -> np.ndarray:
        """Largest Hessian eigenvalue (positive across a dark sheet), in closed form."""
        sigma = self.sigma

        def d(order):
            return ndimage.gaussian_filter(image, sigma, order=order)

        hzz, hyy, hxx = d((2, 0, 0)), d((0, 2, 0)), d((0, 0, 2))
        hzy, hzx, hyx = d((1, 1, 0)), d((1, 0, 1)), d((0, 1, 1))
        return largest_eigenvalue(hzz, hyy, hxx, hzy, hzx, hyx)

    def describe(self) -> dict[str, Any]:
        params = {k: v for k, v in asdict(self).items() if k != "name"}
        params["voxel_size"] = list(self.voxel_size)
        return {**super().describe(), "params": params}


def largest_eigenvalue(a, b, c, d, e, f) -> np.ndarray:
    """Largest eigenvalue of the symmetric matrices [[a, d, e], [d, b, f], [e, f, c]]."""
    q = (a + b + c) / 3.0
    off = d * d + e * e + f * f
    p = np.sqrt(((a - q) ** 2 + (b - q) ** 2 + (c - q) ** 2 + 2.0 * off) / 6.0) + 1e-12
    ba, bb, bc = (a - q) / p, (b - q) / p, (c - q) / p
    bd, be, bf = d / p, e / p, f / p
    det = ba * (bb * bc - bf * bf) - bd * (bd * bc - bf * be) + be * (bd * bf - bb * be)
    phi = np.arccos(np.clip(det / 2.0, -1.0, 1.0)) / 3.0
    return (q + 2.0 * p * np.cos(phi)).astype(np.float32)
