"""Training SynthMorph's deformable hypernetwork in JAX (docs/train.md): `ilex.train` and its parts."""

from .checkpoint import latest_checkpoint as latest_checkpoint
from .data import TrainingData as TrainingData
from .data import draw_lambda as draw_lambda
from .objective import pair_displacement as pair_displacement
from .objective import pair_loss as pair_loss
from .objective import smoothness as smoothness
from .objective import soft_dice_loss as soft_dice_loss
from .run import TrainingError as TrainingError
from .run import TrainResult as TrainResult
from .run import train as train
from .settings import TrainSettings as TrainSettings

__all__ = [
    "TrainResult",
    "TrainSettings",
    "TrainingData",
    "TrainingError",
    "draw_lambda",
    "latest_checkpoint",
    "pair_displacement",
    "pair_loss",
    "smoothness",
    "soft_dice_loss",
    "train",
]
