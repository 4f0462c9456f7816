"""Lost peers in multi-process runs: whether an error of a collective means that another process of the run died,
was stopped or became unreachable, and the error that then says so and how to resume.
"""

import torch

from .errors import _first_line
from .layout import PathLike
from .verification import last_complete_checkpoint

LOST_PEER_MARKERS = (
    "Connection reset by peer",
    "Connection closed by peer",
    "Timed out waiting",
    "Broken pipe",
    "NCCL communicator was aborted",
    "Socket Timeout",
    "gloo/transport",
    "timeout caused pair closure",
)


def is_lost_peer(err: BaseException) -> bool:
    """Whether `err` says another process of the run died, stopped or became unreachable during a collective."""
    dist_error = getattr(getattr(torch, "distributed", None), "DistError", ())
    return bool(dist_error and isinstance(err, dist_error)) or (
        isinstance(err, RuntimeError) and any(m in str(err) for m in LOST_PEER_MARKERS)
    )


def lost_peer_error(err: BaseException, step: int, timeout: int, run_dir: PathLike) -> RuntimeError:
    """The error a process raises when another one of the run is gone: what happened and how to resume."""
    last = last_complete_checkpoint(run_dir, quiet=True)
    return RuntimeError(
        f"sf_hf: lost contact with another process of the run at step {step} ({_first_line(err)}). A node or process "
        f"died, was stopped, or the network failed (collectives wait at most ddp_timeout={timeout}s). "
        + (
            f"The last complete checkpoint is {last}; re-run the same command on every node to resume from it."
            if last
            else "No checkpoint was completed; re-run the same command on every node to start again."
        )
    )
