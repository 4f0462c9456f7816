"""Crash-safe checkpoints: staged writes, a manifest, checks before any use, and loads that never run code.

    from sf_hf.checkpoints import last_complete_checkpoint, verify_checkpoint
    resume = last_complete_checkpoint("runs/llama-small")        # None on a fresh run
    trainer.train(resume_from_checkpoint=resume)                  # or resume_from_checkpoint=True

How `ScheduleFreeTrainer` writes `checkpoint-N` (see `ScheduleFreeTrainer._save_checkpoint`):

1. every process writes into the hidden folder `.partial-checkpoint-N` of the run directory, a name that
   transformers' `get_last_checkpoint` / `rotate_checkpoints` and `sf_hf.pipeline` never pick up;
2. once all processes agree that their part was written, the saving process fsyncs every file, writes
   `checkpoint_manifest.json` (each file's size) last, renames the folder to `checkpoint-N` (atomic on
   POSIX) and fsyncs the run directory;
3. checkpoints beyond `save_total_limit` are renamed to `.deleted-checkpoint-N` before they are removed.

So every `checkpoint-N` is complete at every instant: a crash (SIGKILL, or power loss after the fsyncs) leaves
the previous checkpoints plus, at most, a hidden leftover that the next resume or save clears (a staged folder
whose manifest was written is promoted: it is complete). A failed write (disk full, read-only directory)
raises `CheckpointSaveError`, which names the folder and the last intact checkpoint.

`verify_checkpoint` checks a folder before it is resumed, evaluated or converted and names the file and the
problem: a missing or truncated file (against the manifest, and each safetensors header against the file
length), unreadable JSON, optimizer state from another optimizer or for other parameters, weights for another
model configuration. Pickled files (optimizer, scheduler, RNG states) are read only with `safe_torch_load`,
i.e. `torch.load(weights_only=True)`: a pickle that would import or call anything else is refused with
`UnsafeCheckpointError` and never executed. `training_args.bin` (a full pickle of the arguments) is never
loaded by sf_hf.

The modules, one job each: `errors` (`CheckpointError` and its kinds, the pipeline's too), `layout` (the names
in a run directory), `manifest` (fsyncs and `checkpoint_manifest.json`), `safe_loading` (pickles loaded or
scanned without running code), `verification` (a checkpoint's problems, the newest complete one), `adapters` (a
PEFT adapter checkpoint judged as PEFT loads it), `saved_names` (weights transformers saves under other names,
loaded back on resume), `staging` (staged saves, leftovers, rotation, save errors) and `peers` (another process
of the run lost). Everything public is importable from here.
"""

from .adapters import ADAPTER_CONFIG, adapter_mismatch, keeps_adapter_dtypes
from .errors import CheckpointCorruptError, CheckpointError, CheckpointSaveError, UnsafeCheckpointError
from .layout import CHECKPOINT_RE, DELETED_PREFIX, MANIFEST_FORMAT, MANIFEST_NAME, STAGING_PREFIX, PathLike
from .manifest import read_manifest, write_manifest
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
from .staging import (
    commit_node_part,
    commit_staged_checkpoint,
    discard_staging,
    disk_diagnosis,
    keep_only_checkpoints,
    prepare_staging,
    recover_leftovers,
    rotate_checkpoints,
    save_error,
    staging_path,
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
    read_json,
    safetensors_problem,
    safetensors_shapes,
    verify_checkpoint,
)

__all__ = [
    "ADAPTER_CONFIG",
    "CHECKPOINT_RE",
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointSaveError",
    "DCP_GLOBALS",
    "DEEPSPEED_GLOBALS",
    "DELETED_PREFIX",
    "LOST_PEER_MARKERS",
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "NEVER_LOADED",
    "NUMPY_GLOBALS",
    "PathLike",
    "SCHEDULE_FREE_STATE",
    "STAGING_PREFIX",
    "UnsafeCheckpointError",
    "adapter_mismatch",
    "checkpoint_folders",
    "checkpoint_problems",
    "commit_node_part",
    "commit_staged_checkpoint",
    "config_mismatch",
    "discard_staging",
    "disk_diagnosis",
    "is_lost_peer",
    "keeps_adapter_dtypes",
    "keep_only_checkpoints",
    "checkpoint_to_resume",
    "last_complete_checkpoint",
    "loads_saved_names",
    "lost_peer_error",
    "model_mismatch",
    "optimizer_state_problems",
    "prepare_staging",
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
    "staging_path",
    "tied_copies",
    "unsafe_globals",
    "verify_checkpoint",
    "write_manifest",
]
