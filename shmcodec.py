"""What load_shared.py and show_shared.py share: the bytes, the key and the lock.

The bytes. Qt's `QDataStream << QString` writes a big-endian 32-bit *byte* count and then
the text as UTF-16BE code units. We write and read exactly that, so a Qt program and these
scripts read each other's segments.

The key. Key "MySharedMemory" names the POSIX segment "/MySharedMemory": the one that
`multiprocessing.shared_memory.SharedMemory("MySharedMemory")` opens, and the one a Qt 6
program opens with `QSharedMemory(QSharedMemory::platformSafeKey("MySharedMemory"))`.

The lock. Qt guards a segment with `lock()`/`unlock()`; we use fcntl locks on one lock file
per key ($TMPDIR/qshm-KEY.lock, else /tmp/qshm-KEY.lock). It holds two one-byte locks:
  DATA_LOCK  a loader holds it exclusively while it writes, readers share it while they
             read: nobody ever sees half a text.
  OWNER_LOCK the loader holds it for as long as it lives. The kernel drops it when the
             loader dies, even by SIGKILL, so "is the owner alive?" needs no pid guessing.
The file's text is the loader's logbook, "PID writing" or "PID loaded". A clean exit
empties it, so a logbook left behind with a free OWNER_LOCK means the loader crashed.
"""

import fcntl
import os
import stat
import sys
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory

import _posixshmem  # the C module behind SharedMemory; see unlink_segment()

DEFAULT_KEY = "MySharedMemory"

# --- The bytes -----------------------------------------------------------------------------

NULL_COUNT = 0xFFFF_FFFF  # a null QString: no data follows
LARGE_COUNT = 0xFFFF_FFFE  # Qt 6.7+: the real byte count follows as a signed 64-bit integer


class QStringFormatError(ValueError):
    """The bytes are not a QString as QDataStream writes it."""


def count_prefix(byte_count):
    """The QDataStream size prefix: 4 bytes, or the Qt 6.7+ marker and 8 more bytes."""
    if byte_count < LARGE_COUNT:
        return byte_count.to_bytes(4, "big")
    return LARGE_COUNT.to_bytes(4, "big") + byte_count.to_bytes(8, "big")


def qstring_parts(text):
    """Return (prefix, payload): the byte count and the UTF-16BE code units of text.

    They are kept apart so that a large payload is copied only once: into the segment.
    None is the null QString.
    """
    if text is None:
        return NULL_COUNT.to_bytes(4, "big"), b""
    # "surrogatepass": a QString may hold a lone surrogate; keep it as the code unit it is.
    payload = text.encode("utf-16-be", "surrogatepass")
    return count_prefix(len(payload)), payload


def encode_qstring(text):
    """Return the bytes that `QDataStream << QString(text)` writes (None: a null QString)."""
    prefix, payload = qstring_parts(text)
    return prefix + payload


def decode_qstring(buffer):
    """Return the text that `QDataStream >> QString` reads from the start of buffer.

    None stands for a null QString. Bytes after the string are ignored, since a segment
    may be larger than its text. The code units are decoded straight from the buffer (a
    segment's memory, say), without copying it first. Raises QStringFormatError.
    """
    with memoryview(buffer) as data:
        span = qstring_span(data)
        return None if span is None else str(data[span[0]:span[1]], "utf-16-be", "surrogatepass")


def qstring_span(data):
    """Return (start, end): where the code units of the QString at the start of data lie,
    or None for a null QString. Raises QStringFormatError, saying what is wrong."""
    if len(data) < 4:
        raise QStringFormatError(f"byte count cut short: {len(data)} of 4 bytes")
    count, start = int.from_bytes(data[:4], "big"), 4
    if count == NULL_COUNT:
        return None
    if count == LARGE_COUNT:
        if len(data) < 12:
            raise QStringFormatError(f"large-size count cut short: {len(data)} of 12 bytes")
        count, start = int.from_bytes(data[4:12], "big", signed=True), 12
        if count == -1:  # Qt reads this as null too
            return None
        if count < 0:
            raise QStringFormatError(f"bad large-size count {count}")
    if count % 2:
        raise QStringFormatError(f"odd byte count {count}: UTF-16 needs 2 bytes a unit")
    if start + count > len(data):
        raise QStringFormatError(
            f"byte count {count} runs past the end: {len(data) - start} bytes follow")
    return start, start + count


# --- The key -------------------------------------------------------------------------------

# A POSIX shared-memory name is one file name: 255 bytes on Linux, 30 (+ "/") on macOS.
MAX_KEY_BYTES = 30 if sys.platform == "darwin" else 255


def key_problem(key):
    """Return what makes key unusable as a segment name, or None if it is fine."""
    if not key:
        return "the key is empty"
    if not key.isascii() or not key.isprintable():
        return f"key {key!r} must be printable ASCII"
    if "/" in key or key in (".", ".."):
        return f"key {key!r} must be a plain name: no '/', not '.' or '..'"
    if len(key) > MAX_KEY_BYTES:
        return f"key is {len(key)} bytes long; this system allows {MAX_KEY_BYTES}"
    return None


def parse_command_line(usage, flags=(), most_operands=0):
    """Read sys.argv: return (key, options, operands). A small getopt for our small commands.

    argparse would do the same, but importing and setting it up costs more time than all
    the rest that these scripts do. "--key KEY" (or --key=KEY) is understood by both
    scripts; each name in flags is True when given, or its value when given as --NAME=VALUE.
    -h/--help prints usage and exits 0; a bad command line exits 2.
    """
    key, options, operands = DEFAULT_KEY, {}, []
    args = iter(sys.argv[1:])
    for arg in args:
        name, equals, value = arg.partition("=")
        if arg in ("-h", "--help"):
            print(usage, end="")
            sys.exit(0)
        elif arg == "--":  # what follows is an operand, even if it starts with "-"
            operands.extend(args)
        elif name == "--key":
            key = value if equals else next(args, None)
            if key is None:
                usage_error("--key needs a KEY")
        elif name in flags:
            options[name] = value if equals else True
        elif arg.startswith("-") and arg != "-":
            usage_error(f"unknown option {arg}")
        else:
            operands.append(arg)
    if len(operands) > most_operands:
        usage_error(f"unexpected argument {operands[most_operands]!r}")
    problem = key_problem(key)
    if problem:
        usage_error(problem)
    return key, options, operands


def usage_error(message):
    """Exit 2 with one line on stderr that says what is wrong."""
    print(f"{os.path.basename(sys.argv[0])}: {message} (see --help)", file=sys.stderr)
    sys.exit(2)


# --- The segment ---------------------------------------------------------------------------

if sys.version_info < (3, 13):
    # Up to 3.12, every SharedMemory, even one that only attaches, registers with the
    # resource tracker: a helper process that unlinks the segment when *this* process
    # exits and warns of a "leak". Here the loader alone decides when a segment dies,
    # so this process tells the tracker nothing. (3.13 says the same with track=False.)
    resource_tracker.register = resource_tracker.unregister = lambda name, rtype: None
    _UNTRACKED = {}
else:
    _UNTRACKED = {"track": False}


def create_segment(key, size):
    """Create segment /key of size bytes, its memory reserved: FileExistsError if it exists."""
    segment = SharedMemory(key, create=True, size=size, **_UNTRACKED)
    if hasattr(os, "posix_fallocate"):
        # A new segment is sparse: its pages are found only when first written, and a
        # full /dev/shm then kills us with SIGBUS. Reserving them now turns that into an
        # OSError (ENOSPC) we can report.
        try:
            os.posix_fallocate(segment._fd, 0, size)
        except OSError:
            segment.close()
            unlink_segment(key)
            raise
    return segment


def attach_segment(key):
    """Map the existing segment /key: FileNotFoundError if there is none."""
    return SharedMemory(key, **_UNTRACKED)


def segment_exists(key):
    try:
        attach_segment(key).close()
    except FileNotFoundError:
        return False
    except ValueError:  # a 0-byte segment exists, but cannot be mapped
        pass
    return True


def unlink_segment(key):
    """Remove the name /key. Processes that mapped it keep their memory until they close it.

    SharedMemory.unlink() needs the segment mapped first, which fails for a 0-byte segment
    left by a crash, and before 3.13 it calls the resource tracker; so call shm_unlink.
    """
    _posixshmem.shm_unlink("/" + key)


# --- The lock file -------------------------------------------------------------------------

DATA_LOCK, OWNER_LOCK = 0, 1  # byte offsets of the two locks in the lock file


class LockFileError(OSError):
    """The lock file is not one we may use."""


def lock_path(key):
    """$TMPDIR/qshm-KEY.lock, else /tmp/qshm-KEY.lock: where Qt keeps its key files too."""
    name = f"qshm-{key}.lock"
    if len(name) > 255:  # a key near the limit: keep the file name legal, and unique
        import hashlib
        name = f"qshm-{key[:200]}-{hashlib.sha1(key.encode()).hexdigest()}.lock"
    return os.path.join(os.environ.get("TMPDIR") or "/tmp", name)


def open_lock_file(key):
    """Open (or create, mode 0600) the key's lock file and return its descriptor.

    The temporary directory is shared with every user, so what stands at that path may
    be a trap: a symlink is never followed (O_NOFOLLOW), and a file that is not a regular
    file of ours is refused, never truncated or chmod-ed.
    """
    path = lock_path(key)
    try:
        # O_NONBLOCK: opening a FIFO planted there must not hang us.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
    except OSError as error:
        if os.path.islink(path):
            raise LockFileError(f"lock file {path} is a symlink; refusing to follow it")
        raise LockFileError(f"cannot open lock file {path}: {error.strerror}") from None
    info = os.fstat(fd)
    problem = ("is not a regular file" if not stat.S_ISREG(info.st_mode) else
               f"belongs to user {info.st_uid}, not to us" if info.st_uid != os.geteuid() else
               None)
    if problem:
        os.close(fd)
        raise LockFileError(f"lock file {path} {problem}; refusing to use it")
    return fd


def lock(fd, which, exclusive, wait=True):
    """Take one of the two byte locks. Without wait, return False if someone holds it."""
    mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
    try:
        fcntl.lockf(fd, mode, 1, which)
    except (BlockingIOError, PermissionError):  # EAGAIN or EACCES, by platform
        return False
    return True


def unlock(fd, which):
    fcntl.lockf(fd, fcntl.LOCK_UN, 1, which)


def read_logbook(fd):
    """Return (pid, state) from the lock file, or None if it is empty (no loader wrote it)."""
    words = os.pread(fd, 64, 0).decode("ascii", "replace").split()
    if len(words) >= 2 and words[0].isdigit():
        return int(words[0]), words[1]
    return None


def write_logbook(fd, state):
    """Note "PID state" in the lock file; an empty state empties it."""
    line = f"{os.getpid()} {state}\n".encode() if state else b""
    os.pwrite(fd, line, 0)
    os.ftruncate(fd, len(line))


def owner_alive(fd):
    """True if a loader holds this key now: we try its OWNER_LOCK and let go at once.

    Call it only while holding DATA_LOCK, and never in the loader itself: a loader tries
    OWNER_LOCK only while it holds DATA_LOCK exclusively, so the two tries never meet.
    """
    if lock(fd, OWNER_LOCK, exclusive=False, wait=False):
        unlock(fd, OWNER_LOCK)
        return False
    return True
