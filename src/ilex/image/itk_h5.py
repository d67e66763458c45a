"""ITK HDF5 composite transforms (`.h5`): what `antsRegistration --write-composite-transform` writes.

The layout is ITK's (`itk::HDF5TransformIO`): `/TransformGroup/0` holds only `TransformType`,
`CompositeTransform_double_3_3`; `/TransformGroup/1`, `/2`, ... are its members, each with
`TransformType` (one variable-length ASCII string), `TransformFixedParameters` (float64) and
`TransformParameters`. ITK before 4.8 spelled the last two `Tranform...`; both spellings are read.
ITK applies a composite's members to a point last first: `/TransformGroup/2` then `/1`.

Every transform maps points of the space it resamples onto (the *reference*: the fixed image for
`-t`, the moving image for `-T`) to the space of the image it samples (the *source*), in LPS
physical coordinates (mm), as ITK does. The members ilex reads and writes:

* `AffineTransform_double_3_3` (also `MatrixOffsetTransformBase_*`, `_float_`): parameters the
  3x3 matrix row by row, then the translation; fixed parameters the centre `c`:
  `x -> M (x - c) + t + c`.
* `DisplacementFieldTransform_float_3_3` (also `_double_`): fixed parameters the field's grid,
  size (3), origin (3), spacing (3), direction (3x3, row by row); parameters the LPS displacement
  vectors, x fastest, the three components of a voxel together: `x -> x + u(x)`, `u` trilinear
  in the grid (the border voxels repeated half a voxel out), zero beyond that, as ITK's
  `DisplacementFieldTransform` does.

ilex writes an affine then a displacement field on the reference grid (`-t`: the fixed grid;
`-T`: the moving grid), so a reference point is displaced first, then mapped by the affine, as in
the forward composite `antsRegistration` writes. It also records, in the file attribute
`ilex_grids` (JSON; ITK ignores attributes), the reference and source grids (RAS voxel-to-world
and shape), so `ilex apply` knows the grid to resample onto and checks the image it is given.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass

import h5py
import numpy as np

from .._atomic import atomic_file
from ..errors import FileProblem

H5_SUFFIX = ".h5"
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_GRIDS_KEY = "ilex_grids"
_COMPOSITE = "CompositeTransform_double_3_3"
_AFFINE = "AffineTransform_double_3_3"
_FIELD = "DisplacementFieldTransform_float_3_3"
_TYPE = re.compile(r"(\w+?)_(double|float)_(\d)_(\d)")
_AFFINE_KINDS = ("AffineTransform", "MatrixOffsetTransformBase")
_FIELD_KINDS = ("DisplacementFieldTransform",)
_SUPPORTED = "AffineTransform, MatrixOffsetTransformBase and DisplacementFieldTransform (3-D)"


def is_itk_h5(path: str | os.PathLike) -> bool:
    """Whether `path` names an ITK HDF5 transform (by its `.h5` extension)."""
    return os.fspath(path).lower().endswith(H5_SUFFIX)


@dataclass(frozen=True)
class AffineMember:
    """An affine member: `matrix` (4x4) maps reference LPS points to source LPS points."""

    matrix: np.ndarray


@dataclass(frozen=True)
class FieldMember:
    """A displacement-field member: `displacement` (x, y, z, 3) LPS mm on the grid whose voxel-to-LPS
    matrix is `affine`; a point x goes to x + u(x)."""

    displacement: np.ndarray
    affine: np.ndarray

    @functools.cached_property
    def on_device(self):
        """The field as a JAX array, made once for all the points asked of it."""
        import jax.numpy as jnp

        return jnp.asarray(self.displacement, jnp.float32)


Grid = tuple[np.ndarray, tuple[int, int, int]]  # RAS voxel-to-world, shape


@dataclass(frozen=True)
class Composite:
    """A composite transform as read from or written to a file: `members` in file order (ITK
    applies the last first); `reference`/`source`: the grids ilex recorded, or None."""

    members: tuple[AffineMember | FieldMember, ...]
    reference: Grid | None = None
    source: Grid | None = None

    @property
    def is_linear(self) -> bool:
        return all(isinstance(m, AffineMember) for m in self.members)

    def ras_matrix(self) -> np.ndarray:
        """For a composite of affines only: the source RAS -> reference RAS matrix (what an LTA stores)."""
        if not self.is_linear:
            raise ValueError("the composite holds a displacement field; it has no single matrix")
        lps = np.eye(4)
        for member in self.members:  # M1 (M2 (... x)): the last member is applied first
            lps = lps @ member.matrix
        return np.linalg.inv(_LPS @ lps @ _LPS)

    def first_field_grid(self) -> Grid | None:
        """The RAS grid of the member applied first when it is a displacement field (the grid ANTs'
        forward composites are defined on: the fixed image's), else None."""
        first = self.members[-1] if self.members else None
        if not isinstance(first, FieldMember):
            return None
        return _LPS @ first.affine, tuple(int(n) for n in first.displacement.shape[:3])

    def transform_points(self, points_ras) -> np.ndarray:
        """Reference RAS points (..., 3), mm, mapped to source RAS points, as ITK's `TransformPoint`
        does (in LPS, the last member first); float64."""
        points = np.asarray(points_ras, np.float64)
        flat = points.reshape(-1, 3) * _LPS[:3, :3].diagonal()
        for member in reversed(self.members):
            if isinstance(member, AffineMember):
                flat = flat @ member.matrix[:3, :3].T + member.matrix[:3, 3]
            else:
                flat = flat + _field_at(member, flat)
        return (flat * _LPS[:3, :3].diagonal()).reshape(points.shape)


def composite_displacement(composite: Composite, grid: Grid) -> np.ndarray:
    """The composite as a RAS displacement field (x, y, z, 3) float32 on `grid` (RAS voxel-to-world,
    shape): voxel p samples the source at world `A p + d(p)`, ilex's warp convention."""
    affine, shape = _grid(grid)
    out = np.empty((*shape, 3), np.float32)
    ij = np.stack(np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij"), -1).astype(np.float64)
    step = max(1, (1 << 20) // (shape[0] * shape[1]))  # about a million points at a time
    for k in range(0, shape[2], step):
        ks = np.arange(k, min(k + step, shape[2]), dtype=np.float64)
        vox = np.concatenate(
            [
                np.broadcast_to(ij[:, :, None], (*ij.shape[:2], ks.size, 2)),
                np.broadcast_to(ks[None, None, :, None], (*ij.shape[:2], ks.size, 1)),
            ],
            -1,
        )
        world = vox @ affine[:3, :3].T + affine[:3, 3]
        out[:, :, k : k + ks.size] = composite.transform_points(world) - world
    return out


def _field_at(member: FieldMember, points_lps: np.ndarray) -> np.ndarray:
    """ITK's displacement at LPS points: trilinear, border voxels repeated to half a voxel out,
    zero beyond (`itk::DisplacementFieldTransform` with its linear interpolator)."""
    to_vox = np.linalg.inv(member.affine)
    index = points_lps @ to_vox[:3, :3].T + to_vox[:3, 3]
    size = np.asarray(member.displacement.shape[:3])
    inside = np.all((index >= -0.5) & (index < size - 0.5), axis=-1)
    value = np.asarray(_interpolate()(member.on_device, index.astype(np.float32)), np.float64)
    return np.where(inside[:, None], value, 0.0)


@functools.cache
def _interpolate():
    import jax

    from ..transforms.interpolate import interpolate_clamped

    return jax.jit(interpolate_clamped)


def registration_composite(
    ras_matrix: np.ndarray,
    reference: Grid,
    source: Grid,
    displacement: np.ndarray | None = None,
) -> Composite:
    """The composite of a registration: `ras_matrix` (source RAS -> reference RAS, as an LTA stores it:
    moving -> fixed for `-t`) and, for a warp, `displacement` (x, y, z, 3), the full RAS displacement
    (mm) on the reference grid (reference voxel p samples the source at world `A p + d(p)`; affine
    included). The warp is split into the affine and a field `u` on the reference grid with
    `A p + d(p) = M (x + u(x))` in LPS, so the pair reproduces the warp at every reference voxel.
    """
    itk = _LPS @ np.linalg.inv(np.asarray(ras_matrix, np.float64)) @ _LPS  # reference LPS -> source LPS
    members: list[AffineMember | FieldMember] = [AffineMember(itk)]
    if displacement is not None:
        ref_affine, shape = reference
        lps_affine = _LPS @ np.asarray(ref_affine, np.float64)
        back = np.linalg.inv(itk)
        field = np.empty((*shape, 3), np.float32)
        flip = _LPS[:3, :3].diagonal()
        ij = np.stack(np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij"), -1).astype(np.float64)
        for k in range(shape[2]):  # a slab at a time: float64 without a full-volume float64 copy
            vox = np.concatenate([ij, np.full((*ij.shape[:2], 1), float(k))], -1)
            x = vox @ lps_affine[:3, :3].T + lps_affine[:3, 3]
            target = x + np.asarray(displacement[:, :, k], np.float64) * flip
            field[:, :, k] = target @ back[:3, :3].T + back[:3, 3] - x
        members.append(FieldMember(field, lps_affine))
    return Composite(tuple(members), _grid(reference), _grid(source))


def _grid(grid) -> Grid:
    affine, shape = grid
    return np.asarray(affine, np.float64), tuple(int(n) for n in shape[:3])


def save_composite(path: str | os.PathLike, composite: Composite) -> None:
    """Write `composite` as an ITK HDF5 composite transform (see the module docstring), atomically."""
    string = h5py.string_dtype("ascii")
    with atomic_file(path, suffix=H5_SUFFIX) as tmp, h5py.File(tmp, "w", libver="earliest") as f:
        f.create_dataset("HDFVersion", data=np.array([f"HDF5 library version: {h5py.version.hdf5_version}"], string))
        group = f.create_group("TransformGroup")
        group.create_group("0").create_dataset("TransformType", data=np.array([_COMPOSITE], string))
        for i, member in enumerate(composite.members, 1):
            g = group.create_group(str(i))
            if isinstance(member, AffineMember):
                kind = _AFFINE
                fixed = np.zeros(3)
                params = np.concatenate([member.matrix[:3, :3].ravel(), member.matrix[:3, 3]])
            else:
                kind = _FIELD
                spacing = np.linalg.norm(member.affine[:3, :3], axis=0)
                direction = member.affine[:3, :3] / spacing
                fixed = np.concatenate(
                    [member.displacement.shape[:3], member.affine[:3, 3], spacing, direction.ravel()]
                )
                # x fastest, a voxel's three components together: C order of the (z, y, x, 3) array
                params = np.ascontiguousarray(np.transpose(member.displacement, (2, 1, 0, 3)), np.float32).ravel()
            g.create_dataset("TransformType", data=np.array([kind], string))
            g.create_dataset("TransformFixedParameters", data=np.asarray(fixed, np.float64))
            g.create_dataset("TransformParameters", data=params)
        if composite.reference is not None and composite.source is not None:
            grids = {
                name: {"shape": list(shape), "vox2ras": np.asarray(affine).tolist()}
                for name, (affine, shape) in (("reference", composite.reference), ("source", composite.source))
            }
            f.attrs[_GRIDS_KEY] = json.dumps(grids, separators=(",", ":"))


def load_composite(path: str | os.PathLike) -> Composite:
    """Read an ITK HDF5 transform file: a composite (`/TransformGroup/0` a `CompositeTransform`, its
    members after it) or a file holding one transform. Raises `FileProblem` naming the file for one
    that is missing, not HDF5, has no `/TransformGroup`, or holds a transform ilex does not read."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileProblem(path, "no such transform file")
    try:
        if not h5py.is_hdf5(path):
            raise FileProblem(path, "not an HDF5 file (an ITK .h5 transform is one)")
        with h5py.File(path, "r") as f:
            return _read(path, f)
    except FileProblem:
        raise
    except (OSError, KeyError, ValueError, TypeError, IndexError) as e:
        raise FileProblem(path, f"not a readable ITK HDF5 transform ({e.__class__.__name__}: {e})") from None


def _read(path: str, f: h5py.File) -> Composite:
    group = f.get("TransformGroup")
    if not isinstance(group, h5py.Group):
        raise FileProblem(path, "no /TransformGroup: not an ITK HDF5 transform file")
    names = sorted((n for n in group if n.isdigit()), key=int)
    if not names or names != [str(i) for i in range(len(names))]:
        raise FileProblem(path, "/TransformGroup holds no transforms numbered 0, 1, ...")
    kinds = [_kind(path, group[n]) for n in names]
    if kinds[0] == "CompositeTransform":
        if len(names) == 1:
            raise FileProblem(path, "the composite transform has no members")
        members = names[1:]
    elif len(names) == 1:
        members = names
    else:
        raise FileProblem(path, f"{len(names)} transforms and no CompositeTransform first; ilex reads a composite")
    out = []
    for name in members:
        kind, g = _kind(path, group[name]), group[name]
        if kind in _AFFINE_KINDS:
            out.append(_read_affine(path, name, g))
        elif kind in _FIELD_KINDS:
            out.append(_read_field(path, name, g))
        else:
            raise FileProblem(path, f"/TransformGroup/{name} is a {_type_name(g)}; ilex reads {_SUPPORTED}")
    grids = _recorded_grids(f)
    return Composite(tuple(out), *grids)


def _type_name(g) -> str:
    value = np.asarray(g["TransformType"][()]).ravel()[0]
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)


def _kind(path: str, g) -> str:
    if not isinstance(g, h5py.Group) or "TransformType" not in g:
        raise FileProblem(path, f"{getattr(g, 'name', '?')} has no TransformType")
    name = _type_name(g)
    m = _TYPE.fullmatch(name)
    if m is None or m.group(3) != "3" or m.group(4) != "3":
        if name.startswith("CompositeTransform"):
            raise FileProblem(path, f"{g.name} is a {name}; ilex reads 3-D transforms")
        raise FileProblem(path, f"{g.name} is a {name}; ilex reads {_SUPPORTED}")
    return m.group(1)


def _parameters(path: str, name: str, g, which: str) -> np.ndarray:
    for spelling in (f"Transform{which}", f"Tranform{which}"):  # ITK < 4.8 wrote "Tranform"
        if spelling in g:
            values = np.asarray(g[spelling][()], np.float64).ravel()
            if not np.isfinite(values).all():
                raise FileProblem(path, f"/TransformGroup/{name}/{spelling} holds NaN or Inf values")
            return values
    raise FileProblem(path, f"/TransformGroup/{name} has no Transform{which}")


def _read_affine(path: str, name: str, g) -> AffineMember:
    params, fixed = _parameters(path, name, g, "Parameters"), _parameters(path, name, g, "FixedParameters")
    if params.size != 12 or fixed.size != 3:
        raise FileProblem(
            path,
            f"/TransformGroup/{name}: an affine has 12 parameters and 3 fixed ones, found {params.size}, {fixed.size}",
        )
    matrix, translation = params[:9].reshape(3, 3), params[9:]
    out = np.eye(4)
    out[:3, :3] = matrix
    out[:3, 3] = translation + fixed - matrix @ fixed
    return AffineMember(out)


def _read_field(path: str, name: str, g) -> FieldMember:
    fixed = _parameters(path, name, g, "FixedParameters")
    if fixed.size != 18:
        raise FileProblem(
            path, f"/TransformGroup/{name}: a 3-D displacement field has 18 fixed parameters, found {fixed.size}"
        )
    shape = tuple(int(n) for n in np.rint(fixed[:3]))
    params = _parameters(path, name, g, "Parameters")
    if min(shape) < 1 or params.size != 3 * int(np.prod(shape)):
        raise FileProblem(path, f"/TransformGroup/{name}: {params.size} parameters for a {shape} grid of vectors")
    affine = np.eye(4)
    affine[:3, :3] = fixed[9:].reshape(3, 3) * fixed[6:9]
    affine[:3, 3] = fixed[3:6]
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise FileProblem(path, f"/TransformGroup/{name}: the field's grid is singular")
    field = np.transpose(params.astype(np.float32).reshape(shape[2], shape[1], shape[0], 3), (2, 1, 0, 3))
    return FieldMember(np.ascontiguousarray(field), affine)


def _recorded_grids(f: h5py.File) -> tuple[Grid | None, Grid | None]:
    try:
        grids = json.loads(f.attrs[_GRIDS_KEY])
        out = tuple(
            (np.asarray(grids[k]["vox2ras"], np.float64), tuple(int(n) for n in grids[k]["shape"]))
            for k in ("reference", "source")
        )
    except (KeyError, ValueError, TypeError):
        return None, None  # not written by ilex
    if all(a.shape == (4, 4) and np.isfinite(a).all() and len(s) == 3 for a, s in out):
        return out
    return None, None
