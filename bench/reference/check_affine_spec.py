"""Independent float64 NumPy/SciPy re-implementation of docs/spec-affine.md, checked against the fixtures.

    python bench/reference/check_affine_spec.py tests/fixtures/affine_e64_colin_to_mni.npz [tests/.data]

Needs only numpy and scipy (no TensorFlow). Prints the largest deviation of each re-derived quantity from
the TensorFlow reference stored in the npz. It is a cross-check of the specification, not a test of the port.
"""

import sys

import numpy as np
from scipy.ndimage import map_coordinates


def sq(m):
    m = np.asarray(m, np.float64).reshape(3, 4)
    return np.vstack([m, [0, 0, 0, 1]])


def shift(t):
    m = np.eye(4)
    m[:3, 3] = t
    return m


def barycentres(feat, extent):
    f = np.asarray(feat, np.float64)[0]  # (n, n, n, C)
    n = f.shape[0]
    g = (np.arange(n) - (n - 1) / 2) / n
    grid = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1)  # (n, n, n, 3)
    num = np.einsum("ijkc,ijkd->cd", f, grid)
    den = f.sum((0, 1, 2))[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 0, num / den, 0.0)
    return out * extent, f.sum((0, 1, 2))


def fit(src, trg, w):
    x = np.c_[trg, np.ones(len(trg))]
    xtw = x.T * w[None]
    return np.linalg.solve(xtw @ x, xtw @ src).T  # (3, 4): maps trg points to src points


def rigid_from(a):
    t, m = a[:3, 3], a[:3, :3]
    low = np.linalg.cholesky(m.T @ m)
    s = np.diag(low).copy()
    s[0] *= np.sign(np.linalg.det(m))
    up = np.diag(1 / s) @ low.T
    k = np.diag(s) @ np.array([[1, up[0, 1], up[0, 2]], [0, 1, up[1, 2]], [0, 0, 1]])
    r = m @ np.linalg.inv(k)
    a1 = np.arctan2(-r[1, 2], r[2, 2])
    a2 = np.arcsin(np.clip(r[0, 2], -1, 1))
    a3 = np.arctan2(-r[0, 1], r[0, 0])
    c, s_ = np.cos([a1, a2, a3]), np.sin([a1, a2, a3])
    rx = np.array([[1, 0, 0], [0, c[0], -s_[0]], [0, s_[0], c[0]]])
    ry = np.array([[c[1], 0, s_[1]], [0, 1, 0], [-s_[1], 0, c[1]]])
    rz = np.array([[c[2], -s_[2], 0], [s_[2], c[2], 0], [0, 0, 1]])
    out = np.eye(4)
    out[:3, :3] = rx @ ry @ rz
    out[:3, 3] = t
    return out, np.degrees([a1, a2, a3])


def sqrtm(m):
    w, v = np.linalg.eig(m)
    return np.real(v @ np.diag(np.sqrt(w.astype(complex))) @ np.linalg.inv(v))


def interp_clamp(field, coords):
    """Trilinear, border-clamped sampling of a (n, n, n, C) array at coords (..., 3)."""
    c = [coords[..., a].ravel() for a in range(3)]
    out = [map_coordinates(field[..., ch], c, order=1, mode="nearest") for ch in range(field.shape[-1])]
    return np.stack(out, -1).reshape(*coords.shape[:-1], field.shape[-1])


def ss(v, steps):
    u = v / 2**steps
    n = v.shape[0]
    mesh = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1).astype(np.float64)
    for _ in range(steps):
        u = u + interp_clamp(u, mesh + u)
    return u


def main(path, data_dir=None):
    d = np.load(path)
    e = d["mov"].shape[1]
    h = e // 2
    report = {}

    # -m affine / rigid
    c1, p1 = barycentres(d["feat_1"], e)
    c2, p2 = barycentres(d["feat_2"], e)
    w = (p1 / p1.sum()) * (p2 / p2.sum())
    report["cen_1"] = np.abs(c1 - d["cen_1"][0]).max()
    report["weights"] = np.abs(w - d["weights"][0]).max()
    a12, a21 = sq(fit(c1, c2, w)), sq(fit(c2, c1, w))
    a = 0.5 * (np.linalg.inv(a21) + a12)
    report["aff_avg"] = np.abs(a[:3] - d["aff_avg"][0]).max()
    fw = shift((e - 1) / 2) @ a @ shift(-(e - 1) / 2)
    report["affine_fw"] = np.abs(fw[:3] - d["affine_fw"][0]).max()
    report["affine_bw"] = np.abs(np.linalg.inv(fw)[:3] - d["affine_bw"][0]).max()
    r, ang = rigid_from(a)
    report["rigid_params_deg"] = np.abs(ang - d["rigid_params"][0][3:6]).max()
    rfw = shift((e - 1) / 2) @ r @ shift(-(e - 1) / 2)
    report["rigid_fw"] = np.abs(rfw[:3] - d["rigid_fw"][0]).max()

    # native matrices and LTAs
    for m in ("affine", "rigid"):
        fwn = d["net_to_mov"] @ sq(d[f"{m}_fw"]) @ d["fix_to_net"]
        bwn = d["net_to_fix"] @ sq(d[f"{m}_bw"]) @ d["mov_to_net"]
        report[f"{m}_vox_fw"] = np.abs(fwn[:3] - d[f"{m}_vox_fw"]).max()
        lta_t = d["fix_vox2ras"] @ bwn @ np.linalg.inv(d["mov_vox2ras"])  # -t: moving RAS -> fixed RAS
        lta_T = d["mov_vox2ras"] @ fwn @ np.linalg.inv(d["fix_vox2ras"])
        report[f"{m}_lta_fw"] = np.abs(lta_t - d[f"{m}_lta_fw"]).max()
        report[f"{m}_lta_bw"] = np.abs(lta_T - d[f"{m}_lta_bw"]).max()
        report[f"{m}_H_vox2ras"] = np.abs(d[f"{m}_lta_fw"] @ d["mov_vox2ras"] - d[f"{m}_H_moved_vox2ras"]).max()

    # joint: half-res detector, mid-space roots, full-res composition
    jc1, _ = barycentres(d["feat_1"], h)
    jc2, _ = barycentres(d["feat_2"], h)
    ja = 0.5 * (np.linalg.inv(sq(fit(jc2, jc1, w))) + sq(fit(jc1, jc2, w)))
    report["joint_aff_avg"] = np.abs(ja[:3] - d["joint_aff_avg"][0]).max()
    h1 = shift((h - 1) / 2) @ sqrtm(ja) @ shift(-(h - 1) / 2)
    h2 = shift((h - 1) / 2) @ sqrtm(np.linalg.inv(ja)) @ shift(-(h - 1) / 2)
    report["joint_H1"] = np.abs(h1[:3] - d["joint_H1"][0]).max()
    report["joint_H2"] = np.abs(h2[:3] - d["joint_H2"][0]).max()
    # the (I - A)/2 translation offset between joint and -m affine
    j_full = np.diag([2, 2, 2, 1.0]) @ shift((h - 1) / 2) @ ja @ shift(-(h - 1) / 2) @ np.diag([0.5, 0.5, 0.5, 1])
    report["affine_minus_joint_offset"] = np.abs(
        fw[:3, 3] - j_full[:3, 3] - (np.eye(3) - a[:3, :3]) @ np.full(3, 0.5)
    ).max()

    g1 = np.diag([2, 2, 2, 1.0]) @ sq(d["joint_H1"])
    g2 = np.diag([2, 2, 2, 1.0]) @ sq(d["joint_H2"])
    meshh = np.stack(np.meshgrid(*[np.arange(h)] * 3, indexing="ij"), -1).astype(np.float64)
    for k, g in ((1, g1), (2, g2)):
        loc = meshh @ g[:3, :3].T + g[:3, 3]
        full = d["mov" if k == 1 else "fix"][0].astype(np.float64)
        oob = ((loc < 0) | (loc > e - 1)).any(-1)
        v = interp_clamp(full, loc)[..., 0]
        v[oob] = 0
        report[f"joint_mov_{k}"] = np.abs(v - d[f"joint_mov_{k}"][0, ..., 0]).max()

    svf = d["joint_svf_1"][0].astype(np.float64)
    steps = int(d["joint_steps"])
    mesh = np.stack(np.meshgrid(*[np.arange(e)] * 3, indexing="ij"), -1).astype(np.float64)
    fields = {}
    for name, hk, gk, v in (("fw", sq(d["joint_H1"]), g1, svf), ("bw", sq(d["joint_H2"]), g2, -svf)):
        disp = ss(v, steps)
        p = meshh @ hk[:3, :3].T + hk[:3, 3]
        q = p + interp_clamp(disp, p)
        tot = q @ gk[:3, :3].T + gk[:3, 3]  # half-res fixed index -> full-res moving coordinate
        coord = mesh / 2 + interp_clamp(tot - meshh, mesh / 2)
        fields[name] = coord - mesh
    if "joint_fw" in d:
        for name in ("fw", "bw"):
            diff = np.abs(fields[name] - d[f"joint_{name}"][0])
            report[f"joint_{name}"] = diff.max()
            report[f"joint_{name}_p99.9"] = np.quantile(diff, 0.999)
    else:
        idx = d["net_idx"]
        for name in ("fw", "bw"):
            diff = np.abs(fields[name][idx[:, 0], idx[:, 1], idx[:, 2]] - d[f"joint_{name}_at_net_idx"])
            report[f"joint_{name}@samples"] = diff.max()

    # joint native warps (-t / -T, disp_ras in mm), as SPEC §3 for deform
    if "joint_fw" in d:
        for name, idx, to_net, net_to, src_v2r, trg_v2r in (
            ("fw", d["fixed_idx"], d["fix_to_net"], d["net_to_mov"], d["mov_vox2ras"], d["fix_vox2ras"]),
            ("bw", d["moving_idx"], d["mov_to_net"], d["net_to_fix"], d["fix_vox2ras"], d["mov_vox2ras"]),
        ):
            q = idx @ to_net[:3, :3].T + to_net[:3, 3]
            q = q + interp_clamp(d[f"joint_{name}"][0].astype(np.float64), q)
            src = q @ net_to[:3, :3].T + net_to[:3, 3]
            disp = src @ src_v2r[:3, :3].T + src_v2r[:3, 3] - (idx @ trg_v2r[:3, :3].T + trg_v2r[:3, 3])
            report[f"joint_warp_{name}(mm)"] = np.abs(disp - d[f"joint_warp_{name}"]).max()

    # -o / -O of affine and rigid: surfa's trilinear rule (needs the native images)
    if data_dir is not None:
        import nibabel as nib

        pair = "colin_to_mni" if "colin_to_mni" in path else "colinrot_to_colin"
        load = lambda f: np.asanyarray(nib.load(f"{data_dir}/{f}").dataobj).astype(np.float64)
        mov = load("colin27_t1.nii.gz")
        fix = load("mni2009a_t1.nii.gz" if pair == "colin_to_mni" else "colin27_t1.nii.gz")
        for m in ("affine", "rigid"):
            m_bw = np.linalg.inv(d["fix_vox2ras"]) @ d[f"{m}_lta_fw"] @ d["mov_vox2ras"]
            m_fw = np.linalg.inv(d["mov_vox2ras"]) @ d[f"{m}_lta_bw"] @ d["fix_vox2ras"]
            for key, img, mat, idx in (
                ("moved", mov, np.linalg.inv(m_bw), d["fixed_idx"]),
                ("fixed_moved", fix, np.linalg.inv(m_fw), d["moving_idx"]),
            ):
                m32 = mat.astype(np.float32)
                loc = (idx.astype(np.float32) @ m32[:3, :3].T + m32[:3, 3]).astype(np.float64)
                v = map_coordinates(img, loc.T, order=1, mode="nearest")
                low = np.floor(loc)
                v[(low < 0).any(1) | (low > np.array(img.shape) - 1).any(1)] = 0
                report[f"{m}_{key}(intensity)"] = np.abs(v - d[f"{m}_{key}"]).max()

    for k, v in report.items():
        print(f"{k:32s} {float(v):.3g}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
