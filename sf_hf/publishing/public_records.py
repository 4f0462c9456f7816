"""What the Hub gets of a folder's JSON records: the same records with local paths cut to their last component.

`trainer_state.json` names the best checkpoint by its local path (`best_model_checkpoint`), and
`eval_results.json` names a local dataset by its path, a PEFT adapter's `adapter_config.json` its local base model
(`base_model_name_or_path`); uploaded as they are, they would publish the machine's directory layout (user names
included). The card already names the data and the base model this way (`card.dataset_label`, `card.model_label`).

    uploads.update(public_records(folder))     # {"trainer_state.json": b"...", ...}: replaces the files as read
"""

import json
import os
from pathlib import Path

from .card import dataset_label, model_label
from .errors import PushError

LOCAL_PATH_KEYS = {
    "trainer_state.json": {"best_model_checkpoint": lambda path: Path(path).name},
    "eval_results.json": {"dataset": dataset_label},
    "adapter_config.json": {"base_model_name_or_path": model_label},
}


def public_records(folder: os.PathLike) -> dict[str, bytes]:
    """`{file name: bytes to upload}` for each record of `folder` that names a local path (others are absent).

    Raises:
        PushError: if such a record is not valid JSON (it could not be cleaned, so it is not uploaded).
    """
    public = {}
    for name, keys in LOCAL_PATH_KEYS.items():
        path = Path(folder) / name
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_text())
        except ValueError as err:
            raise PushError(f"{path} is not valid JSON ({err}): fix or delete it, then push again.") from err
        cleaned = {
            key: (keys[key](value) if key in keys and isinstance(value, str) else value)
            for key, value in record.items()
        }
        if cleaned != record:
            public[name] = (json.dumps(cleaned, indent=2) + "\n").encode()
    return public
