"""What load_shared.py and show_shared.py share, in the order a learner meets it.

The bytes. Qt's `QDataStream << QString` writes a big-endian 32-bit *byte* count and then
the text as UTF-16BE code units. We write and read exactly that, so a Qt program and these
scripts read each other's segments.

The key. Qt turns key "MySharedMemory" into a segment in one of two ways (see "The two
kinds of segment" below): the POSIX segment "/MySharedMemory" for Qt 6's
`platformSafeKey("MySharedMemory")`, the same one that
`multiprocessing.shared_memory.SharedMemory("MySharedMemory")` opens; or, for the article's
plain `setKey("MySharedMemory")` and every Qt 5 program, a System V segment.

The lock file. Our own rules (a reader never sees half a text, one loader per key, what a
crash left behind) live in fcntl locks on one lock file per key, qshm-KEY.lock in a
directory of this user's alone ($XDG_RUNTIME_DIR, else $TMPDIR/qshm-UID or /tmp/qshm-UID;
a key too long for a file name is cut and ends in its sha1). It holds one-byte locks:
  DATA_LOCK  a loader holds it exclusively while it writes, readers share it while they
             read: nobody ever sees half a text.
  OWNER_LOCK the loader holds it for as long as it lives. The kernel drops it when the
             loader dies, even by SIGKILL, so "is the owner alive?" needs no pid guessing.
  WAITING_LOCK a viewer shares it while it waits for Qt's lock: it is no holder of that.
The file's text is the loader's logbook, "PID writing KIND" or "PID loaded KIND". A clean
exit empties it, so a logbook left behind with a free OWNER_LOCK means the loader died.

Qt's lock. Qt's `lock()`/`unlock()` take a semaphore, and so do we, always after our lock
file, so that a Qt program and these scripts never write and read at once.
"""
import collections
import ctypes
import errno
import fcntl
import hashlib  # already loaded by multiprocessing.shared_memory: free here
import mmap  # likewise
import os
import stat
import sys
import time
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory

import _posixshmem  # the C module behind SharedMemory; see Posix.remove()

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

# A POSIX shared-memory name is one file name: 255 bytes on Linux, 30 (+ "/") on macOS;
# Qt's semaphore for it is the file "sem.KEY" in /dev/shm on Linux, so 251 there.
MAX_KEY_BYTES = 30 if sys.platform == "darwin" else 251


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


# Qt's System V key file name is "qipc_sharedmemory_", the key's letters and a 40-digit
# sha1: one file name of at most 255 bytes, so a System V key has at most 197 letters.
MAX_SYSTEM_V_LETTERS = 255 - len("qipc_sharedmemory_") - 40


def system_v_key_problem(key):
    """Return why key cannot name a Qt System V segment, or None if it can."""
    letters = len(key_letters(key))
    if letters > MAX_SYSTEM_V_LETTERS:
        return (f"--sysv: key has {letters} letters; Qt's key file name allows "
                f"{MAX_SYSTEM_V_LETTERS}")
    return None


def key_letters(key):
    return "".join(char for char in key if char.isascii() and char.isalpha())


# --- The lock file -------------------------------------------------------------------------

DATA_LOCK, OWNER_LOCK = 0, 1  # byte offsets of the two locks in the lock file
WAITING_LOCK = 2  # a viewer that waits for Qt's lock holds it shared: see waiters()
LOCK_NAMES = {DATA_LOCK: "data", OWNER_LOCK: "owner", WAITING_LOCK: "waiting"}


class LockFileError(OSError):
    """The lock file is not one we may use."""


def lock_dir(create):
    """Where this user's lock files live, where no other user can write: $XDG_RUNTIME_DIR,
    else a private directory of ours in the temporary directory ($TMPDIR, else /tmp),
    made on first use with mode 0700, as tmux and ssh-agent do.

    Either may be a trap (the temporary directory is everyone's, and the environment may
    be another user's): anything that is not a directory of ours, closed to others, is
    refused. Without create, return None if the directory is not there.
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    path = runtime or os.path.join(os.environ.get("TMPDIR") or "/tmp", f"qshm-{os.geteuid()}")
    if create and not runtime:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
    try:
        info = os.lstat(path)  # lstat: a symlink is not our directory
    except FileNotFoundError:
        return None
    problem = ("is not a directory" if not stat.S_ISDIR(info.st_mode) else
               f"belongs to user {user_name(info.st_uid)}" if info.st_uid != os.geteuid() else
               f"may be written by others (mode {info.st_mode & 0o777:o})"
               if info.st_mode & 0o022 else None)
    if problem:
        raise LockFileError(f"{path} {problem}; refusing to keep lock files there")
    return path


def lock_path(key, create=False):
    """The key's lock file, qshm-KEY.lock in lock_dir(); None if that is not there."""
    folder = lock_dir(create)
    name = f"qshm-{key}.lock"
    if len(name) > 255:  # a key near the limit: keep the file name legal, and unique
        name = f"qshm-{key[:200]}-{hashlib.sha1(key.encode()).hexdigest()}.lock"
    return folder and os.path.join(folder, name)


def user_name(uid):
    """The name of user uid, else the number."""
    import pwd  # only a clash with another user needs it
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class LockFile:
    """The key's lock file (see the top of this module): its byte locks and the logbook."""

    def __init__(self, key, create=True):
        """Open (with create, make: mode 0600) the key's lock file.

        Without create, FileNotFoundError if it is not there: then no loader of ours has
        run under this key, and a viewer leaves nothing behind. Even in our own directory,
        a symlink is never followed (O_NOFOLLOW), and a file that is not a regular file of
        ours is refused, never truncated or chmod-ed.
        """
        self.key, self.path = key, lock_path(key, create)
        if self.path is None:
            raise FileNotFoundError(f"no lock file for key {key!r}")
        try:
            # O_NONBLOCK: opening a FIFO planted there must not hang us.
            fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK |
                         (os.O_CREAT if create else 0), 0o600)
        except FileNotFoundError:
            raise FileNotFoundError(f"no lock file {self.path}") from None
        except OSError as error:
            if os.path.islink(self.path):
                raise LockFileError(f"lock file {self.path} is a symlink; "
                                    "refusing to follow it") from None
            raise LockFileError(f"cannot open lock file {self.path}: {error.strerror}") from None
        info = os.fstat(fd)
        problem = ("is not a regular file" if not stat.S_ISREG(info.st_mode) else
                   f"belongs to user {info.st_uid}, not to us" if info.st_uid != os.geteuid()
                   else None)
        if problem:
            os.close(fd)
            raise LockFileError(f"lock file {self.path} {problem}; refusing to use it")
        self.fd = fd
        tell("our lock file", f"open {self.path}")

    def lock(self, which, exclusive, step=None, wait=True, give_up=lambda: False):
        """Take one of the byte locks; return False if someone holds it and we may not
        wait, or give_up() says to stop waiting (a stop signal came).

        fcntl has no timed wait, so a wait is a try every 10 ms: that lets us say, after a
        second, that we wait and for whom, and stop when told, instead of hanging.
        """
        notice = waiting_notice(f"the lock on key {self.key!r} ({self.path})",
                                lambda: self.holder(which, exclusive))
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        while True:
            try:
                fcntl.lockf(self.fd, mode | fcntl.LOCK_NB, 1, which)
                break
            except (BlockingIOError, PermissionError):  # EAGAIN or EACCES, by platform
                if not wait or give_up():
                    return False
            notice()
            time.sleep(0.01)
        if step:
            tell(step, f"fcntl: {'exclusive' if exclusive else 'shared'} lock on byte "
                       f"{which} ({LOCK_NAMES[which]}) of our lock file")
        return True

    def unlock(self, which, step=None):
        fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, which)
        if step:
            tell(step, f"fcntl: unlock byte {which} ({LOCK_NAMES[which]}) of our lock file")

    def holder(self, which, exclusive):
        """Who holds the byte lock that we wait for, as fcntl(F_GETLK) tells (Linux)."""
        if not sys.platform.startswith("linux"):
            return "another process"
        wanted = Flock(fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK, os.SEEK_SET, which, 1)
        found = Flock.from_buffer_copy(fcntl.fcntl(self.fd, fcntl.F_GETLK, bytes(wanted)))
        return process_name(found.pid) if found.type != fcntl.F_UNLCK else "another process"

    def read_logbook(self):
        """Return the Logbook (pid, state, kind tag) in the file, or None if it is empty."""
        words = os.pread(self.fd, 64, 0).decode("ascii", "replace").split()
        if len(words) >= 2 and words[0].isdigit():
            kind = words[2] if len(words) > 2 and words[2] in KINDS else Posix.tag
            return Logbook(int(words[0]), words[1], kind)
        return None

    def write_logbook(self, state, kind=None):
        """Note "PID state kind" in the file; an empty state empties it."""
        line = f"{os.getpid()} {state} {kind.tag}\n".encode() if state else b""
        os.pwrite(self.fd, line, 0)
        os.ftruncate(self.fd, len(line))
        tell("logbook", f"{line.decode().strip() or '(empty)'} in our lock file")

    def waiters(self):
        """The pids that hold WAITING_LOCK: viewers of ours that only wait for Qt's lock,
        as Linux's /proc/locks lists them ("1: POSIX ADVISORY READ PID MAJ:MIN:INODE 2 2").
        A waiter is never taken for a holder, even while it looks around itself."""
        inode = f":{os.fstat(self.fd).st_ino} {WAITING_LOCK} {WAITING_LOCK}"
        try:
            with open("/proc/locks") as locks:
                return {int(line.split()[4]) for line in locks if line.rstrip().endswith(inode)}
        except OSError:
            return set()

    def owner_alive(self):
        """True if a loader holds this key now: we try its OWNER_LOCK and let go at once.

        Call it only while holding DATA_LOCK, and never in the loader itself: a loader
        tries OWNER_LOCK only while it holds DATA_LOCK exclusively, so the two never meet.
        """
        if self.lock(OWNER_LOCK, exclusive=False, wait=False):
            self.unlock(OWNER_LOCK)
            return False
        return True


Logbook = collections.namedtuple("Logbook", "pid state kind")


class Flock(ctypes.Structure):
    """struct flock as Linux lays it out: what fcntl(F_GETLK) reads and fills in."""
    _fields_ = [("type", ctypes.c_short), ("whence", ctypes.c_short),
                ("start", ctypes.c_int64), ("len", ctypes.c_int64), ("pid", ctypes.c_int32)]


# --- The two kinds of segment ----------------------------------------------------------------
#
# Qt names a segment in one of two ways, and each way has its own kind of lock:
#   Posix    QSharedMemory(QSharedMemory::platformSafeKey("KEY")), Qt 6.6 and later: the
#            POSIX segment /KEY, locked with the POSIX named semaphore /KEY.
#   SystemV  QSharedMemory("KEY") or setKey("KEY"), as the article and every Qt 5 program
#            write it (a "legacy" key): a System V segment found through ftok() of a key
#            file in the temporary directory, locked with a System V semaphore found the
#            same way. The standard library reaches these through ctypes on the C library.
# Both classes take the same steps: exists(), make(size), attach(), remove(), and
# open_qt_lock() for the semaphore that Qt's lock() and unlock() use.

if sys.version_info < (3, 13):
    # Up to 3.12, every SharedMemory, even one that only attaches, registers with the
    # resource tracker: a helper process that unlinks the segment when *this* process
    # exits and warns of a "leak". Here the loader alone decides when a segment dies,
    # so this process tells the tracker nothing. (3.13 says the same with track=False.)
    resource_tracker.register = resource_tracker.unregister = lambda name, rtype: None
    UNTRACKED = {}
else:
    UNTRACKED = {"track": False}


class Posix:
    """The POSIX segment /KEY (a file in /dev/shm on Linux), as Qt 6's platformSafeKey."""
    tag = "posix"  # how the loader's logbook names this kind

    def __init__(self, key):
        self.key = key
        self.name = "/" + key  # the segment's name, and the name of Qt's semaphore for it

    def exists(self):
        try:
            # O_NONBLOCK: opening a FIFO planted there must not hang us.
            os.close(_posixshmem.shm_open(self.name, os.O_RDONLY | os.O_NONBLOCK))
        except FileNotFoundError:
            return False
        except PermissionError:  # there, but another user's
            pass
        return True

    def make(self, size):
        """Create and map the segment: FileExistsError if it exists (shm_open + ftruncate)."""
        segment = SharedMemory(self.key, create=True, size=size, **UNTRACKED)
        if hasattr(os, "posix_fallocate"):
            # A new segment is sparse: its pages are found only when first written, and a
            # full /dev/shm then kills us with SIGBUS. Reserving them now turns that into
            # an OSError (ENOSPC) we can report.
            try:
                os.posix_fallocate(segment._fd, 0, size)
            except OSError:
                segment.close()
                self.remove()
                raise
        tell(f"create({size})", f"shm_open(O_CREAT|O_EXCL) + ftruncate + mmap: {self.name}")
        return segment

    def attach(self):
        """Map the existing segment read-only: FileNotFoundError if there is none.

        Not with SharedMemory(name): when its mmap fails (a memory limit, say), it unlinks
        the segment, so a failed reader would destroy the loader's text (CPython issue
        153279). A reader here can change nothing: it maps the pages read-only.
        """
        segment = ReadOnlySegment(self.name)
        tell("attach()", f"shm_open(O_RDONLY) + mmap: {self.name}, {segment.size} bytes")
        return segment

    def detach(self, segment):
        segment.close()
        tell("detach()", f"munmap: {self.name}")

    def remove(self, segment=None):
        """Remove the name, if it is there; whoever mapped it keeps the memory until closing it.

        SharedMemory.unlink() needs the segment mapped first, which fails for a 0-byte
        segment left by a crash, and before 3.13 it calls the resource tracker.
        """
        try:
            _posixshmem.shm_unlink(self.name)
        except FileNotFoundError:
            return
        tell("remove", f"shm_unlink: {self.name} is gone (mappings stay until unmapped)")

    def users(self):
        """POSIX keeps no count of the processes that map a segment: None, "cannot tell"."""
        return None

    def owners(self):
        """[Owned] for the segment and Qt's semaphore for it, where they exist: on Linux
        they are files in /dev/shm, which anyone may lstat (never following a symlink)."""
        found = []
        for what, path in ((f"segment {self.name}", f"/dev/shm/{self.key}"),
                           (f"Qt's lock {self.name}", f"/dev/shm/sem.{self.key}")):
            try:
                found.append(Owned(what, os.lstat(path).st_uid, f"rm {path}", ""))
            except OSError:
                pass
        return found

    def open_qt_lock(self, create=False):
        return PosixSemaphore(self.name, create)

    def describe(self, size):
        where = f" = /dev/shm/{self.key}" if sys.platform.startswith("linux") else ""
        return [("segment", f"{self.name}{where}, {size} bytes")]


class ReadOnlySegment:
    """A POSIX segment mapped read-only: .buf and .size, as SharedMemory has, and close()."""

    def __init__(self, name):
        fd = _posixshmem.shm_open(name, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO: no hang
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise OSError(f"{name} is not a shared-memory segment (a FIFO or device "
                              "stands in its place); leaving it alone")
            self.size = info.st_size
            # mmap cannot map 0 bytes: a 0-byte segment reads as no bytes.
            self._map = mmap.mmap(fd, self.size, prot=mmap.PROT_READ) if self.size else b""
        finally:
            os.close(fd)
        self.buf = memoryview(self._map)

    def close(self):
        self.buf.release()
        if self._map:
            self._map.close()


Owned = collections.namedtuple("Owned", "what uid removal note")
# what: "segment /KEY", ...; uid: its owner; removal: the command that removes it (for
# root); note: what more can be told, such as that nobody is attached to it.


# System V through ctypes: the C library's functions, as the article's Qt program calls them.
SYSTEM_V_HERE = sys.platform.startswith("linux") and ctypes.sizeof(ctypes.c_void_p) == 8
IPC_CREAT, IPC_EXCL, IPC_RMID, IPC_STAT = 0o1000, 0o2000, 0, 2
SETVAL, GETPID, SEM_UNDO, SHM_RDONLY, MADV_POPULATE_READ = 16, 11, 0x1000, 0o10000, 22
QT_FTOK_ID = ord("Q")  # Qt's ftok() project id: the IPC key reads 0x51...... in `ipcs`

libc = ctypes.CDLL(None, use_errno=True)  # the C library this Python runs on
libc.shmat.restype = libc.sem_open.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmdt.argtypes = libc.sem_post.argtypes = libc.sem_close.argtypes = [ctypes.c_void_p]
libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
libc.shmctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


class ShmidDs(ctypes.Structure):
    """struct shmid_ds as 64-bit Linux lays it out (x86-64 and aarch64 alike)."""
    _fields_ = [("ipc_key", ctypes.c_int32), ("uid", ctypes.c_uint32),
                ("gid", ctypes.c_uint32), ("cuid", ctypes.c_uint32),
                ("cgid", ctypes.c_uint32), ("mode", ctypes.c_uint32),
                ("perm_rest", ctypes.c_byte * 24), ("segsz", ctypes.c_size_t),
                ("times", ctypes.c_int64 * 3), ("cpid", ctypes.c_int32),
                ("lpid", ctypes.c_int32), ("nattch", ctypes.c_uint64),
                ("reserved", ctypes.c_uint64 * 2)]


class Sembuf(ctypes.Structure):
    _fields_ = [("num", ctypes.c_ushort), ("op", ctypes.c_short), ("flags", ctypes.c_short)]


class Timespec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]


def c_call(result, name):
    """Return result, or raise the C library's errno as an OSError (FileNotFoundError, ...)."""
    if result == -1 or result is None:  # None: a NULL pointer, as sem_open fails
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), name)
    return result


def shm_status(shmid):
    """shmctl(IPC_STAT): the segment's size, creator, number of attached processes..."""
    status = ShmidDs()
    c_call(libc.shmctl(shmid, IPC_STAT, ctypes.byref(status)), f"shmid {shmid}")
    return status


def qt_key_file(kind, key):
    """Qt's key file for a legacy key: qipc_<kind>_<the key's letters><sha1 of the key>.

    kind is "sharedmemory" for the segment and "systemsem" for its semaphore. Qt puts it
    in QDir::tempPath(): $TMPDIR, else /tmp.
    """
    digest = hashlib.sha1(key.encode()).hexdigest()
    return os.path.join(os.path.normpath(os.environ.get("TMPDIR") or "/tmp"),
                        f"qipc_{kind}_{key_letters(key)}{digest}")


def ipc_key(key_file, create):
    """ftok(key_file, 'Q'): the number the kernel knows the segment or semaphore by.

    ftok() reads the file's inode, so the file must exist: with create, make it as Qt does
    (mode 0640). The temporary directory is everyone's, so a key file may be a trap: one
    that is a symlink, not a regular file, or another user's is never used to make
    anything (a symlink is not even followed to look). Returns (IPC key, the inode we
    made, or None).
    """
    made = None
    if create:
        try:
            fd = os.open(key_file, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW, 0o640)
            made = os.fstat(fd).st_ino
            os.close(fd)
        except FileExistsError:
            pass
    info = os.lstat(key_file)  # FileNotFoundError if there is none
    if stat.S_ISLNK(info.st_mode) and not create:
        raise FileNotFoundError(errno.ENOENT, "a symlink, not followed", key_file)
    problem = ("is a symlink" if stat.S_ISLNK(info.st_mode) else
               "is not a regular file" if not stat.S_ISREG(info.st_mode) else
               f"belongs to user {user_name(info.st_uid)}"
               if create and info.st_uid != os.geteuid() else None)
    if problem:
        raise KeyFileError(f"Qt's key file {key_file} {problem}; refusing to use it")
    return c_call(libc.ftok(os.fsencode(key_file), QT_FTOK_ID), key_file), made


class KeyFileError(OSError):
    """A Qt key file that we must not use."""


def remove_key_file(path, made=None):
    """Unlink Qt's key file if it is a regular file of ours and, given made, still the
    inode we made: never a symlink, nor a file that someone put in its place."""
    try:
        info = os.lstat(path)
        if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and \
                made in (None, info.st_ino):
            os.unlink(path)
    except OSError:
        pass


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        pass
    return True


class SystemV:
    """Qt's System V segment for the legacy key KEY: the article's QSharedMemory("KEY")."""
    tag = "sysv"

    def __init__(self, key):
        if not SYSTEM_V_HERE:
            raise OSError("Qt's System V segments are supported on 64-bit Linux only")
        self.key = key
        self.name = f"{key} (System V)"
        self.key_file = qt_key_file("sharedmemory", key)
        self.lock_key_file = qt_key_file("systemsem", key)
        self.made_key_file = None  # the inode of the key file that this process made

    def shmid(self):
        """shmget(): the id of the segment under our IPC key (FileNotFoundError if none)."""
        return c_call(libc.shmget(ipc_key(self.key_file, create=False)[0], 0, 0), self.name)

    def exists(self):
        if system_v_key_problem(self.key):  # no key file can have such a name
            return False
        try:
            self.shmid()
        except FileNotFoundError:  # no key file, or no segment under its key
            return False
        return True

    def make(self, size):
        """Create and attach the segment, as Qt's create(): FileExistsError if it exists.
        The loader keeps the id it gets: it never looks its own segment up again."""
        key, made = ipc_key(self.key_file, create=True)
        self.made_key_file = made or self.made_key_file  # the one we made last
        shmid = c_call(libc.shmget(key, size, 0o600 | IPC_CREAT | IPC_EXCL), self.name)
        segment = AttachedSegment(shmid, readonly=False)
        tell(f"create({size})", f"shmget(ftok({os.path.basename(self.key_file)}, 'Q'), "
                                f"IPC_CREAT|IPC_EXCL) + shmat: shmid {shmid}")
        return segment

    def attach(self):
        """Attach read-only to the existing segment: FileNotFoundError if there is none."""
        segment = AttachedSegment(self.shmid(), readonly=True)
        tell("attach()", f"shmget + shmat(SHM_RDONLY): shmid {segment.shmid}, "
                         f"{segment.size} bytes")
        return segment

    def detach(self, segment):
        segment.close()
        tell("detach()", f"shmdt: shmid {segment.shmid}")

    def remove(self, segment=None):
        """Remove the segment (IPC_RMID) and Qt's key file, as Qt's last detach() does: our
        own by the id we made it with, else the one found under the key.

        The key is free at once; processes still attached keep their memory until they
        detach, and then the kernel frees it.
        """
        try:
            shmid = segment.shmid if segment else self.shmid()
            c_call(libc.shmctl(shmid, IPC_RMID, None), self.name)
            tell("remove", f"shmctl(IPC_RMID): shmid {shmid}; unlink "
                           f"{os.path.basename(self.key_file)}")
        except OSError as error:
            if error.errno not in (errno.ENOENT, errno.EINVAL, errno.EIDRM):  # not gone
                raise
        remove_key_file(self.key_file, self.made_key_file)

    def users(self):
        """How many processes are attached: 0 means nobody holds it (its maker died)."""
        return shm_status(self.shmid()).nattch

    def owners(self):
        """[Owned] for Qt's key files, the segment and Qt's semaphore set, where they
        exist, as lstat and /proc/sysvipc tell anyone (IPC_STAT would need leave to read)."""
        found, key_files = [], []  # the segment and the lock first: they matter most
        for what, table, key_file in ((f"segment {self.name}", "shm", self.key_file),
                                      (f"Qt's lock for {self.name}", "sem", self.lock_key_file)):
            try:
                key_files.append(Owned(f"Qt's key file {key_file}", os.lstat(key_file).st_uid,
                                       f"rm {key_file}", ""))
                key = ipc_key(key_file, create=False)[0]
            except OSError:  # none, or a symlink or other file that finds no segment
                continue
            with open(f"/proc/sysvipc/{table}") as listing:
                columns = listing.readline().split()  # key shmid perms ... uid gid ...
                for row in (dict(zip(columns, line.split())) for line in listing):
                    if int(row["key"]) == key:
                        ident = row.get("shmid") or row["semid"]
                        nobody = table == "shm" and row["nattch"] == "0"
                        found.append(Owned(what, int(row["uid"]),
                                           f"ipcrm -{'m' if table == 'shm' else 's'} {ident}",
                                           " and nobody is attached to it (its loader is "
                                           "gone)" if nobody else ""))
        return found + key_files

    def open_qt_lock(self, create=False):
        return SystemVSemaphore(self.lock_key_file, create, self.name)

    def describe(self, size):
        shmid = self.shmid()
        status = shm_status(shmid)
        maker = f"pid {status.cpid} ({'alive' if pid_alive(status.cpid) else 'gone'})"
        return [("segment", f"{self.name}, {size} bytes: shmid {shmid}, IPC key "
                            f"0x{status.ipc_key & 0xFFFF_FFFF:08x} (ipcs -m lists it)"),
                ("key file", self.key_file),
                ("attached", f"{status.nattch} process{'es' if status.nattch > 1 else ''}, "
                             f"this one included; made by {maker}")]


class AttachedSegment:
    """A System V segment mapped into this process with shmat(): .buf and .size, as
    SharedMemory has, and close() to detach (shmdt)."""

    def __init__(self, shmid, readonly):
        address = libc.shmat(shmid, None, SHM_RDONLY if readonly else 0)
        if address == ctypes.c_void_p(-1).value:
            c_call(-1, f"shmat {shmid}")
        self.shmid, self._address = shmid, address
        self.size = shm_status(shmid).segsz  # the size, as Qt's attach() learns it
        if readonly:
            # The kernel maps System V memory a page per fault, where a POSIX mapping gets
            # its neighbours too, which makes reading it all take up to twice as long: so
            # map all pages at once (Linux 5.14 and later; an older kernel ignores it).
            libc.madvise(address, self.size, MADV_POPULATE_READ)
        # A view of the mapped bytes, without a copy; close() releases it before shmdt().
        memory = (ctypes.c_ubyte * self.size).from_address(address)
        self.buf = memoryview(memory).cast("B")

    def close(self):
        if self._address is not None:
            self.buf.release()
            libc.shmdt(ctypes.c_void_p(self._address))
            self._address = None


def other_users(kinds):
    """[Owned]: what of these kinds (segments, Qt's locks and key files) another user owns.
    None of it is ours to read, replace or remove, root or not."""
    return [owned for kind in kinds for owned in kind.owners() if owned.uid != os.geteuid()]


def whose(owned):
    """"segment /KEY belongs to user alice", and what more is known of it."""
    return f"{owned.what} belongs to user {user_name(owned.uid)}{owned.note}"


def kinds_here(key):
    """Both kinds of segment for key, as this system has them: POSIX first."""
    return [Posix(key), SystemV(key)] if SYSTEM_V_HERE else [Posix(key)]


def find_segment(key):
    """The segment held under key: /KEY first, else Qt's System V one, but our own before
    another user's; None if there is neither."""
    found = [kind for kind in kinds_here(key) if kind.exists()]
    ours = [kind for kind in found if not other_users([kind])]
    return (ours or found or [None])[0]


KINDS = {kind.tag: kind for kind in (Posix, SystemV)}


# --- Qt's lock: the semaphores behind QSharedMemory::lock() and unlock() -----------------------
#
# Each waits in slices of a tenth of a second, so that the caller's give_up() can end a long
# wait (a stop signal, say); acquire() returns False when it did. close() removes the
# semaphore when this process made it, as Qt's own cleanup does.

WAIT_SLICE = 0.1  # seconds


class PosixSemaphore:
    """Qt's lock for /KEY: the POSIX named semaphore /KEY (/dev/shm/sem.KEY on Linux).

    A named semaphore has no undo: a process that dies holding it leaves it taken, and
    Qt's lock() then waits for ever. So while we wait, we look (Linux) for who may hold
    it; when no living process can, we give it back (see semaphore_holders()).
    """

    def __init__(self, name, create):
        # create is Qt's create(): a fresh semaphore, an old one unlinked to make way for
        # it. Without create, open the one that is there: FileNotFoundError if none.
        self.name, self.made, self.empty_looks = name, create, 0
        for _ in range(3):  # as Qt: another process may make one again in between
            handle = libc.sem_open(name.encode(), os.O_CREAT | os.O_EXCL if create else 0,
                                   ctypes.c_uint(0o600), ctypes.c_uint(1))
            if handle or not create or ctypes.get_errno() != errno.EEXIST:
                break
            libc.sem_unlink(name.encode())
        self.handle = c_call(handle, f"semaphore {name}")
        tell("Qt's lock", f"sem_open(O_CREAT|O_EXCL, value 1): {name}" if create else
             f"sem_open: {name}")

    def acquire(self, give_up, exclude=set):
        """sem_wait, in slices, so that give_up() can end the wait (then return False).

        Once a second, look who may hold the lock: name them after the first second, or
        give the lock back when twice in a row nobody living can hold it. exclude() names
        the pids known not to hold it (our live loader and our waiting viewers, while a
        viewer of ours waits).
        """
        holders, next_look, said = None, time.monotonic() + 1, False
        while True:
            if hasattr(libc, "sem_timedwait"):  # Linux; macOS has no timed wait
                deadline = time.time() + WAIT_SLICE
                until = Timespec(int(deadline), int(deadline % 1 * 1e9))
                result = libc.sem_timedwait(ctypes.c_void_p(self.handle), ctypes.byref(until))
            else:
                result = libc.sem_trywait(ctypes.c_void_p(self.handle))
                if result:
                    time.sleep(WAIT_SLICE / 10)
            if result == 0:
                tell("lock(), Qt's half", f"sem_wait: {self.name}")
                return True
            if ctypes.get_errno() not in (errno.ETIMEDOUT, errno.EAGAIN, errno.EINTR):
                c_call(-1, f"semaphore {self.name}")
            if give_up():
                return False
            if time.monotonic() >= next_look:
                next_look += 1
                holders = self.give_back_if_abandoned(exclude())
                if not said and holders != []:  # nobody: we look once more before saying
                    warn(f"waiting for Qt's lock on {self.name}, held by " + (
                        "one of: " + ", ".join(map(process_name, holders)) if holders else
                        "another process (a POSIX semaphore does not say which)"))
                    said = True

    def release(self):
        c_call(libc.sem_post(self.handle), f"semaphore {self.name}")
        tell("unlock(), Qt's half", f"sem_post: {self.name}")

    def taken(self):
        value = ctypes.c_int()
        libc.sem_getvalue(ctypes.c_void_p(self.handle), ctypes.byref(value))
        return value.value <= 0

    def give_back_if_abandoned(self, exclude=(), looks=2):
        """Give the lock back if it is taken and, looks times in a row (a second apart),
        no living process can hold it. Two looks, because a holder may quit and another
        take the lock during one. Returns the holders found (None: cannot tell; []: none)."""
        holders = semaphore_holders(self.name, exclude) if self.taken() else None
        self.empty_looks = self.empty_looks + 1 if holders == [] else 0
        if self.empty_looks >= looks:
            warn(f"Qt's lock on {self.name} was left taken by a process that died; "
                 "giving it back")
            self.release()
            self.empty_looks = 0
        return holders

    def close(self):
        libc.sem_close(ctypes.c_void_p(self.handle))
        if self.made:
            libc.sem_unlink(self.name.encode())
        tell("Qt's lock", f"sem_close{' + sem_unlink' if self.made else ''}: {self.name}")


# The futex system call, by which a thread waits on a semaphore, as /proc/PID/syscall
# numbers it; elsewhere we cannot tell a waiting process from a holding one.
FUTEX = {"x86_64": 202, "aarch64": 98}.get(os.uname().machine)


def semaphore_holders(name, exclude=()):
    """The living processes that may hold the POSIX semaphore name, or None if Linux's
    /proc cannot tell.

    Every process that has a named semaphore open maps its file, and /proc/PID/maps lists
    that mapping by device and inode (under a temporary name "sem.XXXXXX": match the
    inode, not the name). A process with a thread in futex() on an address inside that
    mapping only waits for the semaphore. This process, and the pids in exclude, are left
    out. Another user's processes can be read by root only: their semaphore is 0600, so
    only they and root can open it.
    """
    try:
        info = os.stat(f"/dev/shm/sem.{name[1:]}")
    except OSError:
        return None
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}"
    inode = str(info.st_ino)
    holders = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) in exclude or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/maps") as maps:
                lines = maps.read()
        except OSError:  # gone, or another user's
            continue
        if f" {inode} " not in lines:  # a quick test before splitting the lines
            continue
        spans = [[int(end, 16) for end in fields[0].split("-")]
                 for fields in (line.split(maxsplit=5) for line in lines.splitlines())
                 if fields[3:5] == [device, inode]]
        if spans and not waits_on(pid, spans):
            holders.append(int(pid))
    return holders


def waits_on(pid, spans):
    """True if a thread of pid waits in futex() on an address inside spans (a Qt program
    in lock(), say; a holder never waits on the lock it holds)."""
    try:
        for thread in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{thread}/syscall") as syscall:
                call = syscall.read().split()  # "202 0x7f... ..." or "running"
            if call[0] == str(FUTEX) and any(start <= int(call[1], 16) < end
                                             for start, end in spans):
                return True
    except (OSError, IndexError, ValueError):  # gone, or not ours to read
        pass
    return False


class SystemVSemaphore:
    """Qt's lock for a legacy key: a set of one System V semaphore, keyed by ftok() of
    Qt's key file qipc_systemsem_... It is taken with SEM_UNDO, so the kernel gives back
    the lock of a process that dies holding it."""

    def __init__(self, key_file, create, name):
        # create is Qt's create(): make the set (and its key file) if it is not there, and
        # remove it at the end even if another process made it. Without create, use the
        # set that is there: FileNotFoundError if none.
        self.key_file, self.made, self.name, self.made_key_file = key_file, create, name, None
        self.semid = self.open(create)
        tell("Qt's lock", f"semget{'(IPC_CREAT)' if create else ''}: semid {self.semid}, "
                          f"IPC key = ftok({os.path.basename(key_file)}, 'Q')")

    def open(self, create):
        key, made = ipc_key(self.key_file, create)
        self.made_key_file = made or self.made_key_file  # the one we made last
        semid = libc.semget(key, 1, 0o600 | IPC_CREAT | IPC_EXCL if create else 0)
        if semid != -1 and create:  # a new set starts at 0: make it a free lock, as Qt does
            c_call(libc.semctl(semid, 0, SETVAL, ctypes.c_int(1)), self.key_file)
        elif semid == -1 and create and ctypes.get_errno() == errno.EEXIST:
            # It is there already. Its value is right: SEM_UNDO gave back any dead
            # holder's lock, and setting it to 1 could let two processes in at once.
            semid = libc.semget(key, 1, 0o600)
        return c_call(semid, f"semaphore {self.key_file}")

    def change(self, delta, give_up=lambda: False):
        operation = Sembuf(0, delta, SEM_UNDO)
        # GETPID: the last process that changed the semaphore, which is the one holding it.
        notice = waiting_notice(f"Qt's lock on {self.name}", lambda: process_name(
            libc.semctl(self.semid, 0, GETPID, ctypes.c_int(0))))
        while True:
            result = libc.semtimedop(self.semid, ctypes.byref(operation), 1,
                                     ctypes.byref(Timespec(0, int(WAIT_SLICE * 1e9))))
            if result == 0:
                tell(f"{'lock' if delta < 0 else 'unlock'}(), Qt's half",
                     f"semop({delta:+d}, SEM_UNDO): semid {self.semid}")
                return True
            code = ctypes.get_errno()
            if code in (errno.EIDRM, errno.EINVAL) and delta > 0:
                return True  # its maker removed it meanwhile: there is nothing to give back
            if code in (errno.EIDRM, errno.EINVAL):
                # Its maker removed it (a Qt program that quit): open it again by its key,
                # making it if need be, as Qt does; then it is ours to remove.
                self.semid, self.made = self.open(create=True), True
            elif code not in (errno.EAGAIN, errno.EINTR):
                c_call(-1, f"semaphore {self.key_file}")
            else:
                notice()
                if give_up():
                    return False

    def acquire(self, give_up, exclude=set):
        return self.change(-1, give_up)

    def release(self):
        self.change(+1)

    def give_back_if_abandoned(self, exclude=(), looks=2):
        """Nothing to do: SEM_UNDO already gave back a dead holder's lock."""

    def close(self):
        if self.made:  # by the id we made it with: never looked up again by its key file
            libc.semctl(self.semid, 0, IPC_RMID, ctypes.c_int(0))
            remove_key_file(self.key_file, self.made_key_file)
            tell("Qt's lock", f"semctl(IPC_RMID): semid {self.semid}; unlink "
                              f"{os.path.basename(self.key_file)}")


def waiting_notice(what, holder):
    """A function to call as we wait: once we have waited a second, it says so, once, with
    what we wait for and for whom (holder() names it). A wait is never silent."""
    started, said = time.monotonic(), []

    def notice():
        if not said and time.monotonic() - started > 1:
            warn(f"waiting for {what}, held by {holder()}")
            said.append(True)
    return notice


# --- The command line, and telling the story: --verbose, waits and failures -------------

PROGRAM = os.path.basename(sys.argv[0])
verbose = False  # --verbose: tell() says each step of the dance as it happens


def tell(step, how):
    """With --verbose, one line on stderr: a step of the article's Qt program, and what
    does it here. The steps are told where they happen, so the story is the code's own."""
    if verbose:
        print(f"{PROGRAM}: {step:<24} {how}", file=sys.stderr, flush=True)


def warn(message):
    """A line on stderr, with or without --verbose (stdout is for the text)."""
    print(f"{PROGRAM}: {message}", file=sys.stderr, flush=True)


def process_name(pid):
    """"show_shared.py (pid 4242)": the script (or program) that runs as pid, where Linux
    tells it in /proc; else just the pid."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            args = cmdline.read().decode(errors="replace").split("\0")
    except OSError:
        return f"pid {pid}"
    scripts = [arg for arg in args[1:3] if arg.endswith(".py")]  # python3 SCRIPT ...
    return f"{os.path.basename(scripts[0] if scripts else args[0])} (pid {pid})"


def one_line(error):
    """A failure as one plain line: an OSError without Python's "[Errno N]"."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    return str(error)


def usage_error(message):
    """Exit 2 with one line on stderr that says what is wrong."""
    print(f"{os.path.basename(sys.argv[0])}: {message} (see --help)", file=sys.stderr)
    sys.exit(2)


STDIN = object()  # the operand "-": read standard input (a "-" after "--" is plain text)


def parse_command_line(usage, flags=(), valued=(), most_operands=0):
    """Read sys.argv: return (key, options, operands). A small getopt for our small commands.

    argparse would do the same, but importing and setting it up costs more time than all
    the rest that these scripts do. "--key KEY" (or --key=KEY) and --verbose are understood
    by both scripts. Each name in flags is True when given (a value is a usage error); each
    name in valued is True, or its value when given as --NAME=VALUE. A lone "-" is STDIN,
    unless it follows "--", which makes what follows plain operands.
    -h/--help prints usage and exits 0; a bad command line exits 2.
    """
    global verbose
    key, options, operands = DEFAULT_KEY, {}, []
    args = iter(sys.argv[1:])
    for arg in args:
        name, equals, value = arg.partition("=")
        if arg in ("-h", "--help"):
            print(usage, end="")
            sys.exit(0)
        elif arg == "--":  # what follows is an operand, even "-" or one starting with "-"
            operands.extend(args)
        elif name == "--key":
            key = value if equals else next(args, None)
            if key is None:
                usage_error("--key needs a KEY")
        elif name == "--verbose" or name in flags:
            if equals:
                usage_error(f"{name} takes no value")
            options[name] = True
        elif name in valued:
            options[name] = value if equals else True
        elif arg.startswith("-") and arg != "-":
            usage_error(f"unknown option {arg}")
        else:
            operands.append(STDIN if arg == "-" else arg)
    verbose = options.pop("--verbose", False)
    if len(operands) > most_operands:
        usage_error(f"unexpected argument {operands[most_operands]!r}")
    problem = key_problem(key)
    if problem:
        usage_error(problem)
    return key, options, operands
