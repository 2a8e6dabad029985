"""Checkpoints and the workdir contract, the only code that talks to Orbax.

- layout.py: the workdir's names, the checkpoint format and its `meta`, the trainer's lock;
- store.py: `Checkpointer` (Orbax's manager: asynchronous saves, one sentence for a full disk);
- contract.py: the resume contract (which config changes a resume applies or refuses);
- restore.py: the checked restore for resume and for --mode=eval, damaged checkpoints set
  aside, and the host-side reads of the tools and `init_from`.
"""

from alexnet_jax.checkpoint import layout
from alexnet_jax.checkpoint.contract import (RESUME_APPLIED, RESUME_REFUSED,
                                             STRUCTURAL_MODEL_FIELDS, CheckpointMismatchError,
                                             ResumeRefused, check_compatible, check_resume,
                                             config_changes, flat_config)
from alexnet_jax.checkpoint.restore import (DAMAGE_LINE_CHARS, Restored, abstract_like,
                                            read_for_inference, read_meta, read_state_items,
                                            resolve, restore_for_eval, restore_for_resume)
from alexnet_jax.checkpoint.store import Checkpointer

__all__ = [
    "layout", "RESUME_APPLIED", "RESUME_REFUSED", "STRUCTURAL_MODEL_FIELDS",
    "CheckpointMismatchError", "ResumeRefused", "check_compatible", "check_resume",
    "config_changes", "flat_config", "DAMAGE_LINE_CHARS", "Restored", "abstract_like",
    "read_for_inference", "read_meta", "read_state_items", "resolve", "restore_for_eval",
    "restore_for_resume", "Checkpointer",
]
