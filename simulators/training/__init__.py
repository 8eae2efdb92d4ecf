"""Fine-tuning the GPT-2 user: training data (`data`) and the trainer (`trainer`)."""

from simulators.training.trainer import SimulatorTrainer, TrainConfig

__all__ = ["SimulatorTrainer", "TrainConfig"]
