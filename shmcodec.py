"""What load_shared.py and show_shared.py share, in the order a learner meets it.

The bytes. Qt's `QDataStream << QString` writes a big-endian 32-bit *byte* count and then
the text as UTF-16BE code units. We write and read exactly that, so a Qt program and these
scripts read each other's segments.

The key. Qt turns key "MySharedMemory" into a segment in one of two ways (see "The two
kinds of segment"): the POSIX segment "/MySharedMemory" for Qt 6's
`platformSafeKey("MySharedMemory")`, the same one that
`multiprocessing.shared_memory.SharedMemory("MySharedMemory")` opens; or, for the article's
plain `setKey("MySharedMemory")` and every Qt 5 program, a System V segment.

Telling the person: say() and warn() on stderr (stdout is for the text), tell() for each
step with --verbose; then the command line, and the stop signals that end every wait.

The lock file. Our own rules (a reader never sees half a text, one loader per key, what a
crash left behind) live in fcntl locks on one lock file per key, qshm-KEY.lock in a
directory of this user's alone ($XDG_RUNTIME_DIR, else $TMPDIR/qshm-UID or /tmp/qshm-UID;
a key too long for a file name is cut and ends in its sha1). It holds one-byte locks:
  DATA_LOCK  a loader holds it exclusively while it writes, readers share it while they
             read: nobody ever sees half a text.
  OWNER_LOCK the loader holds it for as long as it lives. The kernel drops it when the
             loader dies, even by SIGKILL, so "is the owner alive?" needs no pid guessing.
  QT_TURN    whichever process of ours waits for Qt's POSIX lock, or holds it, holds this
             one: our processes take turns at Qt's lock, one at a time.
The file's text is two lines: the loader's logbook, "PID writing TAG" or "PID loaded TAG"
(a clean exit empties it, so a logbook left behind with a free OWNER_LOCK means the loader
died), and the Qt record, "PID inside DEVICE INODE PROGRAM" while that process of ours is
inside Qt's POSIX lock.

The two kinds of segment, Posix and SystemV, do the same steps (SegmentKind says which),
each with its own kind of Qt's lock: PosixSemaphore, SystemVSemaphore. Qt's `lock()` and
`unlock()` take a semaphore, and so do we, always after our lock file, so that a Qt program
and these scripts never write and read at once. Last, how /proc proves that a holder of
Qt's POSIX lock is dead (see PosixSemaphore.proven).
"""
import errno
import fcntl
import os
import select
import _signal as signal  # signal's C module: the same calls, without the enums that
import stat  # cost signal 4 ms to import, a third of Python's own start-up
import struct
import sys
import time

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


def sha1(text):
    """The sha1 of text, in hex, as Qt's key file names hold it. Only a System V key file,
    or a key too long for a file name, needs it: CPython's own _sha1 takes a tenth of the
    time that hashlib (and its OpenSSL) takes to import."""
    try:
        from _sha1 import sha1
    except ImportError:
        from hashlib import sha1
    return sha1(text.encode()).hexdigest()


# --- Telling the person: messages, --verbose, a failure in one line ---------------------------

PROGRAM = os.path.basename(sys.argv[0])
verbose = False  # --verbose: tell() says each step of the dance as it happens


def say(message, end="\n"):
    """A line for the person at the terminal, on stderr: stdout is for the text alone."""
    print(message, end=end, file=sys.stderr, flush=True)


def warn(message):
    """A message, with or without --verbose: the program's name, then what happened."""
    say(f"{PROGRAM}: {message}")


def tell(step, how):
    """With --verbose, one line: a step of the article's Qt program, and what does it
    here. The steps are told where they happen, so the story is the code's own."""
    if verbose:
        say(f"{PROGRAM}: {step:<24} {how}")


class Failure(Exception):
    """A failure at run time: its message is the one line we say before exiting 1."""


def one_line(error):
    """A failure as one plain line: an OSError without Python's "[Errno N]"."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    return str(error)


def usage_error(message):
    """Exit 2 with one line that says what is wrong."""
    warn(f"{message} (see --help)")
    sys.exit(2)


def process_name(pid):
    """"show_shared.py (pid 4242)": the script (or program) that runs as pid, where Linux
    tells it in /proc; else just the pid."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            args = cmdline.read().decode(errors="replace").split("\0")
        if not args[0]:  # its first thread has ended: its command line is gone, its name not
            with open(f"/proc/{pid}/comm") as comm:
                args = [comm.read().strip()]
    except OSError:
        return f"pid {pid}"
    scripts = [arg for arg in args[1:3] if arg.endswith(".py")]  # python3 SCRIPT ...
    return f"{os.path.basename(scripts[0] if scripts else args[0])} (pid {pid})"


def user_name(uid):
    """The name of user uid, else the number."""
    import pwd  # only a clash with another user needs it
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


# --- The command line ------------------------------------------------------------------------

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


def fill_standard_fds():
    """Put /dev/null where standard input, output or error is closed: else the next file
    we open takes its number, and the text that we print would go into our lock file."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free number: this one


# --- Stop signals: Ctrl-C, SIGTERM and SIGHUP end every wait, never a step ------------------

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
stop_pipe = None  # the self-pipe's read end, while watch_stop_signals() watches


def watch_stop_signals():
    """Make Ctrl-C, SIGTERM and SIGHUP wake us where we wait, instead of ending us mid-step.

    The self-pipe trick: a signal's only effect is a byte written to a pipe. Every wait of
    ours watches that pipe (select, or stopped() between tries), and a stop signal also
    ends a wait in sem_timedwait (EINTR); so a stop ends a wait at once, but never cuts a
    write in half. A stop signal that we inherited as ignored (nohup's SIGHUP) stays so.
    """
    global stop_pipe
    stop_pipe, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end)
    for each in STOP_SIGNALS:
        if signal.getsignal(each) != signal.SIG_IGN:
            signal.signal(each, lambda signum, frame: None)  # the byte in the pipe is enough


def stopped():
    """True once a stop signal has come (its byte waits in the pipe), or before we watch."""
    return stop_pipe is None or bool(select.select([stop_pipe], [], [], 0)[0])


def end_watching_stop_signals():
    """Stop signals end us again as they would have; one that came meanwhile, now."""
    global stop_pipe
    os.set_blocking(stop_pipe, False)
    try:
        came = os.read(stop_pipe, 16)
    except BlockingIOError:
        came = b""
    os.close(signal.set_wakeup_fd(-1))
    os.close(stop_pipe)
    stop_pipe = None
    for each in STOP_SIGNALS:
        if signal.getsignal(each) != signal.SIG_IGN:
            signal.signal(each, signal.SIG_DFL)
    if came:
        os.kill(os.getpid(), came[0])


def waiting_notice(what, whom):
    """A function to call as we wait: once we have waited a second, it says so, once, with
    what we wait for and for whom (whom() says: "held by ..."). A wait is never silent."""
    started, said = time.monotonic(), []

    def notice():
        if not said and time.monotonic() - started > 1:
            warn(f"waiting for {what}, {whom()}")
            said.append(True)
    return notice


# --- The lock file -------------------------------------------------------------------------

DATA_LOCK, OWNER_LOCK, QT_TURN = 0, 1, 2  # byte offsets of the locks in the lock file
LOCK_NAMES = {DATA_LOCK: "data", OWNER_LOCK: "owner", QT_TURN: "Qt turn"}
LOGBOOK, QT_RECORD = 0, 1  # the file's two lines, each LINE bytes long
LINE = 64


class LockFileError(OSError):
    """The lock file, or its directory, is not one we may use."""


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
        name = f"qshm-{key[:200]}-{sha1(key)}.lock"
    return folder and os.path.join(folder, name)


class Logbook:
    """What the loader's logbook says: pid, the last loader; state, "writing" (its segment
    may hold half a text) or "loaded"; tag, the kind of its segment, as SegmentKind.tag
    names it ("posix", "sysv")."""

    def __init__(self, pid, state, tag):
        self.pid, self.state, self.tag = pid, state, tag


class LockFile:
    """The key's lock file (see the top of this module): its byte locks, and its two lines.

    A process opens it once and keeps it open: fcntl locks are the process's, and closing
    any descriptor of the file lets go of them all (a pitfall of POSIX record locks)."""

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

    def lock(self, which, exclusive, step=None, wait=True, give_up=lambda: False,
             waiting_for=None, held_by="held by {}"):
        """Take one of the byte locks; return False if someone holds it and we may not
        wait, or give_up() says to stop waiting (a stop signal came).

        fcntl has no timed wait, so a wait is a try every 10 ms: that lets us say, after a
        second, that we wait and for whom, and stop when told, instead of hanging.
        """
        notice = waiting_notice(waiting_for or f"the lock on key {self.key!r} ({self.path})",
                                lambda: held_by.format(self.holder(which, exclusive)))
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
        # struct flock, as 64-bit Linux lays it out: type, whence, start, len, pid.
        wanted = struct.pack("hhqqi4x", fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK,
                             os.SEEK_SET, which, 1, 0)
        kind, _, _, _, pid = struct.unpack("hhqqi4x", fcntl.fcntl(self.fd, fcntl.F_GETLK,
                                                                  wanted))
        if kind == fcntl.F_UNLCK:
            return "another process"
        # pid 0: a process that this PID namespace does not show
        return process_name(pid) if pid else "a process in another PID namespace"

    def read_line(self, line):
        """The words of one of the file's two lines (LOGBOOK, QT_RECORD); [] if it is empty."""
        return os.pread(self.fd, LINE, line * LINE).decode("ascii", "replace").split()

    def write_line(self, line, text):
        """Write one line, padded to its full length, so that no tail of a longer line
        that was there before stays behind."""
        os.pwrite(self.fd, text.ljust(LINE - 1).encode() + b"\n", line * LINE)

    def read_logbook(self):
        """Return the Logbook (pid, state, kind's tag) in the file, or None if it is empty.
        A tag we do not know (a newer, or a broken, loader's) is read as POSIX's."""
        words = self.read_line(LOGBOOK)
        if len(words) >= 2 and words[0].isdigit():
            tag = words[2] if len(words) > 2 and words[2] in KINDS else Posix.tag
            return Logbook(int(words[0]), words[1], tag)
        return None

    def write_logbook(self, state, kind=None):
        """Note "PID state tag" in the file; an empty state empties it."""
        line = f"{os.getpid()} {state} {kind.tag}" if state else ""
        self.write_line(LOGBOOK, line)
        tell("logbook", f"{line or '(empty)'} in our lock file")

    def lockers(self):
        """The pids of the processes that hold a byte lock on this file (Linux's /proc/locks:
        "1: POSIX  ADVISORY  READ 4242 00:2b:1234 0 0"): our own loader and viewers."""
        info = os.fstat(self.fd)
        where = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
        try:
            with open("/proc/locks") as locks:
                return {int(fields[4]) for fields in (line.split() for line in locks)
                        if len(fields) > 5 and fields[1] == "POSIX" and fields[5] == where}
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


# --- The C library: System V and Qt's locks, through ctypes ------------------------------------
#
# Qt's locks and System V segments are reached through ctypes on the C library, with the
# calls the article's Qt program makes. ctypes costs milliseconds to import, which a
# viewer with nothing to lock need not pay: load_c_library() loads it on first use.

libc = ctypes = None
SYSTEM_V_HERE = sys.platform.startswith("linux") and sys.maxsize > 2 ** 32  # 64-bit Linux
IPC_CREAT, IPC_EXCL, IPC_RMID, IPC_STAT = 0o1000, 0o2000, 0, 2
SETVAL, GETPID, SEM_UNDO, SHM_RDONLY, MADV_POPULATE_READ = 16, 11, 0x1000, 0o10000, 22
QT_FTOK_ID = ord("Q")  # Qt's ftok() project id: the IPC key reads 0x51...... in `ipcs`


def load_c_library():
    """The C library this Python runs on, and the C structures we pass it (once)."""
    global libc, ctypes, ShmidDs, Sembuf, Timespec
    if libc:
        return libc
    import ctypes

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
        _fields_ = [("num", ctypes.c_ushort), ("op", ctypes.c_short),
                    ("flags", ctypes.c_short)]

    class Timespec(ctypes.Structure):
        _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]

    loaded = ctypes.CDLL(None, use_errno=True)
    loaded.shmat.restype = loaded.sem_open.restype = ctypes.c_void_p
    loaded.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    loaded.shmdt.argtypes = loaded.sem_post.argtypes = loaded.sem_close.argtypes = [
        ctypes.c_void_p]
    loaded.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
    loaded.shmctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    loaded.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc = loaded
    return libc


def c_call(result, name):
    """Return result, or raise the C library's errno as an OSError (FileNotFoundError, ...)."""
    if result == -1 or result is None:  # None: a NULL pointer, as sem_open fails
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), name)
    return result


# --- The two kinds of segment ----------------------------------------------------------------

class Owned:
    """Something under a key, and whose it is: what, "segment /KEY" (or Qt's lock, or a key
    file); uid, its owner; removal, the command that removes it (for root); note, what more
    can be told, such as that nobody is attached to it."""

    def __init__(self, what, uid, removal, note):
        self.what, self.uid, self.removal, self.note = what, uid, removal, note


class SegmentKind:
    """What a kind of segment does: Posix and SystemV each do every step their own way.

    Qt names a segment in one of two ways, and each way has its own kind of lock:
      Posix    QSharedMemory(QSharedMemory::platformSafeKey("KEY")), Qt 6.6 and later: the
               POSIX segment /KEY, locked with the POSIX named semaphore /KEY.
      SystemV  QSharedMemory("KEY") or setKey("KEY"), as the article and every Qt 5 program
               write it (a "legacy" key): a System V segment found through ftok() of a key
               file in the temporary directory, locked with a System V semaphore found the
               same way.
    A segment, as make() and attach() return it, has .buf (its bytes), .size, and close().
    """
    tag = ""  # how the loader's logbook names this kind: "posix" or "sysv"
    replaces_at_once = False  # can a new segment take the old one's place under the key?

    def __init__(self, key):
        self.key = key
        self.label = key  # how messages name the segment: "/KEY", "KEY (System V)"

    def exists(self):
        """Is a segment there under the key, anyone's?"""
        raise NotImplementedError

    def make(self, size):
        """A new segment of size bytes, attached for writing, as Qt's create(). Where a new
        one can take the old one's place at once, it is made beside it, out of readers'
        sight, until put_in_place(). FileExistsError if one is there."""
        raise NotImplementedError

    def put_in_place(self, segment, old=None):
        """Give the new segment the key, at once, in place of old (ours); with no old,
        FileExistsError if another program made a segment under the key meanwhile."""
        raise NotImplementedError

    def attach(self):
        """The segment under the key, attached read-only: FileNotFoundError if none."""
        raise NotImplementedError

    def detach(self, segment):
        """Let go of our mapping of segment; the segment stays."""
        raise NotImplementedError

    def remove(self, segment=None):
        """Remove the segment under the key (by segment, ours, or else the one found); who
        maps it still keeps its memory until they detach."""
        raise NotImplementedError

    def clear_unfinished(self):
        """Remove a segment that a loader of ours was making, out of sight, when it died."""

    def attached_count(self):
        """How many processes map the segment under the key: 0 means nobody (its maker
        died); None, that this kind cannot tell."""
        return None

    def owners(self):
        """[Owned] for whatever is under the key (the segment, Qt's lock, key files)."""
        raise NotImplementedError

    def open_qt_lock(self, lock_file=None, create=False):
        """Qt's lock for this kind of segment: PosixSemaphore or SystemVSemaphore. create is
        Qt's create(): make it if need be, and remove it when we quit."""
        raise NotImplementedError


# Where a POSIX segment is a file of /dev/shm (Linux), a new one can take the old one's
# name at once (rename), as an atomic file replace does: it is made and written under a
# temporary name, the key and the character DEL, which no key of ours can hold.
RENAME_HERE = sys.platform.startswith("linux")
TEMPORARY = "\x7f"


def untracked():
    """The SharedMemory() arguments for a segment whose life is ours alone to end.

    Up to 3.12, every SharedMemory, even one that only attaches, registers with the
    resource tracker: a helper process that unlinks the segment when *this* process exits,
    and warns of a "leak". 3.13 has track=False for that; before, there is no such
    argument (a TypeError), so this tells the tracker nothing, for this whole process, and
    returns no argument at all.
    """
    if sys.version_info >= (3, 13):
        return {"track": False}
    from multiprocessing import resource_tracker
    resource_tracker.register = resource_tracker.unregister = lambda name, rtype: None
    return {}


class Posix(SegmentKind):
    """The POSIX segment /KEY (a file in /dev/shm on Linux), as Qt 6's platformSafeKey."""
    tag = "posix"
    replaces_at_once = RENAME_HERE

    def __init__(self, key):
        super().__init__(key)
        self.name = self.label = "/" + key  # its name, and the name of Qt's semaphore for it

    def exists(self):
        import _posixshmem  # the C module behind SharedMemory (a viewer needs no more)
        try:
            # O_NONBLOCK: opening a FIFO planted there must not hang us.
            os.close(_posixshmem.shm_open(self.name, os.O_RDONLY | os.O_NONBLOCK))
        except FileNotFoundError:
            return False
        except PermissionError:  # there, but another user's
            pass
        return True

    def make(self, size):
        """(shm_open + ftruncate, by SharedMemory) Where it can take the key's name at once,
        under the temporary name, which no reader opens; elsewhere under the key's name."""
        from multiprocessing.shared_memory import SharedMemory  # only a loader makes one
        name = self.key + (TEMPORARY if self.replaces_at_once else "")
        segment = SharedMemory(name, create=True, size=size, **untracked())
        if hasattr(os, "posix_fallocate"):
            # A new segment is sparse: its pages are found only when first written, and a
            # full /dev/shm then kills us with SIGBUS. Reserving them now turns that into
            # an OSError (ENOSPC) we can report.
            try:
                os.posix_fallocate(segment._fd, 0, size)
            except OSError:
                segment.close()
                segment.unlink()
                raise
        tell(f"create({size})", "shm_open(O_CREAT|O_EXCL) + ftruncate + mmap: " + (
            f"{self.name} + DEL, a temporary name" if self.replaces_at_once else self.name))
        return segment

    def put_in_place(self, segment, old=None):
        if not self.replaces_at_once:
            return  # it has the key's name already
        made, final = f"/dev/shm/{self.key}{TEMPORARY}", f"/dev/shm/{self.key}"
        replacing = old and os.stat(final).st_ino == os.fstat(old._fd).st_ino
        try:
            if replacing:
                os.rename(made, final)  # readers find the old text, or the new: never none
            else:  # first load, or our old one is not there: never replace another's
                os.link(made, final)
        finally:
            if os.path.lexists(made):
                os.unlink(made)
        tell("put in place", f"{'rename' if replacing else 'link'} to {self.name}, at once")

    def attach(self):
        """(shm_open + mmap) Not with SharedMemory(name): when its mmap fails (a memory
        limit, say), it unlinks the segment, so a failed reader would destroy the loader's
        text (CPython issue 153279). A reader here can change nothing: it maps the pages
        read-only."""
        segment = ReadOnlySegment(self.name)
        tell("attach()", f"shm_open(O_RDONLY) + mmap: {self.name}, {segment.size} bytes")
        return segment

    def detach(self, segment):
        segment.close()
        tell("detach()", f"munmap: {self.name}")

    def remove(self, segment=None):
        """(shm_unlink, by name) SharedMemory.unlink() needs the segment mapped first, which
        fails for a 0-byte segment left by a crash, and before 3.13 it calls the resource
        tracker."""
        import _posixshmem
        try:
            _posixshmem.shm_unlink(self.name)
        except FileNotFoundError:
            return
        tell("remove", f"shm_unlink: {self.name} is gone (mappings stay until unmapped)")

    def clear_unfinished(self):
        made = f"/dev/shm/{self.key}{TEMPORARY}"
        if self.replaces_at_once and os.path.lexists(made) and \
                os.lstat(made).st_uid == os.geteuid():
            os.unlink(made)
            tell("remove", f"unlink {self.name} + DEL: a dead loader's unfinished segment")

    def owners(self):
        """On Linux the segment and Qt's semaphore are files in /dev/shm, which anyone may
        lstat (never following a symlink)."""
        found = []
        for what, path in ((f"segment {self.name}", f"/dev/shm/{self.key}"),
                           (f"Qt's lock {self.name}", f"/dev/shm/sem.{self.key}")):
            try:
                found.append(Owned(what, os.lstat(path).st_uid, f"rm {path}", ""))
            except OSError:
                pass
        return found

    def open_qt_lock(self, lock_file=None, create=False):
        return PosixSemaphore(self.name, create, lock_file)


class ReadOnlySegment:
    """A POSIX segment mapped read-only: .buf and .size, as SharedMemory has, and close()."""

    def __init__(self, name):
        import mmap
        import _posixshmem
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


def qt_key_file(ipc_type, key):
    """Qt's key file for a legacy key: qipc_<ipc_type>_<the key's letters><sha1 of the key>,
    in QDir::tempPath() ($TMPDIR, else /tmp). ipc_type is "sharedmemory" for the segment and
    "systemsem" for its semaphore."""
    return os.path.join(os.path.normpath(os.environ.get("TMPDIR") or "/tmp"),
                        f"qipc_{ipc_type}_{key_letters(key)}{sha1(key)}")


class KeyFileError(OSError):
    """A Qt key file that we must not use."""


class KeyFile:
    """One of Qt's key files: ftok() turns its inode into the number by which the kernel
    knows a System V segment or semaphore. It remembers the inode that we made, if we did."""

    def __init__(self, path):
        self.path, self.made = path, None

    def ipc_key(self, create):
        """ftok(path, 'Q'). The file must exist: with create, make it as Qt does (mode 0640).
        Its maker may remove it at any moment (a Qt program that quits): then we make it,
        and try again. The temporary directory is everyone's, so a key file may be a trap:
        one that is a symlink, not a regular file, or another user's is never used to make
        anything (a symlink is not even followed to look)."""
        while True:
            if create:
                try:
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW,
                                 0o640)
                    self.made = os.fstat(fd).st_ino
                    os.close(fd)
                except FileExistsError:
                    pass
            try:
                info = os.lstat(self.path)  # FileNotFoundError if there is none
                if stat.S_ISLNK(info.st_mode) and not create:
                    raise FileNotFoundError(errno.ENOENT, "a symlink, not followed", self.path)
                problem = ("is a symlink" if stat.S_ISLNK(info.st_mode) else
                           "is not a regular file" if not stat.S_ISREG(info.st_mode) else
                           f"belongs to user {user_name(info.st_uid)}"
                           if create and info.st_uid != os.geteuid() else None)
                if problem:
                    raise KeyFileError(f"Qt's key file {self.path} {problem}; "
                                       "refusing to use it")
                load_c_library()
                return c_call(libc.ftok(os.fsencode(self.path), QT_FTOK_ID), self.path)
            except FileNotFoundError:
                if not create:
                    raise
                # Gone between our try and our look: its maker quit. Make it now.

    def remove(self):
        """Unlink it if it is a regular file of ours and, if we made one, still the inode
        we made: never a symlink, nor a file that someone put in its place."""
        try:
            info = os.lstat(self.path)
            if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and \
                    self.made in (None, info.st_ino):
                os.unlink(self.path)
        except OSError:
            pass


def shm_status(shmid):
    """shmctl(IPC_STAT): the segment's size, creator, number of attached processes..."""
    status = ShmidDs()
    c_call(libc.shmctl(shmid, IPC_STAT, ctypes.byref(status)), f"shmid {shmid}")
    return status


class SystemV(SegmentKind):
    """Qt's System V segment for the legacy key KEY: the article's QSharedMemory("KEY")."""
    tag = "sysv"
    replaces_at_once = False  # a key names one segment: the old one must go first

    def __init__(self, key):
        if not SYSTEM_V_HERE:
            raise OSError("Qt's System V segments are supported on 64-bit Linux only")
        super().__init__(key)
        self.label = f"{key} (System V)"
        self.key_file = KeyFile(qt_key_file("sharedmemory", key))
        self.lock_key_file = KeyFile(qt_key_file("systemsem", key))

    def shmid(self):
        """shmget(): the id of the segment under our IPC key (FileNotFoundError if none)."""
        key = self.key_file.ipc_key(create=False)  # (which loads the C library)
        return c_call(libc.shmget(key, 0, 0), self.label)

    def exists(self):
        if system_v_key_problem(self.key):  # no key file can have such a name
            return False
        try:
            self.shmid()
        except FileNotFoundError:  # no key file, or no segment under its key
            return False
        return True

    def make(self, size):
        """(shmget + shmat) The loader keeps the id it gets: it never looks its own segment
        up again."""
        key = self.key_file.ipc_key(create=True)
        shmid = c_call(libc.shmget(key, size, 0o600 | IPC_CREAT | IPC_EXCL), self.label)
        try:
            segment = AttachedSegment(shmid, readonly=False)
        except OSError:  # no address space left for it, say: it must not stay under the key
            libc.shmctl(shmid, IPC_RMID, None)
            raise
        tell(f"create({size})", f"shmget(ftok({os.path.basename(self.key_file.path)}, 'Q'), "
                                f"IPC_CREAT|IPC_EXCL) + shmat: shmid {shmid}")
        return segment

    def put_in_place(self, segment, old=None):
        """Nothing to do: make() made it under the key."""

    def attach(self):
        segment = AttachedSegment(self.shmid(), readonly=True)
        tell("attach()", f"shmget + shmat(SHM_RDONLY): shmid {segment.shmid}, "
                         f"{segment.size} bytes")
        return segment

    def detach(self, segment):
        segment.close()
        tell("detach()", f"shmdt: shmid {segment.shmid}")

    def remove(self, segment=None):
        """(IPC_RMID) ...and Qt's key file, as Qt's last detach() does. The key is free at
        once; processes still attached keep their memory until they detach."""
        try:
            shmid = segment.shmid if segment else self.shmid()
            c_call(libc.shmctl(shmid, IPC_RMID, None), self.label)
            tell("remove", f"shmctl(IPC_RMID): shmid {shmid}; unlink "
                           f"{os.path.basename(self.key_file.path)}")
        except OSError as error:
            if error.errno not in (errno.ENOENT, errno.EINVAL, errno.EIDRM):  # not gone
                raise
        self.key_file.remove()

    def attached_count(self):
        return shm_status(self.shmid()).nattch

    def owners(self):
        """Qt's key files, the segment and Qt's semaphore set, as lstat and /proc/sysvipc
        tell anyone (IPC_STAT would need leave to read)."""
        found, key_files = [], []  # the segment and the lock first: they matter most
        for what, table, key_file in ((f"segment {self.label}", "shm", self.key_file),
                                      (f"Qt's lock for {self.label}", "sem", self.lock_key_file)):
            try:
                key_files.append(Owned(f"Qt's key file {key_file.path}",
                                       os.lstat(key_file.path).st_uid, f"rm {key_file.path}", ""))
                key = key_file.ipc_key(create=False)
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

    def open_qt_lock(self, lock_file=None, create=False):
        return SystemVSemaphore(self.lock_key_file, create, self.label)


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


KINDS = {kind.tag: kind for kind in (Posix, SystemV)}


def kinds_here(key):
    """Both kinds of segment for key, as this system has them: POSIX first. A generator:
    the System V kind is made (and its key files named) only if it is asked for."""
    yield Posix(key)
    if SYSTEM_V_HERE:
        yield SystemV(key)


def owned_by_others(kinds):
    """[Owned]: what of these kinds (segments, Qt's locks and key files) another user owns.
    None of it is ours to read, replace or remove, root or not."""
    return [owned for kind in kinds for owned in kind.owners() if owned.uid != os.geteuid()]


def whose(owned):
    """"segment /KEY belongs to user alice", and what more is known of it."""
    return f"{owned.what} belongs to user {user_name(owned.uid)}{owned.note}"


def find_segment(key):
    """The segment held under key: /KEY first, else Qt's System V one, but our own before
    another user's; None if there is neither."""
    theirs = None
    for kind in kinds_here(key):
        if kind.exists():
            if not owned_by_others([kind]):
                return kind
            theirs = theirs or kind
    return theirs


# --- Qt's lock: the semaphores behind QSharedMemory::lock() and unlock() -----------------------
#
# acquire(give_up) waits until the lock is ours (True) or give_up() says to stop (False: a
# stop signal came); release() gives it back; close() lets go of it, and removes it when
# this process made it, as Qt's own cleanup does, but only while holding it: nobody inside
# it ever finds it gone. look_for_dead_holder() is for an idle loader, once a second.

WAIT_SLICE = 0.1  # seconds


class PosixSemaphore:
    """Qt's lock for /KEY: the POSIX named semaphore /KEY (/dev/shm/sem.KEY on Linux).

    A named semaphore has no undo: a process that dies holding it leaves it taken, and
    every lock() then waits for ever. So we give it back, but only on proof of that death,
    never on a guess (a lock that admits two is worse than a wait):
      - a process of ours proves it through the kernel. Ours take turns at the semaphore
        (QT_TURN in the lock file), and the one inside names itself in the Qt record. The
        kernel drops a dead process's fcntl locks, so whoever gets the turn and finds the
        record still there knows that its writer died inside: give_back_if_ours_died().
      - anyone else (a Qt program) can be proven dead only by /proc, on Linux, and only
        where /proc shows everything: see look() and proven().
    """

    def __init__(self, name, create, lock_file):
        # create is Qt's create(), but for one thing: Qt first unlinks a semaphore that is
        # there and makes a fresh one, which lets two in at once if anyone holds the old
        # one, or is about to take it. We open it if it is there (as Qt's second try does:
        # O_CREAT alone), and remove it when we quit, while we hold it. Without create,
        # open the one that is there: FileNotFoundError if none.
        load_c_library()
        self.name, self.made, self.lock_file, self.last_look = name, create, lock_file, None
        self.held = False  # by this process, between acquire() and release()
        self.handle = c_call(libc.sem_open(name.encode(), os.O_CREAT if create else 0,
                                           ctypes.c_uint(0o600), ctypes.c_uint(1)),
                             f"semaphore {name}")
        self.file = mapped_file(self.handle)  # "DEVICE INODE" of its file, or None
        tell("Qt's lock", f"sem_open(O_CREAT, value 1): {name}" if create else
             f"sem_open: {name}")

    def acquire(self, give_up):
        """lock(), Qt's half: our turn at the semaphore first, then the semaphore."""
        if self.lock_file is None:  # a viewer that found none (no loader of ours ran here)
            self.lock_file = LockFile(self.name[1:])
        if not self.lock_file.lock(QT_TURN, exclusive=True, step="lock(), Qt's half",
                                   give_up=give_up, waiting_for=f"Qt's lock on {self.name}",
                                   held_by="behind {}, whose turn it is"):
            return False
        try:
            self.give_back_if_ours_died()
            got = self.wait(give_up)
            if got:  # name ourselves at once: from here on, a death of ours can be proven
                self.lock_file.write_line(QT_RECORD, f"{os.getpid()} inside {self.file} "
                                                     f"{PROGRAM}")
        except BaseException:
            self.lock_file.unlock(QT_TURN)
            raise
        if not got:
            self.lock_file.unlock(QT_TURN)
            return False
        self.held = True
        tell("lock(), Qt's half", f"sem_wait: {self.name}")
        return True

    def release(self):
        """unlock(), Qt's half: the record goes first, so that a death between the two
        never makes anyone give back a lock that we gave back already."""
        self.lock_file.write_line(QT_RECORD, "")
        self.held = False
        c_call(libc.sem_post(ctypes.c_void_p(self.handle)), f"semaphore {self.name}")
        tell("unlock(), Qt's half", f"sem_post: {self.name}")
        self.lock_file.unlock(QT_TURN, step="unlock(), Qt's half")

    def taken(self):
        return semaphore_value(self.handle) <= 0

    def give_back(self, who=None):
        """sem_post for a holder proven dead (who: its name, where we know it)."""
        holder = f"{who}, which died inside it" if who else "a process that died"
        warn(f"Qt's lock on {self.name} was left taken by {holder}; giving it back")
        c_call(libc.sem_post(ctypes.c_void_p(self.handle)), f"semaphore {self.name}")

    def give_back_if_ours_died(self):
        """Call it holding QT_TURN. A Qt record there was written by a process of ours that
        died inside Qt's lock: alive, it would hold QT_TURN. Give the lock back, if it is
        still taken and still the semaphore that the record names (a Qt program's
        create() may have put a fresh one in its place since)."""
        record = self.lock_file.read_line(QT_RECORD)  # PID inside DEVICE INODE PROGRAM
        if not record:
            return
        if self.file and " ".join(record[2:4]) == self.file and self.taken():
            self.give_back(f"{' '.join(record[4:])} (pid {record[0]})")
        self.lock_file.write_line(QT_RECORD, "")

    def wait(self, give_up):
        """sem_wait, until the lock is ours (True) or give_up() says to stop (False).

        While we wait, a thread of ours watches: after a second it says for whom we wait,
        and it gives the lock back once a second look proves its holder dead (see
        proven()). Meanwhile this thread stands in line, asleep in sem_timedwait, until the
        lock is given to it, or a stop signal wakes it (EINTR).
        """
        if libc.sem_trywait(ctypes.c_void_p(self.handle)) == 0:
            return True
        if not hasattr(libc, "sem_timedwait") or not self.file:  # macOS: no timed wait,
            # and no /proc to prove a death: try, now and then, and never give back
            notice = waiting_notice(f"Qt's lock on {self.name}", lambda: "held by another "
                                    "process (a POSIX semaphore does not say which, here)")
            while libc.sem_trywait(ctypes.c_void_p(self.handle)):
                if give_up():
                    return False
                notice()
                time.sleep(WAIT_SLICE / 10)
            return True
        import threading  # only a wait needs a second thread
        stop = threading.Event()
        watcher = threading.Thread(target=self.watch, args=(stop, threading.get_native_id()))
        # The watcher never takes a stop signal: the kernel then gives it to this thread,
        # whose sleep it ends.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        watcher.start()
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        try:
            while not give_up():  # a stop that came before we wait ends the wait too
                until = Timespec(int(time.time()) + 60, 0)
                if libc.sem_timedwait(ctypes.c_void_p(self.handle), ctypes.byref(until)) == 0:
                    return True
                if ctypes.get_errno() not in (errno.ETIMEDOUT, errno.EINTR):
                    c_call(-1, f"semaphore {self.name}")
            return False
        finally:
            stop.set()
            watcher.join()

    def watch(self, stop, witness):
        """The watcher of wait(): once a second, a look; the first one that cannot prove a
        death is told; a look that proves one gives the lock back (we hold QT_TURN)."""
        before, said = None, False
        while not stop.wait(1):
            now = self.look(witness)
            if self.proven(before, now):
                self.give_back()
                now = None
            elif not said and (now.holders or now.unknown or before):
                warn(f"waiting for Qt's lock on {self.name}, {who_holds(now, self.name)}")
                said = True
            before = now

    def look_for_dead_holder(self):
        """For an idle loader, once a second: if Qt's lock is taken and our turn is free
        (no process of ours is at the semaphore, to do this itself), give it back on proof
        that its holder died, so that a Qt program waiting behind a dead one goes on."""
        if not self.taken() or not self.lock_file.lock(QT_TURN, exclusive=True, wait=False):
            self.last_look = None
            return
        try:
            self.give_back_if_ours_died()
            now = self.look() if self.taken() else None
            if self.proven(self.last_look, now):
                self.give_back()
                now = None
            self.last_look = now
        finally:
            self.lock_file.unlock(QT_TURN)

    def look(self, witness=None):
        """Who may hold the semaphore, as Linux's /proc shows it now: a Look.

        Every process that has a named semaphore open maps its file; /proc/PID/maps lists
        the mapping by device and inode. A process may merely wait for the lock only if
        every one of its threads sleeps in futex() on it. Processes of ours that do not
        hold QT_TURN cannot hold it (we hold QT_TURN), nor can this one. witness: our
        thread that sleeps in line for the lock (its tid), if we wait ourselves.

        Only root can see it all: the kernel counts the mappings of the semaphore's page
        (/proc/kpagecount), whoever made them; and whoever holds the lock has that page
        mapped, since taking the lock writes to it. When every mapping counted belongs to
        a process we looked at, no process that we cannot read (or see) can hold it.
        """
        unknown = proc_blind_spot()
        semaphore_value(self.handle)  # reading it maps its page in, for page_frame
        page = page_frame(os.getpid(), self.handle)
        holders, waiters, unreadable, counted = [], {}, [], 1  # 1: our own mapping
        ours = self.lock_file.lockers() | {os.getpid()}
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                use, mapped = semaphore_use(pid, self.file, page)
            except PermissionError:
                unreadable.append(pid)
                continue
            except (FileNotFoundError, ProcessLookupError):  # it ended meanwhile
                continue
            counted += mapped
            if int(pid) in ours:  # its mapping counts, but it cannot hold the lock
                continue
            if use == "runs":
                holders.append(int(pid))
            elif use:
                waiters[pid] = use
        mappings = page_mappings(page)
        if not unknown and mappings is None:
            unknown = "the kernel does not count the mappings of its page here"
        elif not unknown and mappings != counted:
            named = [f"{process_name(pid)} of user {user_name(os.stat(f'/proc/{pid}').st_uid)}"
                     for pid in unreadable[:3]] + [f"{len(unreadable) - 3} more"] * (
                         len(unreadable) > 3)
            unknown = (f"{mappings - counted} of its {mappings} mappings belong to processes "
                       f"that we cannot read: {', '.join(named) or 'none that we can see'}")
        if witness:
            mine = thread_state(str(os.getpid()), str(witness), None)
            waiters = {**waiters, "self": {witness: mine}} if mine else None
        return Look(holders, unknown, waiters, mappings)

    def proven(self, before, now):
        """True if two looks, a second apart, prove that whoever holds the lock is dead.

        Both looks found nobody who may hold it, and nobody hidden; and the same waiters
        slept in line all along: the same threads, asleep on the semaphore, not woken once
        (their counts of context switches did not move), and they are asleep still.
        Whoever gives the lock back wakes the first in line, and a waiter woken by a
        release that it then loses to a newcomer goes to the back of the line: so no
        living process can have taken the lock while we looked, without waking one of
        them (that is why there must be one). Real-time waiters, which jump the line, are
        never counted as waiters.
        """
        if not (before and now and not now.holders and not now.unknown and now.waiters
                and (now.waiters, now.mappings) == (before.waiters, before.mappings)):
            return False
        # Once more, at this moment: still taken, and still nobody awake or new.
        return (self.taken() and still_asleep(now.waiters)
                and page_mappings(page_frame(os.getpid(), self.handle)) == now.mappings)

    def close(self, give_up=lambda: True):
        """sem_close; its maker also removes it (sem_unlink), but only while holding it,
        so that nobody inside the lock finds a fresh one under its name, taken by another
        (give_up: how long we may wait to hold it; by default not at all)."""
        if self.made and (self.held or self.acquire(give_up)):
            libc.sem_unlink(self.name.encode())
            tell("Qt's lock", f"sem_unlink, while we hold it: {self.name}")
            self.release()  # whoever else has it open still waits on it: let them in
        elif self.made:
            warn(f"Qt's lock on {self.name} is held by another process; leaving it in place "
                 "(the next load_shared.py removes it)")
        libc.sem_close(ctypes.c_void_p(self.handle))
        tell("Qt's lock", f"sem_close: {self.name}")


class Look:
    """One look at who may hold Qt's POSIX lock: holders, the pids that may hold it;
    unknown, why /proc cannot show every process (None: it can); waiters, {pid: {tid:
    (futex address, context switches)}} of the processes whose every thread sleeps on it
    (None: our own witness was awake); mappings, how many mappings of its page the kernel
    counts."""

    def __init__(self, holders, unknown, waiters, mappings):
        self.holders, self.unknown, self.waiters, self.mappings = (holders, unknown, waiters,
                                                                   mappings)


def who_holds(look, name):
    """The end of the waiting line for Qt's lock name: "held by one of: python3 (pid 4242)",
    or why we cannot tell, and what a person can do."""
    if look.holders:
        named = "held by one of: " + ", ".join(map(process_name, look.holders))
        return named + (f", or a process we cannot see ({look.unknown})" if look.unknown else "")
    if look.unknown:
        return (f"held by a process we cannot see: {look.unknown}; if you know that it died, "
                f"quit every program that uses the key, then rm /dev/shm/sem.{name[1:]} "
                "(README: \"When something dies\")")
    return "held by a process that seems to have died (looking again, to be sure)"


def semaphore_value(handle):
    value = ctypes.c_int()
    libc.sem_getvalue(ctypes.c_void_p(handle), ctypes.byref(value))
    return value.value


def mapped_file(address):
    """"DEVICE INODE" of the file mapped at address, as /proc/self/maps names it (Linux):
    the identity of a semaphore we have open, whatever name it has now; else None."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                span, _, _, device, inode = line.split()[:5]
                start, end = (int(edge, 16) for edge in span.split("-"))
                if start <= address < end:
                    return f"{device} {inode}"
    except OSError:
        pass
    return None


INITIAL_PID_NAMESPACE = "pid:[4026531836]"  # the machine's own (PROC_PID_INIT_INO)


def proc_blind_spot():
    """Why /proc cannot show this process every process that may hold a semaphore, or
    None if it can: we must be in the machine's own PID namespace (NSpid cannot tell us:
    /proc mounted for a child namespace shows one pid there), and be root, who alone can
    read other users' processes and count the mappings of a page."""
    try:
        if os.readlink("/proc/self/ns/pid") != INITIAL_PID_NAMESPACE:
            return ("this process runs in another PID namespace (a container?), whose /proc "
                    "does not show every process")
        with open("/proc/kpagecount", "rb"):
            return None
    except PermissionError:
        return "only root can read every process"
    except OSError:
        return "/proc does not show every process here"


def page_frame(task, address):
    """The page frame that process (or "PID/task/TID") task maps at address
    (/proc/TASK/pagemap: root only), or None if it is not mapped in, or we cannot tell."""
    try:
        with open(f"/proc/{task}/pagemap", "rb") as pagemap:
            entry = int.from_bytes(os.pread(pagemap.fileno(), 8, address // PAGE * 8), "little")
    except OSError:
        return None
    frame = entry & ((1 << 55) - 1)  # bits 0-54; bit 63: present
    return frame if entry >> 63 and frame else None


def page_mappings(frame):
    """How many mappings of page frame the kernel counts, by any process (root only)."""
    try:
        with open("/proc/kpagecount", "rb") as counts:
            return int.from_bytes(os.pread(counts.fileno(), 8, frame * 8), "little")
    except (OSError, TypeError):  # TypeError: no frame
        return None


PAGE = os.sysconf("SC_PAGE_SIZE")


# The futex system call, by which a thread sleeps on a semaphore, as /proc/PID/syscall
# numbers it, and its two ways to wait (FUTEX_WAIT, FUTEX_WAIT_BITSET); elsewhere a
# waiting thread cannot be told from a holding one.
FUTEX = {"x86_64": "202", "aarch64": "98"}.get(os.uname().machine)
FUTEX_WAITS = (0, 9)
FAIR_POLICIES = ("0", "3", "5")  # SCHED_OTHER, SCHED_BATCH, SCHED_IDLE: first come, first woken


def semaphore_use(pid, file, page):
    """What process pid does with the semaphore file ("DEVICE INODE"), and how many
    mappings of its page frame (page) it has. What it does: None if it does not map the
    file; {tid: state} if every thread of it sleeps on it (see thread_state); "runs" if
    it maps it and any thread does anything else, so that it may hold it.

    PermissionError if /proc does not let us read it; FileNotFoundError if it is gone."""
    device, inode = file.split()
    task = pid
    with open(f"/proc/{pid}/maps") as maps:
        lines = maps.read()
    if not lines:  # its first thread has ended: any live thread shows the process's map
        for tid in set(os.listdir(f"/proc/{pid}/task")) - {pid}:  # (a kernel thread: none)
            task = f"{pid}/task/{tid}"
            with open(f"/proc/{task}/maps") as maps:
                lines = maps.read()
            if lines:
                break
    if f" {inode} " not in lines:  # a quick test before splitting the lines
        return None, 0
    spans = [[int(edge, 16) for edge in fields[0].split("-")]
             for fields in (line.split(maxsplit=5) for line in lines.splitlines())
             if fields[3:5] == [device, inode]]
    if not spans:
        return None, 0
    mapped = sum(page is not None and page_frame(task, start) == page for start, _ in spans)
    states = {tid: thread_state(pid, tid, spans) for tid in os.listdir(f"/proc/{pid}/task")}
    return (states if all(states.values()) else "runs"), mapped


def thread_state(pid, tid, spans):
    """(futex address, context switches) if thread tid of pid sleeps in line for a
    semaphore inside spans (None: any address), under a first-come policy; else None."""
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()  # after "pid (name)": state ...
        with open(f"/proc/{pid}/task/{tid}/syscall") as syscall:
            call = syscall.read().split()  # "202 0xADDRESS 0xOP ..." or "running"
        with open(f"/proc/{pid}/task/{tid}/status") as status:
            switches = [line.split()[1] for line in status if "ctxt_switches" in line]
    except (FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile
        return None
    if fields[0] != "S" or fields[38] not in FAIR_POLICIES or len(call) < 3 or \
            call[0] != FUTEX or int(call[2], 16) & 0x7F not in FUTEX_WAITS:
        return None
    address = int(call[1], 16)
    if spans is not None and not any(start <= address < end for start, end in spans):
        return None
    return address, tuple(switches)


def still_asleep(waiters):
    """True if every waiter of a look is asleep still, as it was: the same threads, the
    same address, not one context switch more."""
    for pid, threads in waiters.items():
        where = str(os.getpid()) if pid == "self" else pid
        try:
            if pid != "self" and set(os.listdir(f"/proc/{pid}/task")) != set(threads):
                return False
        except OSError:
            return False
        if any(thread_state(where, str(tid), None) != state for tid, state in threads.items()):
            return False
    return True


class SystemVSemaphore:
    """Qt's lock for a legacy key: a set of one System V semaphore, keyed by ftok() of
    Qt's key file qipc_systemsem_... It is taken with SEM_UNDO, so the kernel gives back
    the lock of a process that dies holding it."""

    def __init__(self, key_file, create, label):
        # create is Qt's create(): make the set (and its key file, a KeyFile) if it is not
        # there, and remove it at the end even if another process made it. Without create,
        # use the set that is there: FileNotFoundError if none.
        self.key_file, self.made, self.label = key_file, create, label
        self.held = False  # by this process, between acquire() and release()
        self.semid = self.open(create)
        tell("Qt's lock", f"semget{'(IPC_CREAT)' if create else ''}: semid {self.semid}, "
                          f"IPC key = ftok({os.path.basename(key_file.path)}, 'Q')")

    def open(self, create):
        """semget() the set under Qt's key file; with create, make both if need be, as Qt
        does. Its maker may remove both at any moment (a Qt program that quits): then,
        with create, make them ourselves."""
        while True:
            key = self.key_file.ipc_key(create)
            semid = libc.semget(key, 1, 0o600 | IPC_CREAT | IPC_EXCL if create else 0)
            if semid != -1 and create:  # a new set starts at 0: make it a free lock, as Qt
                c_call(libc.semctl(semid, 0, SETVAL, ctypes.c_int(1)), self.key_file.path)
            elif semid == -1 and create and ctypes.get_errno() == errno.EEXIST:
                # It is there already. Its value is right: SEM_UNDO gave back any dead
                # holder's lock, and setting it to 1 could let two processes in at once.
                semid = libc.semget(key, 1, 0o600)
                if semid == -1 and ctypes.get_errno() == errno.ENOENT:
                    continue  # and gone again
            return c_call(semid, f"semaphore {self.key_file.path}")

    def change(self, delta, give_up=lambda: False):
        operation = Sembuf(0, delta, SEM_UNDO)
        # GETPID: the last process that changed the semaphore, which is the one holding it.
        notice = waiting_notice(f"Qt's lock on {self.label}", lambda: "held by " + process_name(
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
                c_call(-1, f"semaphore {self.key_file.path}")
            else:
                notice()
                if give_up():
                    return False

    def acquire(self, give_up):
        self.held = self.change(-1, give_up)
        return self.held

    def release(self):
        self.change(+1)
        self.held = False

    def look_for_dead_holder(self):
        """Nothing to do: SEM_UNDO already gave back a dead holder's lock."""

    def close(self, give_up=lambda: True):
        """Its maker removes it (IPC_RMID, by the id we made it with, never looked up again
        by its key file), but only while holding it: a waiter of a removed set would get
        in at once (Qt's lock() fails, and the article's reader reads on)."""
        if not self.made:
            return
        if not (self.held or self.acquire(give_up)):
            warn(f"Qt's lock on {self.label} is held by another process; leaving it in place "
                 "(the next load_shared.py removes it)")
            return
        libc.semctl(self.semid, 0, IPC_RMID, ctypes.c_int(0))
        self.key_file.remove()
        tell("Qt's lock", f"semctl(IPC_RMID): semid {self.semid}; unlink "
                          f"{os.path.basename(self.key_file.path)}")
