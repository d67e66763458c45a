"""What every round of a template shares (`TemplateSettings`): `ilex batch`'s settings and the loop's own."""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..batch.settings import BatchSettings
from ..errors import OptionError
from ..registration.methods import DEFAULT_METHOD, OptimizeAffineMethod, SynthMorphAffineMethod


@dataclass(frozen=True)
class TemplateSettings(BatchSettings):
    """What every round shares: `ilex batch`'s settings (`weights`: () for no weights,
    `-m optimize`; a pair (affine, deform) gives methods that need an affine stage their
    detector; `method` a name, joint by default), and the loop's own. `step` is the shape
    update's step (1: the whole inverse of the mean transform); `sharpen` applies Laplacian
    sharpening to each new template; `warp_format` is that of the final per-image warps
    (freesurfer or itk: NIfTI warps; h5: ITK HDF5 composite transforms, an affine and a
    displacement field, as `antsRegistration --write-composite-transform` writes);
    `exclude_flagged` leaves the images whose registration the rules flag out of that round's
    average (they are named either way). `average` is how a round's moved images are averaged:
    "mean" (a deformable template's only one), or "median" (a linear template's default,
    `linear.py`). `fine_every_round`: every round registers as the last does; by default the
    rounds before the last add the method's `intermediate_round_options` (the optimiser leaves out
    its finest level there: a template that will still change is not worth registering to at its
    finest detail)."""

    method: str = DEFAULT_METHOD
    step: float = 1.0
    sharpen: bool = False
    exclude_flagged: bool = False
    average: str = "mean"
    fine_every_round: bool = False

    def check(self) -> None:
        if not 0.0 < self.step <= 1.0:
            raise OptionError("the shape update's step must lie in (0, 1]", argument="step", value=self.step)
        if self.warp_format not in ("freesurfer", "itk", "h5"):
            raise OptionError("choose freesurfer, itk or h5", argument="warp_format", value=self.warp_format)
        from ..registration.methods import method_class, unaligned_weight_files

        if self.average not in ("median", "mean"):
            raise OptionError("choose median or mean", argument="average", value=self.average)
        if self.average != "mean" and not self.linear:
            raise OptionError(
                "a deformable template averages with the mean (its sums are the mean's); the median is for "
                "linear templates (-m rigid or affine)",
                argument="average",
                value=self.average,
            )
        facts = method_class(self.method)
        files = unaligned_weight_files(facts)
        if facts.prior_affine and not (isinstance(self.weights, tuple) and len(self.weights) == len(files)):
            raise OptionError(
                f"-m {self.method}: each round starts with an affine stage (-m {facts.prior_affine}), which "
                f"needs its weights too: give -w {' -w '.join(files)}"
            )

    def batch(self, method=None, final: bool = True) -> BatchSettings:
        """The `BatchSettings` of a round's registrations (intermediate warps in FreeSurfer's
        format); those of a round before the last (not `final`) add the method's
        `intermediate_round_options` unless `fine_every_round`."""
        shared = {f.name: getattr(self, f.name) for f in fields(BatchSettings)}
        if method is None and not final and not self.fine_every_round:
            from ..registration.methods import method_class

            facts = method_class(self.method)
            if facts.takes_optimiser_options and facts.intermediate_round_options:
                shared["options"] = {**self.optimiser_options, **dict(facts.intermediate_round_options)}
        return BatchSettings(
            **{**shared, "method": self.method if method is None else method, "warp_format": "freesurfer"}
        )

    def affine_method(self):
        """The method of round 0's affine stage, which answers with a matrix: the method's own
        `prior_affine` (deform's: SynthMorph's detector); SynthMorph's detector for a method that
        loads one (joint); else the optimiser's affine stage alone, which needs no weights."""
        from ..registration.methods import method_class

        facts = method_class(self.method)
        if facts.prior_affine:
            return facts.prior_affine
        if "detector" in facts.weight_roles:
            return SynthMorphAffineMethod.name
        return OptimizeAffineMethod(hyper=self.effective_hyper)

    @property
    def linear(self) -> bool:
        """Whether the method answers with a matrix (`Method.yields_matrix`): a linear template."""
        from ..registration.methods import method_class

        return method_class(self.method).yields_matrix

    @property
    def rigid(self) -> bool:
        """Whether the method is rigid (SynthMorph's detector whose class says `rigid`): each matrix
        is then kept rigid (`linear.rigid_part`), whichever method computed it (the optimiser's
        affine stage stands in without weights)."""
        from ..registration.methods import method_class

        cls = method_class(self.method)
        return issubclass(cls, SynthMorphAffineMethod) and bool(cls.rigid)

    def linear_method(self):
        """What a linear template's rounds run: the method itself when it loads no weights or they
        are given; else (no weights) the optimiser's affine stage, which needs none."""
        from ..registration.methods import method_class

        if method_class(self.method).weight_files and not self.weights:
            return OptimizeAffineMethod(hyper=self.effective_hyper)
        return self.method

    @property
    def prior_affine(self) -> str | None:
        """The method each round's affine stage runs before `method` (`Method.prior_affine`), or None."""
        from ..registration.methods import method_class

        return method_class(self.method).prior_affine
