"""Images on voxel grids: reading, writing, geometry."""
