"""The run-time type checker for `--jaxtyping-packages=ilex,typechecking.typechecker` (pyproject.toml).

beartype, with PEP 484's numeric tower (an int passes where a float is annotated, as type checkers
allow), checks every annotated function in ilex while the tests run; production pays nothing.
"""

from beartype import BeartypeConf, beartype

typechecker = beartype(conf=BeartypeConf(is_pep484_tower=True))
