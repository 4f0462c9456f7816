"""The names sf_hf gives things in a run directory: `checkpoint-N` folders, their hidden `.partial-` (being
written) and `.deleted-` (being removed) forms, and the manifest that marks a checkpoint complete.
"""

import os
import re

PathLike = str | os.PathLike

MANIFEST_NAME = "checkpoint_manifest.json"
MANIFEST_FORMAT = 1
STAGING_PREFIX = ".partial-"
DELETED_PREFIX = ".deleted-"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
