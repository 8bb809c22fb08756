"""Files that appear whole or not at all: the one write path of every file the package publishes.

`atomic_write` (a file) and `atomic_folder` (a folder) hand out a hidden temporary name beside
the target (`temporary_path`); `publish` flushes it to the disk, checks it when given a check
(a NIfTI file against its header, the store by reading it back, a `.keras` file by its zip
checksums), renames it to the target and flushes the folder. A full disk, a quota or a
file-size limit becomes an `OutputError` naming the target (`write_failure`), and the temporary
is removed; `remove_stale_temporaries` clears what a killed process left.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from unet3d.errors import WRITE_ERRNOS, OutputError


def temporary_path(path: str | os.PathLike, suffix: str = "") -> Path:
    """A new empty file beside `path` (hidden, ending ".partial" + `suffix`) to write into before
    `publish` renames it to `path`: readers never see a half-written `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".partial{suffix}",
                                   dir=path.parent)
    os.close(handle)
    return Path(tmp)


def _sync(path: Path, contents: bool = True) -> None:
    """Flush a file to the disk, or a folder (with `contents`, every file and folder in it
    first). Folders that the filesystem cannot flush (some network and FUSE mounts refuse fsync
    on folders) are left."""
    items = [path]
    if contents and path.is_dir():
        items = [item for item in sorted(path.rglob("*")) if item.is_file() or item.is_dir()]
        items.append(path)
    for item in items:
        handle = os.open(item, os.O_RDONLY)
        try:
            os.fsync(handle)
        except OSError as error:
            if not item.is_dir() or error.errno not in _UNSYNCABLE:
                raise
        finally:
            os.close(handle)


# What filesystems that cannot flush a folder answer.
_UNSYNCABLE = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES})


def publish(tmp: str | os.PathLike, path: str | os.PathLike,
            check: Callable[[Path], None] | None = None) -> None:
    """Atomically rename the finished temporary file or folder `tmp` to `path`, giving it the
    permissions the umask gives new files (temporary files are created private). It is flushed
    to the disk and, with `check`, checked (`check(tmp)` raises when it is incomplete) first; the
    folder is flushed after the rename, so `path` survives a crash of the machine whole."""
    tmp, path = Path(tmp), Path(path)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, (0o777 if tmp.is_dir() else 0o666) & ~umask)
    _sync(tmp)
    if check is not None:
        check(tmp)
    os.replace(tmp, path)
    _sync(path.parent, contents=False)


def write_failure(path: str | os.PathLike, error: OSError) -> OSError:
    """The error to raise for `error`, met writing `path`: an `OutputError` naming `path` and
    what to do when the disk, a quota or a file-size limit refused the write (`WRITE_ERRNOS`),
    else `error` itself."""
    if isinstance(error, OutputError) or error.errno not in WRITE_ERRNOS:
        return error
    return OutputError(error.errno, f"{path}: could not be written ({os.strerror(error.errno)}); "
                       "nothing was published under this name. Free some space (or raise the "
                       "quota or file-size limit) and run the command again")


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path` to fill; on success it takes the place of `path`
    (an existing `path` is moved aside first, deleted once the new one is in place, and put back
    if the rename fails), on any error it is removed and `path` is left as it was. A full disk,
    quota or file-size limit becomes an `OutputError` naming `path` (`write_failure`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
        if not path.exists():
            publish(tmp, path)
            return
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial-old",
                                    dir=path.parent))
        try:
            os.replace(path, old)
            try:
                publish(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failure(path, error) from error
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files `temporary_path` made for `path` that a killed process left
    behind (only call it when no other process may be writing `path`); returns them."""
    path = Path(path)
    stale = sorted(path.parent.glob(f".{glob.escape(path.name)}.*.partial*"))
    for tmp in stale:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
    return stale


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, suffix: str = "",
                 check: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write into; on success it is flushed to the disk,
    checked with `check(tmp)` (which raises when it is incomplete) and renamed to `path`; on any
    error (or interrupt) it is removed and `path` is left as it was. A full disk, quota or
    file-size limit becomes an `OutputError` naming `path` (`write_failure`)."""
    tmp = temporary_path(path, suffix)
    try:
        yield tmp
        publish(tmp, path, check)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise write_failure(path, error) from error
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
