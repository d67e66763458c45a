"""3x3x3 'same' convolutions shared by SynthMorph's deformable U-Net and its affine detector:
XLA's own, Winograd F(2,3)/F(4,3) and wide matrix products, evaluated in slabs."""

from .gemm_conv import patch_conv3d as patch_conv3d
from .gemm_conv import shift_conv3d as shift_conv3d
from .layer import CONV_ALGORITHMS as CONV_ALGORITHMS
from .layer import check_algorithm as check_algorithm
from .layer import conv_layer as conv_layer
from .layer import direct_conv3d as direct_conv3d
from .layer import upsample as upsample
from .slabs import fill_slabs as fill_slabs
from .slabs import max_pool as max_pool
from .winograd import winograd_conv3d as winograd_conv3d
