"""The exception raised for bad input data or arguments.

Library functions raise `InputError` (a `ValueError`) with a message that names the file or case
at fault and says what to do. Entry scripts print that message and exit with status 2 instead of
showing a traceback.
"""


class InputError(ValueError):
    """Bad input data or arguments; the message names the file or case and the remedy."""
