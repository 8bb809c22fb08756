"""Logging set-up shared by the entry scripts: progress on the console, everything in a file;
and `hide_native_log`, which keeps TensorFlow's C++ log lines out of the console."""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading
from pathlib import Path

LOGGER_NAME = "unet3d"


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def setup_logging(log_file: str | os.PathLike | None = None, level: int = logging.INFO) -> logging.Logger:
    """Send the package's log to stderr and, if given, append it to `log_file`."""
    logger = get_logger()
    logger.setLevel(level)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(file_handler)
    return logger


#: A line of the C++ log of TensorFlow and the libraries it loads (absl's format, e.g.
#: "I0000 00:00:1796478535.095252    4296 port.cc:153] oneDNN custom operations are on"), or
#: absl's notice that such lines go to stderr.
NATIVE_LOG_LINE = re.compile(rb"^(?:[IWEF]\d{4} \d\d:\d\d:[\d.]+ +\d+ [\w./-]+:\d+\] |"
                             rb"WARNING: All log messages before absl::InitializeLog\(\))")


def hide_native_log() -> None:
    """Drop TensorFlow's C++ log lines (start-up, CUDA and per-epoch dataset messages) from this
    process's stderr, and the indented or "To enable" lines that continue them; everything else
    written to stderr (Python's log, tracebacks) goes through unchanged.

    TensorFlow 2.16 and later write these lines before absl's logging is initialised, so
    `TF_CPP_MIN_LOG_LEVEL` no longer hides them; they are filtered at the file descriptor
    instead: stderr becomes a pipe that a thread copies to the real stderr, line by line.
    """
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def copy() -> None:
        dropping = False
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                continuation = line[:1] in (b" ", b"\t") or line.startswith(b"To enable")
                dropping = bool(NATIVE_LOG_LINE.match(line)) or (dropping and continuation)
                if not dropping:
                    os.write(original, line)

    thread = threading.Thread(target=copy, name="native-log-filter", daemon=True)
    thread.start()

    def restore() -> None:  # at exit: hand the last lines over before the process ends
        sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's last write end here: the copy ends
        thread.join(timeout=5)

    atexit.register(restore)

