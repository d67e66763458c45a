"""Registration by direct optimisation, needing no trained weights (`-m optimize`).

An affine stage (centres of mass, then mutual information on coarse copies) and a log-domain
deformable stage (a stationary velocity field grown by Gaussian-smoothed similarity forces),
both in JAX on ilex's own interpolation. `ilex.registration.methods.optimize` wraps them as a
registration `Method`.
"""

from .affine import moments_matrix as moments_matrix
from .affine import optimise_affine as optimise_affine
from .deformable import Level as Level
from .deformable import optimise_velocity as optimise_velocity
from .similarity import SIMILARITIES as SIMILARITIES
from .similarity import lncc as lncc
from .similarity import mutual_information as mutual_information
from .smoothing import pyramid as pyramid
