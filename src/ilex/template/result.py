"""What `build_template` returns: the template's path and, per image, its transforms or why it failed."""

from __future__ import annotations

from dataclasses import dataclass, field

from .state import TemplateFolder


@dataclass
class TemplateImage:
    """One image's result: its final transforms to the template (paths), or why it failed.

    `forward`: warp on the template grid (template voxel -> world in the image, as `register -t`
    with the template fixed); `inverse`: on the image grid; `moved`: the image on the template
    grid; `affine`: the affine part, image RAS -> template RAS (LTA, or ITK text with
    warp_format "itk"), also as `matrix`; `folding_percent`: voxels where `forward` folds."""

    id: str
    image: str
    status: str
    forward: str | None = None
    inverse: str | None = None
    moved: str | None = None
    affine: str | None = None
    matrix: list | None = None
    folding_percent: float | None = None
    error: str = ""


@dataclass
class TemplateResult:
    """`template` (nibabel image) at `path`; `images` per input; `rounds` the rows of rounds.csv."""

    path: str
    outdir: str
    images: list[TemplateImage]
    rounds: list[dict]
    _tmp: object = field(default=None, repr=False)

    @property
    def template(self):
        import nibabel as nib

        return nib.load(self.path)


def template_result(folder: TemplateFolder, inputs, state: dict) -> TemplateResult:
    """The result of a complete build, from its state."""
    images = []
    for item in inputs:
        info = state["images"].get(item.id, {"error": "not in the last round"})
        if "error" in info:
            images.append(TemplateImage(item.id, item.path, "failed", error=info["error"]))
        else:
            images.append(
                TemplateImage(
                    item.id,
                    item.path,
                    "done",
                    info["forward"],
                    info["inverse"],
                    info["moved"],
                    info["affine"],
                    info["matrix"],
                    info["folding_percent"],
                )
            )
    return TemplateResult(folder.template, folder.outdir, images, list(state["rounds"]))
