"""The names sf_hf gives things in a run directory: `checkpoint-N` folders, the manifest that records one complete,
and the hidden working folders of a save (names starting with `_`, which transformers' Hub uploads skip and its
`checkpoint-*` globs never match).
"""

import os
import re

PathLike = str | os.PathLike

MANIFEST_NAME = "checkpoint_manifest.json"
MANIFEST_FORMAT = 1
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
HELD_PREFIX = "_sf_hf-held-"
"""A complete checkpoint kept while a newer one is saved: hard links to the files of a `checkpoint-M` that the parent
trainer's rotation may delete, or an earlier `checkpoint-N` moved aside for the new save of step N."""
DELETED_PREFIX = "_sf_hf-deleted-"
"""A folder being removed (renamed first, so that an interrupted removal leaves no partial `checkpoint-N`)."""
LEGACY_PREFIXES = (".partial-", ".deleted-")
"""The hidden folders of sf_hf releases that staged each save (`.partial-checkpoint-N`) and rotated through
`.deleted-checkpoint-N`: still cleared (or promoted, when complete) in runs they left them in."""
