"""Qt's shared-memory text for Python: the bytes, and the segment they live in.

First the codec: a QString as `QDataStream << QString` writes it, and back. Then
QSharedMemory, with Qt's names, on which the article's calls run line for line:

    memory = QSharedMemory("MySharedMemory")  # Qt's plain key: a System V segment
    memory.create(len(data)); memory.lock(); memory.data()[:len(data)] = data; memory.unlock()

QSharedMemory.platformSafeKey("MySharedMemory") is the POSIX segment /MySharedMemory, as in
Qt 6. lock() takes our fcntl lock, then Qt's own semaphore, so that a Qt program and ours
exclude each other. Extras, named as ours, add what Qt lacks: own(), load(), lastLoader(),
recover(), segmentId(), waitForNew(). Below them, one backend per kind of key. Linux only.
"""
import argparse
import collections
import contextlib
import ctypes
import enum
import errno
import fcntl
import hashlib
import mmap
import os
import pwd
import signal
import stat
import struct
import sys
import threading
import time

import _posixshmem  # private: SharedMemory cannot do the job here (see Posix)

# --- The bytes -------------------------------------------------------------------------------

NULL_COUNT = 0xFFFF_FFFF  # a null QString: no data follows
LARGE_COUNT = 0xFFFF_FFFE  # Qt 6.7+: the real byte count follows as a signed 64-bit integer


class QStringFormatError(ValueError):
    """The bytes are not a QString as QDataStream writes it."""


def encode_qstring(text):
    """The bytes that `QDataStream << QString(text)` writes; None is the null QString."""
    return b"".join(qstring_parts(text))


def qstring_parts(text):
    """encode_qstring's bytes in two parts, the count and the code units: a large text is
    then copied only once more, into the segment."""
    if text is None:
        return NULL_COUNT.to_bytes(4, "big"), b""
    # "surrogatepass": a QString may hold a lone surrogate; keep it as the code unit it is.
    payload = text.encode("utf-16-be", "surrogatepass")
    return count_prefix(len(payload)), payload


def count_prefix(byte_count):
    """The count before the code units: 4 bytes, or Qt 6.7's marker and 8 bytes more."""
    if byte_count < LARGE_COUNT:
        return byte_count.to_bytes(4, "big")
    return LARGE_COUNT.to_bytes(4, "big") + byte_count.to_bytes(8, "big")


def decode_qstring(buffer):
    """The text that `QDataStream >> QString` reads from the start of buffer (None: null).
    Bytes after it are ignored (a segment may be larger than its text); the code units are
    decoded straight from buffer, with no copy. Raises QStringFormatError."""
    with memoryview(buffer) as data:
        start, count = qstring_header(data, whole=True)
        return None if count is None else str(data[start:start + count], "utf-16-be",
                                              "surrogatepass")


def qstring_header(data, whole=False):
    """(start, count): where the code units begin, and how many bytes they take (None for a
    null QString), as the count at the start of data says; whole: data holds them all.
    Raises QStringFormatError, saying what is wrong."""
    if len(data) < 4:
        raise QStringFormatError(f"byte count cut short: {len(data)} of 4 bytes")
    count, start = int.from_bytes(data[:4], "big"), 4
    if count == NULL_COUNT:
        return start, None
    if count == LARGE_COUNT:
        if len(data) < 12:
            raise QStringFormatError(f"large-size count cut short: {len(data)} of 12 bytes")
        count, start = int.from_bytes(data[4:12], "big", signed=True), 12
        if count == -1:  # Qt reads this as null too
            return start, None
        if count < 0:
            raise QStringFormatError(f"bad large-size count {count}")
    if count % 2:
        raise QStringFormatError(f"odd byte count {count}: UTF-16 needs 2 bytes a unit")
    if whole and start + count > len(data):
        raise QStringFormatError(
            f"byte count {count} runs past the end: {len(data) - start} bytes follow")
    return start, count


# --- Keys, and telling -----------------------------------------------------------------------

# A POSIX segment's name is one file name, 255 bytes, and Qt's semaphore for it is the file
# "sem.KEY" in /dev/shm: so 251. Qt's System V key file is "qipc_sharedmemory_", the key's
# letters and a 40-digit sha1.
MAX_KEY_BYTES, MAX_SYSTEM_V_LETTERS = 251, 255 - len("qipc_sharedmemory_") - 40
SYSTEM_V_HERE = sys.maxsize > 2 ** 32  # struct shmid_ds below is 64-bit Linux's
PROGRAM = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python3"
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
verbose = False  # set by --verbose: tell() then says each step as it happens


def key_problem(key, system_v=False):
    """What makes key unusable (a sentence), or None if it is fine."""
    letters = len(key_letters(key))
    return ("the key is empty" if not key else
            f"key {key!r} must be printable ASCII" if not (key.isascii() and key.isprintable())
            else f"key {key!r} must be a plain name: no '/', not '.' or '..'"
            if "/" in key or key in (".", "..") else  # /dev/shm/sem.X is key X's semaphore:
            f"key {key!r} must not start with 'sem.': that names Qt's semaphore of a key"
            if key.startswith("sem.") else
            f"key is {len(key)} bytes long; this system allows {MAX_KEY_BYTES}"
            if len(key) > MAX_KEY_BYTES else
            "Qt's System V segments are supported on 64-bit Linux only"
            if system_v and not SYSTEM_V_HERE else
            f"key has {letters} letters; Qt's System V key file name allows "
            f"{MAX_SYSTEM_V_LETTERS}" if system_v and letters > MAX_SYSTEM_V_LETTERS else None)


def key_letters(key):
    return "".join(char for char in key if char.isascii() and char.isalpha())


def qt_key_file(ipc_type, key):
    """Qt's key file for a plain key: ipc_type is "sharedmemory" or "systemsem"."""
    return os.path.join(os.path.normpath(os.environ.get("TMPDIR") or "/tmp"), f"qipc_{ipc_type}_"
                        f"{key_letters(key)}{hashlib.sha1(key.encode()).hexdigest()}")


def warn(message):
    """One line on stderr, after the program's name: stdout is for the text alone."""
    print(f"{PROGRAM}: {message}", file=sys.stderr, flush=True)


def tell(step, how):
    """With --verbose: a step of the article's Qt program, and the call that does it."""
    if verbose:
        warn(f"{step:<24} {how}")


def one_line(error):
    """An OSError as one plain line: "FILE: what went wrong", without "[Errno N]"."""
    if not isinstance(error, OSError) or not error.strerror:
        return str(error)
    return f"{error.filename}: {error.strerror}" if isinstance(error.filename, str) \
        else error.strerror


def process_name(pid):
    """"show_shared.py (pid 4242)", as /proc tells it; else "pid 4242"."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        args = cmdline.read().decode(errors="replace").split("\0")
        name = os.path.basename(([arg for arg in args[1:3] if arg.endswith(".py")] or args)[0])
        return f"{name} (pid {pid})" if name else f"pid {pid}"  # no name: it is ending
    return f"pid {pid}"


def user_name(uid):
    with contextlib.suppress(KeyError):
        return pwd.getpwuid(uid).pw_name
    return str(uid)


def waiting_notice(what, whom):
    """A function to call while we wait: after a second it says, once, for whom we wait."""
    started, said = time.monotonic(), []

    def notice():
        if not said and time.monotonic() - started > 1:
            warn(f"waiting for {what}, {whom()}")
            said.append(True)
    return notice


@contextlib.contextmanager
def signals_held():
    """Stop signals held off for a step that must not be cut in half (two system calls)."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


class ArgumentParser(argparse.ArgumentParser):
    """For the scripts: argparse, with a usage error told in one line (exit status 2)."""

    def error(self, message):
        warn(f"{message} (see --help)")
        sys.exit(2)


def fill_standard_fds():
    """For the scripts: /dev/null where standard input, output or error is closed, or the
    next file we open takes its number, and what we print goes into our lock file."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free number: this one


def stop_like_ctrl_c():
    """For the scripts: SIGTERM and SIGHUP raise KeyboardInterrupt, as Ctrl-C does; a signal
    inherited as ignored (nohup's SIGHUP) stays ignored."""
    def stop(signum, frame):
        raise KeyboardInterrupt
    for each in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(each) != signal.SIG_IGN:
            signal.signal(each, stop)


# --- The lock file ---------------------------------------------------------------------------

TURN, OWNER = 0, 1  # the byte locks: our half of lock(); the loader's, for its whole life
LOGBOOK, RECORD = 0, 1  # the file's two 64-byte lines
LINE = 64


class LockFile:
    """The key's lock file, qshm-KEY.lock, in a directory of this user's alone.

    Byte TURN is our half of lock(): whoever of ours holds it is the only one of ours at
    Qt's semaphore. Byte OWNER is the loader's, for its whole life. The kernel drops both
    when their process dies, even by SIGKILL. Line LOGBOOK is the loader's: "PID writing
    KIND" or "PID loaded KIND". Line RECORD is "PID inside DEV INO PROGRAM" while that
    process of ours is inside Qt's POSIX semaphore (DEV INO: the semaphore's file).
    One per path and process: closing any descriptor of a file drops all the process's
    fcntl locks on it, and fcntl locks do not exclude threads (so a thread lock does).
    """
    opened = {}

    @classmethod
    def of(cls, key, create=True):
        """The key's lock file; FileNotFoundError (without create) if there is none."""
        path = lock_path(key, create)
        if path not in cls.opened:
            cls.opened[path] = cls(key, path, create)
        return cls.opened[path]

    def __init__(self, key, path, create):
        self.key, self.path, self.threads = key, path, threading.Lock()
        try:  # O_NOFOLLOW: never a symlink; O_NONBLOCK: a FIFO planted there must not hang us
            self.fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK |
                              (os.O_CREAT if create else 0), 0o600)
        except OSError as error:
            if isinstance(error, FileNotFoundError):
                raise
            raise PermissionError(errno.EPERM, f"lock file {path} is a symlink; refusing to "
                                  "follow it" if os.path.islink(path) else
                                  f"cannot open lock file {path}: {error.strerror}") from None
        info = os.fstat(self.fd)
        problem = ("is not a regular file" if not stat.S_ISREG(info.st_mode) else
                   f"belongs to user {user_name(info.st_uid)}, not to us"
                   if info.st_uid != os.geteuid() else None)
        if problem:
            os.close(self.fd)
            raise PermissionError(errno.EPERM, f"lock file {path} {problem}; refusing to use it")
        tell("our lock file", f"open {path}")

    def lock(self, which, wait=True):
        """Take byte lock which; False if it is held and we may not wait. fcntl has no timed
        wait, so a wait tries every 20 ms, to say after a second for whom it waits."""
        if which == TURN and not self.threads.acquire(blocking=wait):
            return False
        notice = waiting_notice(f"the lock on key {self.key!r} ({self.path})",
                                lambda: f"held by {self.holder(which)}")
        try:
            while True:
                with contextlib.suppress(BlockingIOError, PermissionError):  # by platform
                    fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, which)
                    return True
                if not wait:
                    break
                notice()
                time.sleep(0.02)
        except BaseException:
            self.unlock(which, fcntl_too=False)
            raise
        self.unlock(which, fcntl_too=False)
        return False

    def unlock(self, which, fcntl_too=True):
        if fcntl_too:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, which)
        if which == TURN:
            self.threads.release()

    def holder(self, which):
        """Who holds byte lock which, as fcntl(F_GETLK) tells (64-bit Linux's struct flock)."""
        with contextlib.suppress(OSError):
            kind, _, _, _, pid = struct.unpack("hhqqi4x", fcntl.fcntl(self.fd, fcntl.F_GETLK,
                struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, which, 1, 0)))
            if kind != fcntl.F_UNLCK and pid:
                return process_name(pid)
        return "another process"

    def read(self, line):
        """The words of one line (LOGBOOK or RECORD); [] if it is empty."""
        return os.pread(self.fd, LINE, line * LINE).decode("ascii", "replace").split()

    def write(self, line, text):
        """Write one line, padded, so that no tail of a longer one stays behind."""
        os.pwrite(self.fd, text.ljust(LINE - 1).encode() + b"\n", line * LINE)

    def logbook(self):
        """(pid, state, kind), or Nones if it is empty; a kind we do not know (a newer
        loader's, or a broken one's) reads as "posix"."""
        words = self.read(LOGBOOK)
        if len(words) < 2 or not words[0].isdigit():
            return None, None, None
        return int(words[0]), words[1], "sysv" if words[2:] == ["sysv"] else "posix"


def lock_path(key, create=False):
    """qshm-KEY.lock in $XDG_RUNTIME_DIR, else in $TMPDIR/qshm-UID (or /tmp/qshm-UID), made
    with mode 0700 on first use, as tmux does. Either may be a trap: anything but a
    directory of ours that others cannot write is refused."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    folder = runtime or os.path.join(os.environ.get("TMPDIR") or "/tmp", f"qshm-{os.geteuid()}")
    if create and not runtime:
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)
    try:
        info = os.lstat(folder)  # lstat: a symlink is not our directory
    except FileNotFoundError:
        raise FileNotFoundError(f"no lock directory {folder}") from None
    problem = ("is not a directory" if not stat.S_ISDIR(info.st_mode) else
               f"belongs to user {user_name(info.st_uid)}" if info.st_uid != os.geteuid() else
               f"may be written by others (mode {info.st_mode & 0o777:o})"
               if info.st_mode & 0o022 else None)
    if problem:
        raise PermissionError(errno.EPERM, f"{folder} {problem}; refusing to keep lock files "
                              "there")
    # A key too long for a file name is named by its sha1, with an ending no plain name has.
    return os.path.join(folder, f"qshm-{key}.lock" if len(key) <= 245 else
                        f"qshm-{hashlib.sha1(key.encode()).hexdigest()}.sha1")


# The last load_shared.py under a key, as its logbook and its OWNER lock tell: writing, it
# died while its segment may hold half a text (System V); kind, "posix" or "sysv".
Loader = collections.namedtuple("Loader", "pid alive writing kind")


# --- The C library ---------------------------------------------------------------------------

libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = libc.sem_open.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmdt.argtypes = libc.sem_post.argtypes = libc.sem_close.argtypes = [ctypes.c_void_p]
libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
libc.shmctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
IPC_CREAT, IPC_EXCL, IPC_NOWAIT, IPC_RMID, IPC_STAT = 0o1000, 0o2000, 0o4000, 0, 2
SETVAL, GETPID, GETVAL, SEM_UNDO, SHM_RDONLY, MADV_POPULATE_READ = 16, 11, 12, 0x1000, 0o10000, 22


class ShmidDs(ctypes.Structure):
    """struct shmid_ds as 64-bit Linux lays it out (x86-64 and aarch64 alike)."""
    _fields_ = [("ipc_key", ctypes.c_int32), ("uid", ctypes.c_uint32), ("gid", ctypes.c_uint32),
                ("cuid", ctypes.c_uint32), ("cgid", ctypes.c_uint32), ("mode", ctypes.c_uint32),
                ("perm_rest", ctypes.c_byte * 24), ("segsz", ctypes.c_size_t),
                ("times", ctypes.c_int64 * 3), ("cpid", ctypes.c_int32), ("lpid", ctypes.c_int32),
                ("nattch", ctypes.c_uint64), ("reserved", ctypes.c_uint64 * 2)]


class Sembuf(ctypes.Structure):
    _fields_ = [("num", ctypes.c_ushort), ("op", ctypes.c_short), ("flags", ctypes.c_short)]


def timespec(seconds):
    """A struct timespec, as sem_timedwait and semtimedop take it."""
    return (ctypes.c_long * 2)(int(seconds), int(seconds % 1 * 1e9))


def c_call(result, what):
    """result, or the C library's errno raised as an OSError (FileNotFoundError...)."""
    if result == -1 or result is None:  # None: a NULL pointer, as sem_open fails
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), what)
    return result


def shm_status(shmid):
    status = ShmidDs()
    c_call(libc.shmctl(shmid, IPC_STAT, ctypes.byref(status)), f"shmid {shmid}")
    return status


# --- One backend per kind of key: its segment, and its kind of Qt's lock -------------------------

class Mapping:
    """A segment mapped here: buf and const (read-only) memoryviews, size, close(); ident,
    what names it (a POSIX segment's name, a System V shmid)."""

    def __init__(self, buf, close, ident):
        self.buf, self.const, self.size = buf, buf.toreadonly(), len(buf)
        self._close, self.ident = close, ident

    def close(self):
        self.const.release()
        self.buf.release()
        self._close()


class Posix:
    """The POSIX segment /KEY (the file /dev/shm/KEY), and Qt's lock for it, the POSIX named
    semaphore /KEY (/dev/shm/sem.KEY): Qt 6's platformSafeKey("KEY").

    Made and mapped with _posixshmem, the C half of multiprocessing's SharedMemory, which
    cannot do it here: it cannot map read-only; a reader's failed mmap unlinks the segment
    (CPython issue 153279); before 3.13 it hands each segment to the resource tracker,
    which removes it when we exit. The semaphore has no undo: one left taken by a dead
    process stays taken (see QSharedMemory.lock for how ours are given back)."""
    tag, calls = "posix", ("sem_wait", "sem_post")

    def __init__(self, key):
        self.key, self.name = key, "/" + key
        self.label = self.native = self.name
        # A new text is made beside the old one, under a name that nobody can guess.
        self.beside = (key if len(key) <= 230 else hashlib.sha1(key.encode()).hexdigest()) \
            + "\x7f"

    def make(self, size, beside=False):
        """shm_open(O_CREAT|O_EXCL, 0600), ftruncate, mmap; beside: under a name of its own,
        out of readers' sight until put_in_place() (on a clash, another)."""
        while True:
            name = self.beside + os.urandom(8).hex() if beside else self.key
            try:
                fd = _posixshmem.shm_open("/" + name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                break
            except FileExistsError:
                if not beside:
                    raise
        try:
            os.ftruncate(fd, size)
            os.posix_fallocate(fd, 0, size)  # the pages now: a full /dev/shm is ENOSPC, no SIGBUS
            memory = mmap.mmap(fd, size)
        except BaseException:
            _posixshmem.shm_unlink("/" + name)
            raise
        finally:
            os.close(fd)
        tell(f"create({size})", "shm_open(O_CREAT|O_EXCL) + ftruncate + mmap: " +
             (f"beside {self.name}, under a name of its own" if beside else self.name))
        return Mapping(memoryview(memory), memory.close, name)

    def put_in_place(self, new, old):
        """Give new (made beside) the key's name at once: rename over our old one, so that
        readers find the old text or the new, never none; else link, which never replaces
        another program's segment (FileExistsError)."""
        made, final = f"/dev/shm/{new.ident}", f"/dev/shm/{self.key}"
        try:
            if old and same_file(final, f"/dev/shm/{old.ident}"):
                os.rename(made, final)
            else:
                os.link(made, final)
        finally:
            if os.path.lexists(made):
                os.unlink(made)
        new.ident = self.key
        tell("put in place", f"{'rename' if old else 'link'} to {self.name}, at once")

    def attach(self, writable):
        """shm_open + mmap, PROT_READ unless writable: a reader can change nothing."""
        fd = _posixshmem.shm_open(self.name, (os.O_RDWR if writable else os.O_RDONLY) |
                                  os.O_NONBLOCK, 0)  # O_NONBLOCK: a FIFO there must not hang us
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise OSError(errno.EINVAL, f"{self.name} is not a shared-memory segment (a FIFO "
                              "or device stands in its place); leaving it alone")
            memory = mmap.mmap(fd, info.st_size, prot=mmap.PROT_READ | (
                mmap.PROT_WRITE if writable else 0)) if info.st_size else b""
        finally:
            os.close(fd)
        tell("attach()", f"shm_open + mmap{'' if writable else '(PROT_READ)'}: {self.name}, "
                         f"{info.st_size} bytes")
        return Mapping(memoryview(memory), getattr(memory, "close", lambda: None), self.key)

    def remove(self, mapping=None):
        """shm_unlink: the name goes; whoever maps it keeps it until they unmap."""
        with contextlib.suppress(FileNotFoundError):
            _posixshmem.shm_unlink("/" + (mapping.ident if mapping else self.key))
            tell("remove", f"shm_unlink: {self.name}")

    def identity(self):
        """What names the segment under the key now, "" if there is none: its file."""
        with contextlib.suppress(OSError):
            info = os.stat(f"/dev/shm/{self.key}")
            return f"{info.st_dev}:{info.st_ino}"
        return ""

    def clear_unfinished(self):
        """Remove what a dead loader of ours was making beside the old text."""
        for name in os.listdir("/dev/shm"):
            if name.startswith(self.beside) and \
                    os.lstat(f"/dev/shm/{name}").st_uid == os.geteuid():
                os.unlink(f"/dev/shm/{name}")

    def users(self):
        """None if there is no segment under the key; else -1: how many map it is unknown."""
        try:
            os.close(_posixshmem.shm_open(self.name, os.O_RDONLY | os.O_NONBLOCK, 0))
        except FileNotFoundError:
            return None
        except PermissionError:  # there, another user's
            pass
        return -1

    def others(self):
        """(what, uid, how root removes it, note) of what others have under the key."""
        found = []
        for what, path in ((f"segment {self.name}", f"/dev/shm/{self.key}"),
                           (f"Qt's lock {self.name}", f"/dev/shm/sem.{self.key}")):
            with contextlib.suppress(OSError):
                found.append((what, os.lstat(path).st_uid, f"rm {path}", ""))
        return [each for each in found if each[1] != os.geteuid()]

    # Qt's lock: the named semaphore /KEY

    def open_lock(self, create):
        """sem_open; create: with O_CREAT and value 1, as Qt's second try does. Qt's first,
        which unlinks a semaphore that is there, would let two in: its holder, and us."""
        self.handle = c_call(libc.sem_open(self.name.encode(), os.O_CREAT if create else 0,
                                           ctypes.c_uint(0o600), ctypes.c_uint(1)),
                             f"semaphore {self.name}")
        self.ident = mapped_file(self.handle)
        tell("Qt's lock", f"sem_open{'(O_CREAT)' if create else ''}: {self.name}")
        return self

    def take(self, seconds):
        """sem_timedwait for up to seconds: True if we have it now."""
        if libc.sem_timedwait(ctypes.c_void_p(self.handle), timespec(time.time() + seconds)) == 0:
            return True
        if ctypes.get_errno() not in (errno.ETIMEDOUT, errno.EINTR):
            c_call(-1, f"semaphore {self.name}")
        return False

    def give(self):
        c_call(libc.sem_post(self.handle), f"semaphore {self.name}")

    def taken(self):
        value = ctypes.c_int()
        libc.sem_getvalue(ctypes.c_void_p(self.handle), ctypes.byref(value))
        return value.value <= 0

    def holder(self):
        return ("held by a program that is not one of ours (a Qt program?), which no one can "
                "tell; if it died inside lock(), quit every program that uses the key, "
                f"then: rm /dev/shm/sem.{self.key}")

    def current(self):
        """Whether /KEY still names the semaphore we have open: a Qt program's create()
        unlinks it and makes a fresh one, which is not ours to remove or to give back."""
        with contextlib.suppress(OSError):
            info = os.stat(f"/dev/shm/sem.{self.key}")
            device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}"
            return self.ident in (None, f"{device} {info.st_ino}")
        return False

    def remove_lock(self):
        """sem_unlink: called only by its maker, while it holds it."""
        if self.current():
            libc.sem_unlink(self.name.encode())
            tell("Qt's lock", f"sem_unlink, while we hold it: {self.name}")

    def close_lock(self):
        libc.sem_close(self.handle)


def mapped_file(address):
    """"DEV INO" of the file mapped at address, as /proc/self/maps tells: which semaphore we
    have open, whatever name it has now; else None."""
    with contextlib.suppress(OSError), open("/proc/self/maps") as maps:
        for line in maps:
            span, _, _, device, inode = line.split()[:5]
            start, end = (int(part, 16) for part in span.split("-"))
            if start <= address < end:
                return f"{device} {inode}"
    return None


def same_file(path, other):
    try:
        return os.path.samestat(os.lstat(path), os.lstat(other))
    except OSError:
        return False


class SystemV:
    """Qt's System V segment for a plain key, and Qt's lock for it, a set of one System V
    semaphore: both found by ftok() of Qt's key files in the temporary directory, as the
    article's program does. The lock is taken with SEM_UNDO: the kernel gives back the
    lock of a process that dies holding it."""
    tag, calls, ident = "sysv", ("semop(-1, SEM_UNDO)", "semop(+1, SEM_UNDO)"), None

    def __init__(self, key):
        self.key, self.label = key, f"{key} (System V)"
        self.key_file = KeyFile(qt_key_file("sharedmemory", key))
        self.lock_key_file = KeyFile(qt_key_file("systemsem", key))
        self.native = self.key_file.path

    def shmid(self):
        """shmget(ftok(key file)): FileNotFoundError if there is none."""
        return c_call(libc.shmget(self.key_file.ipc_key(create=False), 0, 0), self.label)

    def make(self, size, beside=False):
        """shmget(IPC_CREAT|IPC_EXCL) + shmat. A key names one segment: never beside."""
        key = self.key_file.ipc_key(create=True)
        shmid = libc.shmget(key, size, 0o600 | IPC_CREAT | IPC_EXCL)
        try:
            if shmid == -1 and ctypes.get_errno() == errno.EEXIST:
                self.refuse_others(f"segment {self.label}", "shm", "key", key)
            c_call(shmid, self.label)
        except OSError:
            if self.key_file.made:  # made for it: it goes with it
                self.key_file.remove()
            raise
        try:
            mapping = self.mapped(shmid, writable=True)
        except OSError:  # no address space for it, say: it must not stay under the key
            libc.shmctl(shmid, IPC_RMID, None)
            raise
        tell(f"create({size})", f"shmget(IPC_CREAT|IPC_EXCL) + shmat: shmid {shmid}")
        return mapping

    def put_in_place(self, new, old):
        """Nothing to do: make() made it under the key."""

    def attach(self, writable):
        mapping = self.mapped(self.shmid(), writable)
        tell("attach()", f"shmget + shmat{'' if writable else '(SHM_RDONLY)'}: shmid "
                         f"{mapping.ident}, {mapping.size} bytes")
        return mapping

    def mapped(self, shmid, writable):
        address = libc.shmat(shmid, None, 0 if writable else SHM_RDONLY)
        if address == ctypes.c_void_p(-1).value:
            c_call(-1, f"shmat {shmid}")
        size = shm_status(shmid).segsz
        if not writable:  # System V maps a page a fault; all at once reads twice as fast
            libc.madvise(address, size, MADV_POPULATE_READ)  # (Linux 5.14+; else ignored)
        view = memoryview((ctypes.c_ubyte * size).from_address(address)).cast("B")
        return Mapping(view if writable else view.toreadonly(),
                       lambda: libc.shmdt(address), shmid)

    def remove(self, mapping=None):
        """IPC_RMID, and Qt's key file, as Qt's last detach() does. The key is free at once;
        whoever is attached keeps the memory until they detach."""
        try:
            shmid = mapping.ident if mapping else self.shmid()
            c_call(libc.shmctl(shmid, IPC_RMID, None), self.label)
            tell("remove", f"shmctl(IPC_RMID): shmid {shmid}")
        except OSError as error:
            if error.errno not in (errno.ENOENT, errno.EINVAL, errno.EIDRM):
                raise
        self.key_file.remove()

    def identity(self):
        """What names the segment under the key now, "" if there is none: its shmid."""
        with contextlib.suppress(OSError):
            return f"shmid {self.shmid()}"
        return ""

    def clear_unfinished(self):
        """Nothing: a System V segment is made under the key at once."""

    def users(self):
        """None if there is no segment under the key; else how many are attached to it."""
        try:
            return shm_status(self.shmid()).nattch
        except OSError:
            return None

    def others(self):
        """What others have under the key: what /proc/sysvipc lists, then key files."""
        found, files = [], []
        for what, table, key_file in ((f"segment {self.label}", "shm", self.key_file),
                                      (f"Qt's lock for {self.label}", "sem", self.lock_key_file)):
            try:
                uid = os.lstat(key_file.path).st_uid
                files.append((f"Qt's key file {key_file.path}", uid, f"rm {key_file.path}", ""))
                key = key_file.ipc_key(create=False)
            except OSError:
                continue
            for row in sysvipc(table):
                if row["key"] == key:
                    removal = f"ipcrm -{'m' if table == 'shm' else 's'} {row[table + 'id']}"
                    found.append((what, row["uid"], removal, " and nobody is attached to it "
                                  "(its loader is gone)" if row.get("nattch") == 0 else ""))
        return [each for each in found + files if each[1] != os.geteuid()]

    def refuse_others(self, what, table, column, value):
        """PermissionError, naming its owner, if the set or segment whose column ("key", or
        "shmid"/"semid") is value is another user's: ftok() keeps 16 bits of a key file's
        inode, so another user can make one for our key before we do."""
        for row in sysvipc(table):
            if row[column] == value and os.geteuid() not in (row["uid"], row["cuid"]):
                raise PermissionError(errno.EPERM, f"{what} belongs to user "
                                      f"{user_name(row['uid'])}, who made it for our key; "
                                      "use another --key")

    # Qt's lock: a set of one System V semaphore

    def open_lock(self, create):
        """semget, as Qt does: with create, make the set (value 1) if it is not there."""
        self.create = create
        while True:  # its maker (a Qt program that quits) may remove it at any moment
            key = self.lock_key_file.ipc_key(create)
            self.semid = libc.semget(key, 1, 0o600 | IPC_CREAT | IPC_EXCL if create else 0)
            made = self.semid != -1 and create
            if made:  # a new set starts at 0: make it a free lock
                c_call(libc.semctl(self.semid, 0, SETVAL, ctypes.c_int(1)), key)
            elif self.semid == -1 and create and ctypes.get_errno() == errno.EEXIST:
                self.semid = libc.semget(key, 1, 0o600)  # as it is: SEM_UNDO kept it right
                if self.semid == -1 and ctypes.get_errno() == errno.ENOENT:
                    continue
            c_call(self.semid, f"semaphore {self.lock_key_file.path}")
            try:  # one we did not make just now: whose is it?
                if not create or not made:
                    self.refuse_others(f"Qt's lock for {self.label}", "sem", "semid", self.semid)
            except PermissionError:
                self.semid = None
                if self.lock_key_file.made:
                    self.lock_key_file.remove()
                raise
            tell("Qt's lock", f"semget: semid {self.semid}")
            return self

    def change(self, delta, seconds):
        """semop(delta, SEM_UNDO), waiting up to seconds: True if done, or if the set is
        gone with its maker (a Qt program that quit); a loader then makes it afresh."""
        if self.semid is None:
            return True
        operation = Sembuf(0, delta, SEM_UNDO | (0 if seconds else IPC_NOWAIT))
        if libc.semtimedop(self.semid, ctypes.byref(operation), 1, timespec(seconds)) == 0:
            return True
        code = ctypes.get_errno()
        if code in (errno.EIDRM, errno.EINVAL):
            if delta > 0:
                return True  # nothing to give back
            try:
                self.open_lock(self.create)
            except FileNotFoundError:  # a reader goes on without it
                self.semid = None
                return True
        elif code not in (errno.EAGAIN, errno.EINTR):
            c_call(-1, f"semaphore {self.lock_key_file.path}")
        return False

    def take(self, seconds):
        return self.change(-1, seconds)

    def give(self):
        self.change(+1, 0)

    def taken(self):
        return self.semid is not None and libc.semctl(self.semid, 0, GETVAL, ctypes.c_int(0)) == 0

    def holder(self):  # GETPID: the last to change it, which is who holds it
        return "held by " + (process_name(libc.semctl(self.semid, 0, GETPID, ctypes.c_int(0)))
                             if self.semid is not None else "nobody now")

    def current(self):
        return True  # a set is used by its id

    def remove_lock(self):
        if self.semid is not None:
            libc.semctl(self.semid, 0, IPC_RMID, ctypes.c_int(0))
            tell("Qt's lock", f"semctl(IPC_RMID): semid {self.semid}")
        self.lock_key_file.remove()

    def close_lock(self):
        """Nothing: a set is used by its id."""


def sysvipc(table):
    """The rows of /proc/sysvipc/TABLE ("shm": segments, "sem": sets), as dicts of numbers:
    anyone may read them, where IPC_STAT asks for read permission."""
    with open(f"/proc/sysvipc/{table}") as listing:
        columns = listing.readline().split()
        return [dict(zip(columns, map(int, line.split()))) for line in listing]


def whose(owned):
    """"segment /KEY belongs to user alice", and what more is known of it."""
    return f"{owned[0]} belongs to user {user_name(owned[1])}{owned[3]}"


class KeyFile:
    """One of Qt's key files: ftok() turns its inode into the kernel's IPC key. The
    temporary directory is everyone's: a symlink, a non-regular file or (to make
    anything) another user's file is refused. We remove only the very file we made."""

    def __init__(self, path):
        self.path, self.made = path, None

    def ipc_key(self, create):
        while True:
            if create:
                with contextlib.suppress(FileExistsError):
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW,
                                 0o640)
                    self.made = os.fstat(fd).st_ino
                    os.close(fd)
            try:
                info = os.lstat(self.path)
            except FileNotFoundError:
                if create:
                    continue  # its maker (a Qt program that quit) removed it: make it again
                raise
            if stat.S_ISLNK(info.st_mode) and not create:
                raise FileNotFoundError(errno.ENOENT, "a symlink, not followed", self.path)
            problem = ("is a symlink" if stat.S_ISLNK(info.st_mode) else
                       "is not a regular file" if not stat.S_ISREG(info.st_mode) else
                       f"belongs to user {user_name(info.st_uid)}"
                       if create and info.st_uid != os.geteuid() else None)
            if problem:
                raise PermissionError(errno.EPERM, f"Qt's key file {self.path} {problem}; "
                                      "refusing to use it")
            return c_call(libc.ftok(os.fsencode(self.path), ord("Q")), self.path)

    def remove(self):
        with contextlib.suppress(OSError):
            info = os.lstat(self.path)
            if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and \
                    self.made in (None, info.st_ino):
                os.unlink(self.path)


# --- QSharedMemory ---------------------------------------------------------------------------

class QNativeIpcKey(collections.namedtuple("QNativeIpcKey", "name")):
    """A native key, as QSharedMemory.platformSafeKey() returns it: "/KEY", POSIX."""

    def nativeKey(self):
        return self.name


class QSharedMemory:
    """Qt's QSharedMemory, as Qt 6.6 and PySide6 name it, for Python.

    QSharedMemory("KEY") is Qt's plain key: a System V segment (64-bit Linux), as the
    article's programs and every Qt 5 program make it; QSharedMemory(
    QSharedMemory.platformSafeKey("KEY")) is the POSIX segment /KEY. Failures return False
    and set error() and errorString(), as in Qt.
    """
    AccessMode = enum.IntEnum("AccessMode", "ReadOnly ReadWrite", start=0)
    SharedMemoryError = enum.IntEnum("SharedMemoryError", "NoError PermissionDenied InvalidSize "
                                     "KeyError AlreadyExists NotFound LockError OutOfResources "
                                     "UnknownError", start=0)
    ReadOnly, ReadWrite = AccessMode.ReadOnly, AccessMode.ReadWrite
    ERRORS = {errno.EEXIST: "AlreadyExists", errno.ENOENT: "NotFound", errno.EACCES:
              "PermissionDenied", errno.EPERM: "PermissionDenied", errno.EINVAL: "InvalidSize",
              errno.ENOMEM: "OutOfResources", errno.ENOSPC: "OutOfResources",
              errno.EFBIG: "OutOfResources"}

    def __init__(self, key="", parent=None):
        self._mapping = self._lock = self._lock_file = None
        self._held = self._owner = self._made = False
        self._error, self._error_string = self.SharedMemoryError.NoError, ""
        self.setKey(key)

    # Qt's calls ------------------------------------------------------------------------------

    @staticmethod
    def platformSafeKey(key):
        """The POSIX key for key: the segment /KEY, as Qt 6's platformSafeKey()."""
        return QNativeIpcKey("/" + key)

    def setKey(self, key):
        """Use key (a plain str: System V; platformSafeKey(): POSIX), detached first."""
        self.detach()
        native = isinstance(key, QNativeIpcKey)
        self._key = key.name[1:] if native else key
        self._kind = Posix(self._key) if native else \
            SystemV(self._key) if key and SYSTEM_V_HERE else None

    def key(self):
        return "" if isinstance(self._kind, Posix) else self._key

    def nativeKey(self):
        return self._kind.native if self._kind else ""

    def create(self, size, mode=AccessMode.ReadWrite):
        """Make a segment of size bytes under the key, and attach to it (AlreadyExists if
        one is there). Its creator removes it at detach(); Qt 6 leaves a POSIX one."""
        if not self._usable():
            return False
        if size <= 0:
            return self._fail(self.SharedMemoryError.InvalidSize, "the size must be positive")
        try:
            self._mapping, self._made = self._kind.make(size), True
        except OSError as error:
            return self._fail(error)
        return True

    def attach(self, mode=AccessMode.ReadWrite):
        """Map the segment under the key; ReadOnly maps it so that we can change nothing."""
        if not self._usable():
            return False
        theirs = [each for each in self._kind.others() if each[0].startswith("segment")]
        if theirs:
            return self._fail(self.SharedMemoryError.PermissionDenied, whose(theirs[0]))
        try:
            self._mapping = self._kind.attach(writable=mode == self.ReadWrite)
        except OSError as error:
            return self._fail(error)
        return True

    def isAttached(self):
        return self._mapping is not None

    def detach(self, wait=True):
        """Unmap. A creator or owner also removes its segment, and Qt's lock that it opened,
        while holding it; a reader's detach never removes anything. wait=False (ours): take
        no lock that is held, and leave Qt's lock to the next loader then."""
        mapping, self._mapping = getattr(self, "_mapping", None), None
        if mapping is None and not getattr(self, "_owner", False):
            return False
        if mapping:
            mapping.close()
            tell("detach()", f"unmap {self._kind.label}")
        if self._owner or self._made:
            self._remove_ours(mapping, wait)
        return True

    def lock(self):
        """Take our lock, then Qt's: a Qt program's lock() and ours exclude each other.

        The steps, and what a death right after each one leaves:
          1. Our turn: fcntl byte TURN of the key's lock file. (Nothing: the kernel drops it.)
          2. Qt's semaphore, sem_wait. But if the lock file's RECORD names a process of ours
             (which cannot hold our turn: so it died inside) and this very semaphore, still
             taken, we take its place inside: one write, no sem_post, so once per death.
             (Died after sem_wait: taken, no record. Stuck but safe: every waiter says so,
             with the command that frees it.)
          3. POSIX: our RECORD, or if it cannot be written, sem_post and fail. (Died here:
             the next of ours takes our place.)
        unlock() clears the RECORD, then sem_post (signals held off between the two: a
        death there is stuck but safe), then lets go of our turn. System V needs no RECORD:
        the kernel undoes a dead holder's semop (SEM_UNDO).
        """
        if self._held or not self._usable():
            return self._held
        try:  # no Qt lock, and no lock file: no program of ours nor Qt's takes a lock here
            self._lock = self._lock or self._kind.open_lock(self._owner or self._made)
            lock_file = self._lock_file = LockFile.of(self._key, create=bool(self._lock))
            lock_file.lock(TURN)
            tell("lock(), our half", f"fcntl: lock byte {TURN} of {lock_file.path}")
        except OSError as error:
            if self._lock or not isinstance(error, FileNotFoundError):
                return self._fail(error, code=self.SharedMemoryError.LockError)
            lock_file = self._lock_file = None
        try:
            if self._lock:
                notice = waiting_notice(f"Qt's lock on {self._kind.label}", self._lock.holder)
                while not self._enter(lock_file, 0.2):
                    notice()
                tell("lock(), Qt's half", f"{self._lock.calls[0]}: {self._kind.label}")
        except BaseException as error:
            if self._held:  # in, and told to stop at once: out again, in order
                self.unlock()
            else:
                lock_file.unlock(TURN)
            if isinstance(error, OSError):
                return self._fail(error, code=self.SharedMemoryError.LockError)
            raise
        self._held = True
        return True

    def unlock(self):
        """Give back Qt's lock, then ours (see lock())."""
        if not self._held:
            return self._fail(self.SharedMemoryError.LockError, "not locked")
        lock_file, qt_lock, self._held = self._lock_file, self._lock, False
        try:
            with signals_held():
                if qt_lock and qt_lock.ident:
                    lock_file.write(RECORD, "")
                if qt_lock:
                    qt_lock.give()
        except OSError as error:  # the record stays: the next of ours takes our place
            return self._fail(error, code=self.SharedMemoryError.LockError)
        finally:
            if lock_file:
                lock_file.unlock(TURN)
        if qt_lock:
            tell("unlock(), Qt's half", f"{qt_lock.calls[1]}: {self._kind.label}")
        tell("unlock(), our half", f"fcntl: unlock byte {TURN}")
        return True

    def data(self):
        return self._mapping.buf if self._mapping else None

    def constData(self):
        return self._mapping.const if self._mapping else None

    def size(self):
        return self._mapping.size if self._mapping else 0

    def error(self):
        return self._error

    def errorString(self):
        return self._error_string

    def __del__(self):
        with contextlib.suppress(Exception):
            self.detach()

    # Ours: what Qt lacks ---------------------------------------------------------------------

    def own(self, replace=False):
        """Become the key's one loader, while this process lives (AlreadyExists if a living
        one is there). What a dead loader of ours left is cleared; another program's
        segment goes only with replace (a System V one nobody is attached to, always);
        another user's objects are never touched."""
        if not self._usable():
            return False
        try:
            lock_file = LockFile.of(self._key)
            lock_file.lock(TURN)
        except OSError as error:
            return self._fail(error)
        try:
            self._own(lock_file, replace)
            return True
        except OSError as error:
            if self._owner:
                lock_file.unlock(OWNER)
            self._owner = False
            return self._fail(error)
        finally:
            lock_file.unlock(TURN)

    def load(self, *chunks):
        """Put the bytes of chunks, one after another, in a new segment under the key, under
        lock(): made beside the old one, which it replaces at once (System V: in its place,
        and the old one put back if the new one cannot be made). If it fails, the old text
        stays. Call own() first."""
        if not self.lock():
            return False
        old, kind, new, size = self._mapping, self._kind, None, sum(map(len, chunks))
        beside = isinstance(kind, Posix)
        try:
            self._write_logbook("loaded" if beside else "writing")
            if old and not beside:
                kind.remove(old)  # a System V key names one segment: the old one goes first
            new, start = kind.make(size, beside), 0
            for chunk in chunks:
                new.buf[start:start + len(chunk)] = chunk
                start += len(chunk)
            tell("memcpy(to, from, size)", f"{size} bytes into {kind.label}")
            kind.put_in_place(new, old)
        except OSError as error:
            self._fail(error, None if new else f"cannot make a {size}-byte segment "
                                               f"{kind.label}: {error.strerror}")
            if new:
                new.close()
            if old and not beside:
                self._put_back(old)
            self._write_logbook("loaded" if self._mapping else "")
            return False
        else:
            if not beside:
                self._write_logbook("loaded")
            if old:
                old.close()
            self._mapping = new
            return True
        finally:
            self.unlock()

    def lastLoader(self):
        """The last load_shared.py under the key, as a Loader; None if no loader of ours
        left a logbook. Call it while locked, so that no loader writes meanwhile."""
        try:
            lock_file = LockFile.of(self._key, create=False)
        except OSError:
            return None
        pid, state, kind = lock_file.logbook()
        if pid is None:
            return None
        alive = pid == os.getpid() or not lock_file.lock(OWNER, wait=False)
        if not alive:
            lock_file.unlock(OWNER)
        return Loader(pid, alive, not alive and state == "writing", kind)

    def recover(self):
        """Give Qt's POSIX lock back if a process of ours died inside it, so that a Qt
        program waiting for it goes on. Cheap: an idle loader calls it once a second."""
        try:
            lock_file = self._lock_file = LockFile.of(self._key)
            if self._held or not lock_file.lock(TURN, wait=False):
                return
        except OSError:
            return
        with contextlib.suppress(OSError):
            self._lock = self._lock or self._kind.open_lock(False)
            self._held = self._take_place_of_dead(lock_file)
        if self._held:
            self.unlock()
        else:
            lock_file.unlock(TURN)

    def segmentId(self):
        """What names the segment under the key now ("" if there is none), taking no lock:
        each text that a loader puts there, ours or Qt's article's, is a new segment."""
        return self._kind.identity() if self._kind else ""

    def waitForNew(self, last=None, timeout=None):
        """Wait until the segment under the key is another one than last (a segmentId();
        None: any), and return its segmentId() ("": none now); None if timeout seconds pass
        first. It looks ten times a second, taking no lock: read the new text then as the
        article does, under lock(). A Qt program that rewrites a segment in place is not seen."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (now := self.segmentId()) == last:
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(0.1)
        return now

    # The steps behind them ---------------------------------------------------------------------

    def _usable(self):
        problem = key_problem(self._key, system_v=not isinstance(self._kind, Posix))
        return not problem or self._fail(self.SharedMemoryError.KeyError, problem)

    def _fail(self, error, why=None, code=None):
        """Set error() and errorString(), from an OSError or from a code and why: False."""
        if isinstance(error, OSError):
            code = code or self.SharedMemoryError[self.ERRORS.get(error.errno, "UnknownError")]
            if why is None and error.errno == errno.EEXIST and error.filename:
                why = f"{self._kind.label} exists already (made by another program)"
            why = why or one_line(error)
        self._error, self._error_string = code or error, why
        return False

    def _enter(self, lock_file, seconds):
        """Steps 2 (for up to seconds) and 3 of lock(), holding our turn: True if in."""
        qt_lock = self._lock
        if self._take_place_of_dead(lock_file):
            self._held = True
            return True
        with signals_held():  # we hold it, alive, until the record names us
            if not qt_lock.take(seconds):
                return False
            try:
                if qt_lock.ident:
                    lock_file.write(RECORD, f"{os.getpid()} inside {qt_lock.ident} {PROGRAM}")
            except OSError as error:
                qt_lock.give()
                raise OSError(error.errno, f"cannot write our record in {lock_file.path}: "
                              f"{error.strerror}; Qt's lock was given back") from None
            self._held = True  # before signals come again: a stop now gives it back in order
        return True

    def _take_place_of_dead(self, lock_file):
        """A RECORD found by whoever holds our turn was left by a process of ours that died
        inside. If it names this very semaphore, still taken, put ourselves in its place
        (one write). A record of another semaphore (a Qt program's create() made a fresh
        one) is not about ours."""
        record, qt_lock = lock_file.read(RECORD), self._lock
        if not record or " ".join(record[2:4]) != qt_lock.ident:
            return False  # none, or another semaphore's: left to whoever has that one open
        if qt_lock.taken():
            lock_file.write(RECORD, f"{os.getpid()} inside {qt_lock.ident} {PROGRAM}")
            warn(f"Qt's lock on {self._kind.label} was left taken by {' '.join(record[4:])} "
                 f"(pid {record[0]}), a process of ours that died inside it; taking its place")
            return True
        lock_file.write(RECORD, "")
        return False

    def _own(self, lock_file, replace):
        """own(), under our turn: the OWNER lock, then what is under the key."""
        kind, label = self._kind, self._kind.label
        dead, _, dead_kind = lock_file.logbook()
        if not lock_file.lock(OWNER, wait=False):
            raise OSError(errno.EEXIST, f"another load_shared.py ({lock_file.holder(OWNER)}) "
                          f"holds key {self._key!r}; stop it first")
        self._owner = True
        tell("own()", f"fcntl: lock byte {OWNER} of {lock_file.path}, while we live")
        kinds = [Posix(self._key)] + ([SystemV(self._key)] if not key_problem(
            self._key, system_v=True) else [])
        theirs = [each for other in kinds for each in other.others()]
        if theirs:
            raise OSError(errno.EPERM, f"{whose(theirs[0])}: only they or root may remove it "
                          f"(root: {'; '.join(each[2] for each in theirs)}); use another --key")
        for left in kinds if dead else ():  # its OWNER lock was free: it is gone
            if left.tag == dead_kind and left.users() is not None:
                warn(f"replacing {left.label}, left behind by load_shared.py (pid {dead}), "
                     "which is gone")
                left.remove()
            left.clear_unfinished()
            if left.tag != kind.tag:
                self._remove_lock(left, lock_file)
        users = kind.users()
        if users == 0:
            warn(f"replacing {label}, which nobody is attached to (a program that made it "
                 "was killed)")
        elif users is not None and replace:
            warn(f"--replace: taking over {label}")
        elif users is not None:
            raise OSError(errno.EEXIST, (
                f"{label} is held by {users} attached process{'es' * (users > 1)} (a Qt "
                "program?)" if users > 0 else f"segment {label} exists but load_shared.py did "
                "not make it (a Qt program's?)") + "; use --replace to take it over")
        if users is not None:
            kind.remove()
        kind.clear_unfinished()
        self._write_logbook("")
        self._lock = kind.open_lock(True)
        if self._take_place_of_dead(lock_file):  # a dead one of ours inside: let Qt in
            with signals_held():
                lock_file.write(RECORD, "")
                self._lock.give()

    def _write_logbook(self, state):
        line = f"{os.getpid()} {state} {self._kind.tag}" if state else ""
        LockFile.of(self._key).write(LOGBOOK, line)
        tell("logbook", line or "(empty)")

    def _put_back(self, old):
        """System V: the old text under the key again, from our mapping of it (copied out
        first if there is no room for both); errorString() says if it could not be."""
        self._mapping = None
        try:
            try:
                self._mapping = self._kind.make(old.size)
            except OSError:  # no room beside it: copy it out, and let it go first
                saved = bytes(old.buf)
                old.close()
                self._mapping = self._kind.make(len(saved))
                self._mapping.buf[:] = saved
                return
            self._mapping.buf[:] = old.buf
            old.close()
        except OSError as lost:
            self._error_string += f"; and the old text could not be put back: {lost.strerror}"

    def _remove_ours(self, mapping, wait):
        """The creator's or owner's end: the segment, the logbook, then Qt's lock. Without
        our turn (held, and we may not wait), the segment goes all the same: whoever maps
        it keeps it."""
        lock_file = self._lock_file = LockFile.of(self._key)
        locked = self._held or lock_file.lock(TURN, wait)
        try:
            if mapping:
                self._kind.remove(mapping)
            if self._owner:
                self._write_logbook("")
            if self._lock and locked:
                self._remove_lock(self._kind, lock_file, wait)
            elif self._lock:
                warn(f"leaving Qt's lock on {self._kind.label} in place: our lock on key "
                     f"{self._key!r} is held by {lock_file.holder(TURN)} (the next "
                     "load_shared.py removes it)")
        finally:
            self._owner = self._made = self._held = False
            self._lock = None
            if locked:
                lock_file.unlock(TURN)

    def _remove_lock(self, kind, lock_file, wait=False):
        """Remove kind's Qt lock, under our turn, only while we hold it, then give it back:
        whoever has it open goes on, and nobody inside finds it gone. (A death between
        sem_unlink and sem_post leaves a removed lock taken: see the README.)"""
        try:
            self._lock = kind if kind is self._lock else kind.open_lock(False)
        except OSError:
            return
        notice = waiting_notice(f"Qt's lock on {kind.label}, to remove it", kind.holder)
        why = "is held by another process"
        try:
            try:  # one that /KEY no longer names (unlinked) nobody new can wait for
                inside = self._held or kind.current() and self._enter(lock_file, 0)
                while wait and not inside and kind.current():
                    notice()
                    inside = self._enter(lock_file, 0.2)
            except OSError as error:
                inside, why = False, f"cannot be taken ({one_line(error)})"
            if inside:
                with signals_held():
                    kind.remove_lock()
                    if kind.ident:
                        lock_file.write(RECORD, "")
                    kind.give()
                self._held = False
            elif kind.current():
                warn(f"leaving Qt's lock on {kind.label} in place: it {why} (the next "
                     "load_shared.py removes it)")
        finally:
            kind.close_lock()
            self._lock = None
