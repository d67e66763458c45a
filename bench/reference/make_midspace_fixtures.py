"""Golden fixtures for `-m deform -i` and `-m deform -M -i` (mid-space initialisation), from the
TensorFlow reference.

Runs FreeSurfer's own `register()` (mri_synthmorph/synthmorph/registration.py @2015394, imported from
a local copy, never vendored) on TensorFlow 2.13 + voxelmorph @ca28315 + neurite @95b2b56 with the
reduced-width random deformable weights of tests/fixtures/net_e64_mixed.h5, on Colin27 -> MNI152
2009a, initialised with the reference's own affine LTA (tests/fixtures/affine_lta/colin_to_mni_affine_fw.lta,
what `mri_synthmorph -m affine -t` wrote for that pair), and writes

    tests/fixtures/deform_init_e64_colin_to_mni.npz

with, for each of `init` (-i) and `mid` (-M -i): the network-to-voxel matrices the reference used, the
-d network inputs' vox2ras, and the -t/-T warps and -o/-O moved images at 4000 sampled native voxels
(corners included). Same throw-away environment as make_affine_fixtures.py (bench/reference/README.md);
nothing in the package or its tests imports TensorFlow.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform

import numpy as np

E, HYPER, STEPS = 64, 0.3, 5  # the pipeline fixture's settings (tests/fixtures/pipeline_ch2_to_mni.npz)
DEF = {"hyp_units": [16] * 3, "enc_nf": [8, 12, 16, 16], "dec_nf": [16, 16, 12, 8], "add_nf": [8, 8, 8, 8]}
N_SAMPLES = 4000


def load_module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registration", required=True, help="local copy of FreeSurfer's synthmorph/registration.py")
    p.add_argument("--data", default="tests/.data", help="folder with colin27_t1.nii.gz, mni2009a_t1.nii.gz")
    p.add_argument("--weights", default="tests/fixtures/net_e64_mixed.h5")
    p.add_argument("--init", default="tests/fixtures/affine_lta/colin_to_mni_affine_fw.lta")
    p.add_argument("--out", default="tests/fixtures/deform_init_e64_colin_to_mni.npz")
    p.add_argument("--work", default="/tmp/midspace_fixture_work")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import nibabel as nib
    import surfa as sf
    import tensorflow as tf
    import voxelmorph as vxm

    reg = load_module(args.registration, "fs_registration")
    os.makedirs(args.work, exist_ok=True)
    versions = {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "numpy": np.__version__,
        "surfa": sf.__version__,
        "nibabel": nib.__version__,
        "voxelmorph": "git ca28315",
        "neurite": "git 95b2b56",
        "registration_py": "freesurfer/freesurfer @2015394 mri_synthmorph/synthmorph/registration.py, "
        f"sha256 {sha256(args.registration)} (docstrings stripped, code unchanged)",
        "weights_sha256": sha256(args.weights),
        "init_sha256": sha256(args.init),
    }
    print(json.dumps(versions, indent=1))

    orig_joint = vxm.networks.HyperVxmJoint

    def joint_factory(*a, **kw):  # inject the reduced widths of net_e64_mixed.h5, nothing else
        for k, v in DEF.items():
            kw.setdefault(k, v)
        return orig_joint(*a, **kw)

    vxm.networks.HyperVxmJoint = joint_factory
    matrices = []
    orig_transform = reg.transform

    def transform_spy(im, trans, *a, **kw):
        matrices.append(np.asarray(trans, np.float64))
        return orig_transform(im, trans, *a, **kw)

    reg.transform = transform_spy

    mov_path = os.path.join(args.data, "colin27_t1.nii.gz")
    fix_path = os.path.join(args.data, "mni2009a_t1.nii.gz")
    mov, fix = nib.load(mov_path), nib.load(fix_path)
    rng = np.random.default_rng(1)

    def samples(shape):
        s = np.asarray(shape)
        pts = rng.integers(0, s, size=(N_SAMPLES - 8, 3))
        corners = np.array([[i, j, k] for i in (0, s[0] - 1) for j in (0, s[1] - 1) for k in (0, s[2] - 1)])
        return np.concatenate([corners, pts]).astype(np.int32)

    fixed_idx, moving_idx = samples(fix.shape), samples(mov.shape)

    def sample(path, idx):
        v = np.asanyarray(nib.load(path).dataobj).astype(np.float32)
        if v.ndim == 5:
            v = v[:, :, :, 0, :]
        return v[idx[:, 0], idx[:, 1], idx[:, 2]]

    res = {
        "fixed_idx": fixed_idx,
        "moving_idx": moving_idx,
        "hyper": np.float32(HYPER),
        "steps": np.int32(STEPS),
        "extent": np.int32(E),
        "versions": np.array(json.dumps(versions)),
    }
    for tag, mid in (("init", False), ("mid", True)):
        d = os.path.join(args.work, tag)
        os.makedirs(d, exist_ok=True)
        arg = argparse.Namespace(
            moving=mov_path,
            fixed=fix_path,
            model="deform",
            extent=E,
            steps=STEPS,
            hyper=HYPER,
            threads=args.threads,
            init=args.init,
            mid_space=mid,
            out_dir=d,
            weights=[args.weights],
            header_only=False,
            trans=os.path.join(d, "fw.nii.gz"),
            inverse=os.path.join(d, "bw.nii.gz"),
            out_moving=os.path.join(d, "moved.nii.gz"),
            out_fixed=os.path.join(d, "fixed_moved.nii.gz"),
        )
        matrices.clear()
        reg.register(arg)
        net_to_mov, net_to_fix = matrices[:2]
        res.update(
            {
                f"{tag}_net_to_mov": net_to_mov,
                f"{tag}_net_to_fix": net_to_fix,
                f"{tag}_inp_1_vox2ras": sf.load_volume(os.path.join(d, "inp_1.mgz")).geom.vox2world.matrix,
                f"{tag}_inp_2_vox2ras": sf.load_volume(os.path.join(d, "inp_2.mgz")).geom.vox2world.matrix,
                f"{tag}_fw": sample(arg.trans, fixed_idx),
                f"{tag}_bw": sample(arg.inverse, moving_idx),
                f"{tag}_moved": sample(arg.out_moving, fixed_idx),
                f"{tag}_fixed_moved": sample(arg.out_fixed, moving_idx),
            }
        )
        fw = np.asanyarray(nib.load(arg.trans).dataobj)
        print(f"{tag}: |fw| max {np.abs(fw).max():.3f} mm; net_to_fix\n{np.round(net_to_fix, 4)}")
    np.savez_compressed(args.out, **res)
    print("wrote", args.out, os.path.getsize(args.out))


if __name__ == "__main__":
    main()
