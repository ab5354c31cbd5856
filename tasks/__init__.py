"""Thin Prefect tasks over lmforge/: names, retries, logging. No ML logic lives here."""
from lmforge.core.errors import LmforgeError
from lmforge.core.interrupt import Interrupted


def retry_unless_user_error(task, task_run, state) -> bool:
    """Retry transient failures; a user's mistake (LmforgeError) or an interrupt (Ctrl-C) fails at once."""
    return not isinstance(state.data, (LmforgeError, Interrupted))
