"""Logging set-up shared by the entry scripts: progress on the console, everything in a file;
and `hide_native_log`, which keeps TensorFlow's C++ log lines out of the console."""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
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


#: Messages TensorFlow logs at error level on every start of a machine without a GPU or without
#: AVX-512, which are not errors of the run.
HARMLESS_ERRORS = (b"failed call to cuInit", b"oneDNN supports DT_INT32 only",
                   b"Unable to register cuDNN factory", b"Unable to register cuFFT factory",
                   b"Unable to register cuBLAS factory", b"computation placer already registered")
#: A line of the C++ log of TensorFlow and the libraries it loads that `hide_native_log` drops:
#: information and warnings in absl's format (e.g. "I0000 00:00:1796478535.095252    4296
#: port.cc:153] oneDNN custom operations are on"), the `HARMLESS_ERRORS`, and absl's notice that
#: such lines go to stderr. Other errors and fatal lines ("E...", "F...") are kept.
NATIVE_LOG_LINE = re.compile(
    rb"^(?:[IW]\d{4} \d\d:\d\d:[\d.]+ +\d+ [\w./-]+:\d+\] |"
    rb"E\d{4} \d\d:\d\d:[\d.]+ +\d+ [\w./-]+:\d+\] (?:"
    + b"|".join(re.escape(message) for message in HARMLESS_ERRORS) + rb")|"
    rb"WARNING: All log messages before absl::InitializeLog\(\))")


def hide_native_log() -> None:
    """Drop TensorFlow's C++ information and warning lines (start-up, CPU features, per-epoch
    dataset messages; `NATIVE_LOG_LINE`) from this process's stderr, and the indented or
    "To enable" lines that continue them; everything else written to stderr (Python's log,
    tracebacks, TensorFlow's errors and fatal messages) goes through unchanged.

    TensorFlow 2.16 and later write these lines before absl's logging is initialised, so
    `TF_CPP_MIN_LOG_LEVEL` no longer hides them; they are filtered at the file descriptor
    instead: stderr (and that of the processes this one starts) becomes a pipe that a small
    forked process copies to the real stderr line by line, until every writer has closed it, so
    the last lines before a crash or an abort still arrive. Call it first, before any thread
    starts (the scripts: `unet3d.cli.run`). Where fork is missing (Windows) nothing is hidden.
    """
    if not hasattr(os, "fork"):
        return
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    if os.fork() == 0:  # the filter: it outlives this process and ends when the pipe does
        for fd in (write_end, 0, 1):
            os.close(fd)
        for signal_number in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C: the traceback must pass
            signal.signal(signal_number, signal.SIG_IGN)
        try:
            _copy_lines(read_end, 2)
        finally:
            os._exit(0)
    os.close(read_end)
    os.dup2(write_end, 2)
    os.close(write_end)


def _copy_lines(source: int, target: int) -> None:
    """Copy the lines read from file descriptor `source` to `target`, without native log lines."""
    dropping = gone = False
    with os.fdopen(source, "rb") as lines:
        for line in lines:
            continuation = line[:1] in (b" ", b"\t") or line.startswith(b"To enable")
            dropping = bool(NATIVE_LOG_LINE.match(line)) or (dropping and continuation)
            while line and not (dropping or gone):
                try:
                    line = line[os.write(target, line):]
                except OSError:  # the real stderr is gone: drain the pipe quietly
                    gone = True
