"""A checkpoint's files read one at a time, each problem naming the file: JSON records and safetensors headers."""

import json
from pathlib import Path

from safetensors import safe_open

from .errors import CheckpointCorruptError, _first_line
from .layout import PathLike


def read_json(path: PathLike) -> dict:
    """A checkpoint's JSON file (`config.json`, `trainer_state.json`, an index...) as a dict.

    Raises:
        CheckpointCorruptError: the file is missing, unreadable, truncated or not a JSON object; names it.
    """
    path = Path(path)
    try:
        with open(path) as f:
            record = json.load(f)
    except OSError as err:
        raise CheckpointCorruptError(f"{path}: unreadable ({_first_line(err)})") from err
    except ValueError as err:
        raise CheckpointCorruptError(f"{path}: truncated or corrupt JSON ({_first_line(err)})") from err
    if not isinstance(record, dict):
        raise CheckpointCorruptError(f"{path}: truncated or corrupt JSON (a {type(record).__name__}, not an object)")
    return record


def safetensors_problem(path: PathLike) -> str | None:
    """Why a `.safetensors` file is unusable (truncated, padded, garbled header), or None. Opens it with safetensors'
    own `safe_open`, which reads the header and checks that it describes the file's length exactly."""
    path = Path(path)
    try:
        with safe_open(str(path), "pt"):
            pass
    except OSError as err:
        return f"{path}: unreadable ({_first_line(err)})"
    except Exception as err:  # SafetensorError: header too small, invalid header, file not fully covered...
        size = path.stat().st_size if path.is_file() else 0
        return f"{path}: truncated or corrupt ({size} bytes; safetensors: {_first_line(err).split(': ', 1)[-1]})"
    return None


def safetensors_shapes(path: PathLike) -> dict:
    """{tensor name: shape} from a safetensors header (no tensor is read)."""
    with safe_open(str(path), "pt") as f:
        return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
