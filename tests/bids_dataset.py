"""A small BIDS dataset and a local TemplateFlow home, made from the public images tests/data.py fetches.

The dataset: Colin27's T1 seen through four known random transforms (tests/template_cohort.py, block-averaged 3x
with 3 mm voxels: a whole head on 60 x 72 x 60 voxels), laid out as sub-01, sub-02 with sessions 1 and 2, and sub-03.
The TemplateFlow home: tpl-MNI152NLin2009aAsym from nilearn's copy of MNI152 2009a, as the TemplateFlow archive
names it (res-01, the 1 mm image; res-03, the same block-averaged to 3 mm, which the registrations use to stay
fast), with template_description.json and a desc-brain image (which the lookup must not take).
"""

from __future__ import annotations

import json
import os
import shutil

import nibabel as nib
import numpy as np
from data import data_path
from template_cohort import _block_mean, make_cohort

TEMPLATE = "MNI152NLin2009aAsym"
IMAGES = (("01", None), ("02", "1"), ("02", "2"), ("03", None))


def templateflow_home(root: str | os.PathLike) -> str:
    """Lay out a TemplateFlow home in `root`; returns its path."""
    root = os.fspath(root)
    folder = os.path.join(root, f"tpl-{TEMPLATE}")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(root, "dataset_description.json"), "w") as f:
        json.dump({"Name": "TemplateFlow (test copy)", "BIDSVersion": "1.1.0"}, f)
    with open(os.path.join(folder, "template_description.json"), "w") as f:
        json.dump({"Identifier": TEMPLATE, "Name": "ICBM 2009a Nonlinear Asymmetric (nilearn's copy)"}, f)
    mni = nib.load(data_path("mni2009a_t1.nii.gz"))
    shutil.copy(data_path("mni2009a_t1.nii.gz"), os.path.join(folder, f"tpl-{TEMPLATE}_res-01_T1w.nii.gz"))
    data = np.asarray(mni.dataobj, np.float32)
    small = _block_mean(data, 3)
    affine = mni.affine.copy()
    affine[:3, :3] *= 3  # the block's centre: the 1 mm grid's voxel 1 of each block
    affine[:3, 3] = mni.affine[:3, :3] @ np.ones(3) + mni.affine[:3, 3]
    nib.save(nib.Nifti1Image(small, affine), os.path.join(folder, f"tpl-{TEMPLATE}_res-03_T1w.nii.gz"))
    brain = np.where(small > np.percentile(small, 60), small, 0).astype(np.float32)
    nib.save(nib.Nifti1Image(brain, affine), os.path.join(folder, f"tpl-{TEMPLATE}_res-03_desc-brain_T1w.nii.gz"))
    return root


def bids_dataset(root: str | os.PathLike) -> dict:
    """Write the BIDS dataset under `root`/bids; returns {"bids": path, "images": {prefix: path}, "cohort": ...}."""
    root = os.fspath(root)
    cohort = make_cohort(
        os.path.join(root, "cohort"),
        data_path("colin27_t1.nii.gz"),
        data_path("colin27_aal.nii.gz"),
        n=len(IMAGES),
        step=3,
        seed=0,
        voxel_mm=3.0,
    )
    bids = os.path.join(root, "bids")
    images = {}
    for image, (sub, ses) in zip(cohort["images"], IMAGES, strict=True):
        folder = os.path.join(bids, f"sub-{sub}", *([f"ses-{ses}"] if ses else []), "anat")
        os.makedirs(folder, exist_ok=True)
        prefix = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
        images[prefix] = os.path.join(folder, f"{prefix}_T1w.nii.gz")
        shutil.copy(image, images[prefix])
    with open(os.path.join(bids, "dataset_description.json"), "w") as f:
        json.dump({"Name": "ilex test dataset", "BIDSVersion": "1.10.0", "DatasetType": "raw"}, f)
    return {"bids": bids, "images": images, "cohort": cohort}
