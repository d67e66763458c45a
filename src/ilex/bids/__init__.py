"""BIDS in and out (`ilex bids`): images found with pybids, outputs under BIDS-Derivatives names."""

from .dataset import BidsImage as BidsImage
from .dataset import find_images as find_images
from .run import group as group
from .run import participant as participant
