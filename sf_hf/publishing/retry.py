"""Retries with exponential backoff for the Hub calls the client does not retry by itself.

    policy = RetryPolicy(attempts=5, initial_delay=1.0)
    policy.call(lambda: api.create_commit(...), "commit to step-000000500")

`huggingface_hub` retries its uploads (preupload, LFS) on 5xx and network errors, but makes a single attempt
for whoami, create_repo, refs, branches and the commit POST itself: those go through `RetryPolicy.call`.
A 4xx other than 408/429 is not retried (a bad token or a refused write will not get better).
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from huggingface_hub.errors import HfHubHTTPError

from .errors import PushError

try:  # huggingface_hub 2.x talks through httpx2, 1.x through httpx
    from httpx2 import TransportError
except ImportError:
    from httpx import TransportError

logger = logging.getLogger(__name__)
T = TypeVar("T")
RETRY_STATUS = (408, 429, 500, 502, 503, 504)
NETWORK_ERRORS = (TransportError, ConnectionError, TimeoutError)


def is_retryable(err: Exception) -> bool:
    """Network errors and HTTP 408, 429 and 5xx answers."""
    if isinstance(err, HfHubHTTPError):
        response = getattr(err, "response", None)
        return response is not None and response.status_code in RETRY_STATUS
    return isinstance(err, NETWORK_ERRORS)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry.

    Attributes:
        attempts (`int`): tries in all, the first included.
        initial_delay (`float`): seconds before the first retry; doubled after each one.
        max_delay (`float`): the longest wait between two tries.
    """

    attempts: int = 5
    initial_delay: float = 1.0
    max_delay: float = 30.0

    def call(self, fn: Callable[[], T], what: str) -> T:
        """Runs `fn`, retrying retryable errors.

        Raises:
            PushError: when the tries are used up (the message says what failed and the last error); any other
                error of `fn` as it is.
        """
        delay, attempt = self.initial_delay, 1
        while True:
            try:
                return fn()
            except Exception as err:
                if not is_retryable(err):
                    raise
                if attempt >= self.attempts:
                    message = " ".join(str(err).split())  # the client's messages span several lines
                    raise PushError(f"{what} failed after {attempt} attempts: {type(err).__name__}: {message}") from err
                logger.warning("%s failed (%s), retry %d/%d in %.1fs", what, err, attempt, self.attempts - 1, delay)
            time.sleep(delay)
            delay, attempt = min(delay * 2, self.max_delay), attempt + 1


DEFAULT_RETRY = RetryPolicy()
