"""Named array types used in signatures across ilex (shapes written once, here)."""

from jaxtyping import Array, Float

# An image volume on a voxel grid, channels last.
Volume = Float[Array, "*batch x y z c"]
# A displacement field in voxel units of its own grid, components ordered by array axis (i, j, k).
Field = Float[Array, "*batch x y z 3"]
# A 4x4 homogeneous matrix mapping voxel indices of one grid to voxel indices of another.
VoxelMatrix = Float[Array, "4 4"]
