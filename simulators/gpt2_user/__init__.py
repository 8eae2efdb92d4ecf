"""The GPT-2 user: a fine-tuned causal LM answering slates, batched, with a KV cache.

- `simulator`: `GPT2UserSimulator` (session state and stepping).
- `checkpoint`: save/load (`from_pretrained`), `load_batched_simulator`, the embedded default.
- `build`: `build_user_lm`, a fresh or pretrained network for a catalog.
- `ring`, `candidates`: the recency ring's geometry and batched candidate scoring.
"""

from simulators.gpt2_user.build import build_user_lm, item_text_matrix
from simulators.gpt2_user.checkpoint import (
    CHECKPOINT_FILES,
    DEFAULT_SIMULATOR_DIR,
    CheckpointError,
    load_batched_simulator,
)
from simulators.gpt2_user.simulator import GPT2UserSimulator

__all__ = [
    "CHECKPOINT_FILES",
    "DEFAULT_SIMULATOR_DIR",
    "CheckpointError",
    "GPT2UserSimulator",
    "build_user_lm",
    "item_text_matrix",
    "load_batched_simulator",
]
