"""How a training script ends on bad input: one line naming the file and field, no traceback.

    with user_errors(ValueError, ImportError):
        prepared = prepare(argv, default_config)

`sf-hf --debug` (or `SF_HF_DEBUG=1`) keeps the full traceback.
"""

import contextlib
import os
import sys
from pathlib import Path

DEBUG_ENV = "SF_HF_DEBUG"


def one_line(err: BaseException) -> str:
    """The message of `err` on one line (a list of problems joined with "; ")."""
    lines = [line.strip().removeprefix("- ") for line in str(err).splitlines() if line.strip()]
    return (lines[0] + " " + "; ".join(lines[1:])).strip() if lines else type(err).__name__


@contextlib.contextmanager
def user_errors(*types: type[BaseException]):
    """Turns an exception of `types` into `SystemExit("<script>: error: <one line>")`, unless `SF_HF_DEBUG` is set."""
    try:
        yield
    except types as err:
        if os.environ.get(DEBUG_ENV):
            raise
        raise SystemExit(f"{Path(sys.argv[0]).name}: error: {one_line(err)}") from None
