"""Crash-safe checkpoints: staged writes, a manifest, checks before any use, and loads that never run code.

    from sf_hf.checkpoints import last_complete_checkpoint, verify_checkpoint
    resume = last_complete_checkpoint("runs/llama-small")        # None on a fresh run
    trainer.train(resume_from_checkpoint=resume)                  # or resume_from_checkpoint=True

How a `ScheduleFreeMixin` trainer writes `checkpoint-N` (see `ScheduleFreeMixin._save_checkpoint` and `saving`):
the parent trainer's own `_save_checkpoint` writes it in place (transformers', TRL's, a user's subclass's: whatever
they write lands in it), wrapped so that

1. before it, the saving process clears leftovers of an interrupted save, writes a *pending* manifest into the new
   folder (every reader refuses the folder from then on) and, with `save_total_limit`, hard-links every complete
   checkpoint into a hidden `_sf_hf-held-checkpoint-M` (no data copied): transformers' rotation deletes old
   checkpoints inside the parent's save, before the new one is known to be complete;
2. once all processes agree that their part was written, it fsyncs every file and writes the complete
   `checkpoint_manifest.json` (each file's size) last; only then are the checkpoints the parent deleted really gone
   (through a hidden `_sf_hf-deleted-` name) and the holds dropped.

So every `checkpoint-N` that a reader takes is complete: a crash (SIGKILL, or power loss after the fsyncs) leaves the
previous checkpoints plus, at most, a folder with a pending manifest and hidden leftovers, which the next resume or
save clears (a held checkpoint whose original is gone or incomplete comes back). A failed write (disk full, read-only
directory) raises `CheckpointSaveError`, which names the folder and the last intact checkpoint. A `checkpoint-N`
without a manifest but with a hold beside it (a deletion by the parent, which removes files in any order,
interrupted; transformers' end of training with `save_total_limit=1` deletes under holds too) is refused; one
without a manifest and no hold (a plain `transformers.Trainer`'s) is judged by its files.

`verify_checkpoint` checks a folder before it is resumed, evaluated or converted and names the file and the
problem: a missing or truncated file (against the manifest, and each safetensors header against the file
length), unreadable JSON, optimizer state from another optimizer or for other parameters, weights for another
model configuration. Pickled files (optimizer, scheduler, RNG states) are read only with `safe_torch_load`,
i.e. `torch.load(weights_only=True)`: a pickle that would import or call anything else is refused with
`UnsafeCheckpointError` and never executed. `training_args.bin` (a full pickle of the arguments) is never
loaded by sf_hf.

The modules, one job each: `errors` (`CheckpointError` and its kinds, the pipeline's too), `layout` (the names
in a run directory), `manifest` (fsyncs and `checkpoint_manifest.json`, pending or complete), `safe_loading`
(pickles loaded or scanned without running code), `files` (one JSON record or safetensors header read, each
problem naming the file), `verification` (a checkpoint's problems, the newest complete one),
`adapters` (a PEFT adapter checkpoint judged as PEFT loads it), `saved_names` (weights transformers saves under other
names, loaded back on resume), `saving` (saves around the parent's, leftovers, node-local parts, save errors) and
`peers` (another process of the run lost). Everything public is importable from here.
"""

from .adapters import ADAPTER_CONFIG, adapter_mismatch, keeps_adapter_dtypes
from .errors import CheckpointCorruptError, CheckpointError, CheckpointSaveError, UnsafeCheckpointError
from .files import read_json, safetensors_problem, safetensors_shapes
from .layout import (
    CHECKPOINT_RE,
    DELETED_PREFIX,
    HELD_PREFIX,
    LEGACY_PREFIXES,
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    PathLike,
)
from .manifest import read_manifest, write_manifest, write_pending_manifest
from .peers import LOST_PEER_MARKERS, is_lost_peer, lost_peer_error
from .safe_loading import (
    DCP_GLOBALS,
    DEEPSPEED_GLOBALS,
    NEVER_LOADED,
    NUMPY_GLOBALS,
    safe_torch_load,
    scan_dcp,
    scan_pickles,
    unsafe_globals,
)
from .saved_names import loads_saved_names, saved_name_map, tied_copies
from .saving import (
    CheckpointSave,
    disk_diagnosis,
    drop_holds,
    finish_node_part,
    hold_checkpoints,
    recover_leftovers,
    rotate_checkpoints,
    save_error,
)
from .verification import (
    SCHEDULE_FREE_STATE,
    checkpoint_folders,
    checkpoint_problems,
    checkpoint_to_resume,
    config_mismatch,
    last_complete_checkpoint,
    model_mismatch,
    optimizer_state_problems,
    verify_checkpoint,
)

__all__ = [
    "ADAPTER_CONFIG",
    "CHECKPOINT_RE",
    "CheckpointSave",
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointSaveError",
    "DCP_GLOBALS",
    "DEEPSPEED_GLOBALS",
    "DELETED_PREFIX",
    "HELD_PREFIX",
    "LEGACY_PREFIXES",
    "LOST_PEER_MARKERS",
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "NEVER_LOADED",
    "NUMPY_GLOBALS",
    "PathLike",
    "SCHEDULE_FREE_STATE",
    "UnsafeCheckpointError",
    "adapter_mismatch",
    "checkpoint_folders",
    "checkpoint_problems",
    "config_mismatch",
    "disk_diagnosis",
    "drop_holds",
    "finish_node_part",
    "hold_checkpoints",
    "is_lost_peer",
    "keeps_adapter_dtypes",
    "checkpoint_to_resume",
    "last_complete_checkpoint",
    "loads_saved_names",
    "lost_peer_error",
    "model_mismatch",
    "optimizer_state_problems",
    "read_json",
    "read_manifest",
    "recover_leftovers",
    "rotate_checkpoints",
    "safe_torch_load",
    "safetensors_problem",
    "safetensors_shapes",
    "save_error",
    "saved_name_map",
    "scan_dcp",
    "scan_pickles",
    "tied_copies",
    "unsafe_globals",
    "verify_checkpoint",
    "write_manifest",
    "write_pending_manifest",
]
