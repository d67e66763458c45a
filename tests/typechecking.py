"""The run-time type checker for `--jaxtyping-packages=ilex,typechecking.typechecker` (pyproject.toml).

beartype checks every annotated function in ilex while the tests run; production pays nothing.
Numbers are taken as type checkers take them: an int passes where a float is annotated (PEP 484's
numeric tower), and numpy's scalars pass where Python's are annotated (they behave the same).
"""

import numpy as np
from beartype import BeartypeConf, FrozenDict, beartype

typechecker = beartype(
    conf=BeartypeConf(
        hint_overrides=FrozenDict({int: int | np.integer, float: float | int | np.floating | np.integer}),
    )
)
