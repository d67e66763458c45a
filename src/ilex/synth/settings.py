"""Every number of SynthMorph's synthesis recipe, with where it comes from (docs/train.md, Synthesis).

Sources, cited by short names below:

* `train_synthmorph.py`: voxelmorph@ca28315 `scripts/tf/train_synthmorph.py`, its argparse defaults (the
  "brains" recipe of the TMI paper, the released brains-dice-vel-0.5-res-16 model);
* `labels_to_image`: neurite@95b2b56 `neurite/tf/models.py:labels_to_image` (the legacy model the script
  builds), whose defaults cover what the script does not pass;
* `generators.synthmorph`: voxelmorph@ca28315 `voxelmorph/generators.py:synthmorph` (flips, pairs);
* the demo: the SynthMorph demo notebook (synthmorph.voxelmorph.net), shapes from noise, and the voxelmorph
  README's shapes model `shapes-dice-vel-3-res-8-16-32`;
* TMI: Hoffmann et al., IEEE TMI 41(3) 2022, §III (generative model) and §IV (implementation).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class SynthSettings:
    """The synthesis recipe: a frozen, hashable value, so it can be a static argument of `jax.jit`.

    Defaults are the reference's brains recipe; `SynthSettings.shapes()` is the shapes recipe (larger,
    multi-scale deformations). Lengths are in voxels of the grid being synthesised; intensities in the
    reference's [0, 255] scale before normalisation. Ranges are (low, high) of a uniform draw.
    Change one number with `dataclasses.replace(settings, blur_std=0.0)`.
    """

    # Shapes: label maps from noise.
    n_shape_labels: int = 26  # TMI §IV: J = 26 labels
    shape_noise_scales: tuple[float, ...] = (32.0, 64.0)  # demo: draw_perlin(scales=(32, 64)) per label
    shape_noise_std: tuple[float, float] = (0.0, 1.0)  # demo: max_std=1 (draw_perlin's min_std=0)
    shape_warp_scales: tuple[float, ...] = (16.0, 32.0, 64.0)  # demo: the warp's draw_perlin(scales=(16, 32, 64))
    shape_warp_std: tuple[float, float] = (0.0, 16.0)  # demo: the warp's max_std=16 (a displacement, in voxels)
    shape_extent: int = 256  # demo: in_shape 256; shape lengths above scale by n / 256 (ilex's choice)

    # Deformation of a label map (each image of a pair draws its own).
    warp_std: float = 0.5  # train_synthmorph.py: --vel-std 0.5 (upper bound of the velocity SD)
    warp_res: tuple[float, ...] = (16.0,)  # train_synthmorph.py: --vel-res 16 (velocity drawn at 1/16)
    warp_modulate: bool = True  # labels_to_image: warp_modulate=True, SD ~ U(0, warp_std) per scale
    int_steps: int = 5  # labels_to_image: VecInt(int_steps=5), at half resolution

    # Intensities: per label a Gaussian N(mean, std^2); label 0 is the background.
    mean_range: tuple[float, float] = (25.0, 225.0)  # labels_to_image: mean_min 25, mean_max 225
    std_range: tuple[float, float] = (5.0, 25.0)  # labels_to_image: std_min 5, std_max 25
    background_mean_range: tuple[float, float] = (0.0, 225.0)  # labels_to_image: mean_min[0] = 0
    background_std_range: tuple[float, float] = (0.0, 25.0)  # labels_to_image: std_min[0] = 0
    zero_background: float = 0.2  # labels_to_image: zero_background=0.2, P(background set to 0)

    # Corruption.
    blur_std: float = 1.0  # train_synthmorph.py: --blur-std 1; per-axis SD ~ U(0, 1) (blur_modulate=True)
    bias_std: float = 0.3  # train_synthmorph.py: --bias-std 0.3; SD ~ U(0, 0.3) (bias_modulate=True)
    bias_res: tuple[float, ...] = (40.0,)  # train_synthmorph.py: --bias-res 40 (bias drawn at 1/40)
    noise_std: float = 0.0  # labels_to_image: none; ilex option, extra Gaussian noise SD ~ U(0, noise_std)
    normalize: bool = True  # labels_to_image: normalize=True, min-max to [0, 1] after clipping to [0, 255]
    gamma_std: float = 0.25  # train_synthmorph.py: --gamma 0.25; image ** exp(N(0, 0.25^2))

    # Pairs.
    flip: bool = True  # generators.synthmorph: flip=True, the same random axes for both maps of a pair

    def __post_init__(self):
        for name in ("n_shape_labels", "shape_extent", "int_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "int_steps" else 1):
                raise ValueError(f"{name}={value!r}: must be an integer ≥ {0 if name == 'int_steps' else 1}")
        for name in ("warp_std", "blur_std", "bias_std", "noise_std", "gamma_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be ≥ 0")
        for name in ("shape_noise_scales", "shape_warp_scales", "warp_res", "bias_res"):
            scales = getattr(self, name)
            if not isinstance(scales, tuple) or not scales or min(scales) < 1:
                raise ValueError(f"{name}={scales!r}: must be a non-empty tuple of factors ≥ 1")
        for name in (
            "shape_noise_std",
            "shape_warp_std",
            "mean_range",
            "std_range",
            "background_mean_range",
            "background_std_range",
        ):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name}={(lo, hi)!r}: must satisfy 0 ≤ low ≤ high")
        if not 0 <= self.zero_background <= 1:
            raise ValueError(f"zero_background={self.zero_background!r}: must lie in [0, 1]")

    @classmethod
    def shapes(cls, **changes) -> SynthSettings:
        """The shapes recipe: velocity SD up to 3 drawn at 1/8, 1/16 and 1/32 (the demo's
        `labels_to_image(warp_std=3, warp_res=(8, 16, 32))`, the released shapes-dice-vel-3-res-8-16-32)."""
        return cls(**{"warp_std": 3.0, "warp_res": (8.0, 16.0, 32.0), **changes})
