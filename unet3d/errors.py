"""The exceptions raised for bad input and for output that could not be written.

Library functions raise `InputError` (a `ValueError`) with a message that names the file or case
at fault and says what to do. Entry scripts print that message and exit with status 2 instead of
showing a traceback.

`OutputError` (an `OSError`) says a file could not be written completely (a full disk, a quota, a
file-size limit, a read-only folder): nothing was published under its name. A case that meets it
counts as failed (exit status 1); a run that meets it writing its own files stops with status 1.
"""

import errno

#: The errors of a write that no retry of the same command would fix without a change of space.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EIO})


class InputError(ValueError):
    """Bad input data or arguments; the message names the file or case and the remedy."""


class OutputError(OSError):
    """A file could not be written completely; the message names it and says what to do.

    Raised as `OutputError(errno, message)`; `str()` gives the message alone."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()
