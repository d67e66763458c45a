"""Many pairs: the pairs file, a warm sequential run, and scale-out on Dask (`ilex batch`)."""

from .pairs import Pair as Pair
from .pairs import read_pairs as read_pairs
from .records import PairRecord as PairRecord
from .run import run_batch as run_batch
from .settings import BatchSettings as BatchSettings
from .summary import write_summary as write_summary
