"""Reading files that workers and operators hand over, bounded. Plain I/O helpers, no models.

Nothing here ever blocks on a FIFO, reads a device or a directory, or holds more than its bound in
memory: an output log of any size, a prompt file named by an operator, a pipe on standard input.
"""

import errno
import os
import stat

CHUNK = 1024 * 1024

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class FileTooLarge(OSError):
    """A file larger than the bound its reader allows."""


def open_regular(path):
    """Open `path` for binary reading; anything but a regular file raises OSError at once (a FIFO
    is opened non-blocking, so a FIFO with no writer never hangs the caller)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "a special file")
            raise OSError(errno.EINVAL, f"it is {kind}, not a regular file", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_tail(path, limit):
    """The last `limit` bytes of a regular file. Raises OSError."""
    with open_regular(path) as stream:
        size = os.fstat(stream.fileno()).st_size
        stream.seek(max(size - limit, 0))
        return stream.read(limit)


def read_stream_tail(stream, limit):
    """The last `limit` bytes of a binary stream read to its end, holding at most about twice
    `limit` in memory whatever the stream's length."""
    kept = bytearray()
    while chunk := stream.read(CHUNK):
        kept += chunk
        if len(kept) > 2 * limit:
            del kept[: len(kept) - limit]
    return bytes(kept[-limit:]) if limit else b""


def read_bounded(path, limit):
    """The whole of a regular file of at most `limit` bytes. Raises OSError (FileTooLarge past the bound)."""
    with open_regular(path) as stream:
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise FileTooLarge(errno.EFBIG, f"it is larger than {limit} bytes", str(path))
    return data
