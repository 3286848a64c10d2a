#!/usr/bin/env python3
"""usage: load_shared.py [--key KEY] [--sysv] [--replace] [--verbose] [TEXT | -]

SharedMemoryLoad in Python: load a text into a shared-memory segment under KEY, in the
bytes that Qt's QDataStream writes, for show_shared.py (or a Qt program) to read.

  (no TEXT)      ask for texts: each line replaces the last; Ctrl-D or Ctrl-C quits
  TEXT           load TEXT and hold it until Ctrl-C, SIGTERM or SIGHUP
                 (write -- TEXT for a text that starts with "-")
  -              the same with all of standard input (UTF-8), less one final newline
  --key KEY      the segment's key (default: MySharedMemory)
  --sysv         use Qt's System V segment for KEY, which the article's programs and every
                 Qt 5 program use (QSharedMemory("KEY")), instead of the POSIX segment /KEY
                 of Qt 6's QSharedMemory::platformSafeKey("KEY") (64-bit Linux only)
  --replace      take over a segment that load_shared.py did not make (a Qt program's)
  --verbose      tell each step on stderr as it happens: the article's Qt call, and the
                 system call that does it here
  -h, --help     show this help

The loader owns the segment: it stays attached while it holds the text, and removes the
segment (and Qt's semaphore and key files) when it quits. Around each write it takes
Qt's lock too, so a Qt program's lock() waits for it, and it waits for theirs.

exit status: 0 released cleanly (end of input, Ctrl-C, SIGTERM, SIGHUP),
             1 failed (key held by another loader or user, segment in use, no memory,
               stopped while waiting for a lock, so that the text was not loaded, ...),
             2 bad usage
"""

import _signal as signal  # signal's C module: its calls, without 4 ms of enums to import

# Until this program owns anything, Ctrl-C may simply end it: no traceback, nothing left.
# A Ctrl-C that we inherited as ignored (a job started with & by a script) stays ignored.
if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, signal.SIG_DFL)

import os  # noqa: E402  (after the line above, so that Ctrl-C is quiet while importing)
import select  # noqa: E402
import sys  # noqa: E402

import shmcodec  # noqa: E402
from shmcodec import DATA_LOCK, OWNER_LOCK, Failure, say, stopped, tell, warn  # noqa: E402


class NotLoaded(Exception):
    """A text that could not be loaded; kept: the segment that still holds the text that
    was there before (None: there is none)."""

    def __init__(self, why, kept=None):
        super().__init__(why)
        self.kept = kept


def main():
    key, text, replace, kind = read_command_line()
    lock_file = qt_lock = segment = leftover = None
    missed = False  # a typed line that could not be loaded
    try:
        if text is shmcodec.STDIN:
            text = read_stdin()  # before we own anything: a Ctrl-C here just ends us
        shmcodec.fill_standard_fds()  # without standard input: typed lines end at once
        # 1. The key's lock file, which show_shared.py (and any other loader) opens too.
        lock_file = shmcodec.LockFile(key)
        # 2. From here on, Ctrl-C and kill are noted, never cut a step in half, and end
        #    every wait (see shmcodec.watch_stop_signals).
        shmcodec.watch_stop_signals()
        # 3. Own the key: one loader at a time, and clear away what a dead one left.
        leftover = become_owner(lock_file, kind, replace)
        # 4. Qt's lock for this kind of segment, as Qt's create() makes it.
        qt_lock = kind.open_qt_lock(lock_file, create=True)
        # 5. Load the text (each line typed replaces it), 6. and hold it until told to stop.
        if text is None:
            for line in lines_until_stopped(kind, qt_lock):
                try:
                    segment = load(lock_file, qt_lock, kind, line, segment)
                except NotLoaded as failure:
                    segment = failure.kept
                    if segment is None:  # nothing to keep: as for TEXT, we fail
                        raise
                    warn(f"that line was not loaded: {failure}; the old text stays")
                    missed = True
        else:
            segment = load(lock_file, qt_lock, kind, text, segment)
            say(f"holding {kind.label} until Ctrl-C, SIGTERM or SIGHUP")
            wait_for_input_or_stop(qt_lock, stdin=False)
    except (Failure, NotLoaded, OSError) as failure:
        warn(shmcodec.one_line(failure))
        return 1
    except MemoryError:
        warn("not enough memory for the text")
        return 1
    finally:
        # 7. Release: remove our segment and Qt's lock, whichever way we leave.
        if lock_file is not None:
            release(lock_file, kind, segment, qt_lock, leftover)
    return 1 if missed else 0


def load(lock_file, qt_lock, kind, text, old):
    """Write text into a new segment, under both locks: QSharedMemory::create() + memcpy.

    Returns the new segment, which we stay attached to while we hold the text, in place of
    old (ours, or None). text: a str, or a typed line's bytes (None: one that was too long
    to read). NotLoaded if it cannot be loaded: then old still holds the old text.
    """
    # Serialize before we lock, so that readers wait only for the copy.
    try:
        if text is None:
            raise MemoryError
        if not isinstance(text, str):
            text = text.decode("utf-8")
        prefix, payload = shmcodec.qstring_parts(text)
    except MemoryError:
        raise NotLoaded("not enough memory for the text", old) from None
    except UnicodeDecodeError as error:
        raise NotLoaded(f"the text is not valid UTF-8 (byte {error.start})", old) from None
    size = len(prefix) + len(payload)
    tell("QDataStream << text", f"{size} bytes: a {len(prefix)}-byte count, then UTF-16BE")
    not_loaded = "; the text was not loaded"
    if not lock_file.lock(DATA_LOCK, exclusive=True, step="lock(), our half",  # ours first,
                          give_up=stopped):
        raise Failure(f"stopped while waiting for the lock on key {kind.key!r}{not_loaded}")
    try:
        if not qt_lock.acquire(give_up=stopped):  # then Qt's
            raise Failure(f"stopped while waiting for Qt's lock on {kind.label}{not_loaded}")
        try:
            segment = write_segment(lock_file, kind, prefix, payload, old)
        finally:
            qt_lock.release()
    finally:
        lock_file.unlock(DATA_LOCK, step="unlock(), our half")
    report(f"Loaded {size} bytes into {kind.label}")
    return segment


def write_segment(lock_file, kind, prefix, payload, old):
    """Under both locks: make a new segment (a segment has a fixed size, so a new text needs
    a new one), copy the text in, and put it in place of old.

    Where the new one can take the old one's place at once (a POSIX name on Linux), the key
    holds a whole text throughout: the old one until that instant, then the new one. Where
    it cannot (System V: a key names one segment), the old one goes first, the logbook says
    "writing" meanwhile, and our own mapping of it keeps its text, to put back if the new
    one cannot be made.
    """
    size = len(prefix) + len(payload)
    # The logbook names us before we make anything, so that the next loader clears what we
    # leave if we die; "writing" while the key's segment may hold half a text.
    lock_file.write_logbook("loaded" if kind.replaces_at_once else "writing", kind)
    if old and not kind.replaces_at_once:
        kind.remove(old)
    try:
        segment = kind.make(size)  # which attaches, as Qt's create() does
    except OSError as error:
        if isinstance(error, FileExistsError):
            raise Failure(f"{kind.label} was made meanwhile by another program") from None
        why = f"cannot make a {size}-byte segment {kind.label}: {shmcodec.one_line(error)}"
        if old and not kind.replaces_at_once:
            try:
                old = put_back(kind, old)
            except OSError as lost:
                lock_file.write_logbook("")  # no segment of ours: nothing to remove later
                raise NotLoaded(f"{why}; and the old text could not be put back: "
                                f"{shmcodec.one_line(lost)}", None) from None
        lock_file.write_logbook("loaded" if old else "", kind)
        raise NotLoaded(why, old) from None
    segment.buf[:len(prefix)] = prefix
    segment.buf[len(prefix):size] = payload
    tell("memcpy(to, from, size)", f"{size} bytes into {kind.label}")
    if not kind.replaces_at_once:
        lock_file.write_logbook("loaded", kind)
    try:
        kind.put_in_place(segment, old)
    except FileExistsError:
        kind.detach(segment)
        lock_file.write_logbook("")
        raise Failure(f"{kind.label} was made meanwhile by another program") from None
    if old:
        kind.detach(old)
    return segment


def put_back(kind, old):
    """The old text, under the key again, from our own mapping of the old segment (which
    is gone from the key). Where there is no room beside it (no memory, or no System V id
    left), it is copied out first, and its segment let go, to make room for the copy."""
    try:
        segment = kind.make(old.size)
        segment.buf[:old.size] = old.buf
    except OSError:
        saved = bytes(old.buf)
        kind.detach(old)
        segment = kind.make(len(saved))
        segment.buf[:len(saved)] = saved
        return segment
    kind.detach(old)
    return segment


def release(lock_file, kind, segment, qt_lock, leftover=None):
    """Detach; remove the segment if the logbook says it is ours; remove Qt's lock (and a
    dead loader's of the other kind, leftover).

    Under DATA_LOCK, unless a viewer holds it and we were told to stop: a viewer keeps
    its own mapping of what we remove, so we need not wait for it.
    """
    locked = lock_file.lock(DATA_LOCK, exclusive=True, step="release", give_up=stopped)
    if segment:
        kind.detach(segment)
    logbook = lock_file.read_logbook()
    if logbook and logbook.pid == os.getpid():
        kind.remove(segment)
        lock_file.write_logbook("")
    for lock in (qt_lock, leftover):
        # Its maker removes Qt's lock (and key file), as Qt does, but only while holding it:
        # we wait for a holder, unless we were told to stop.
        if lock:
            lock.close(give_up=stopped)
    if locked:
        lock_file.unlock(DATA_LOCK, step="release")


# --- The safety nets: one loader per key, and what a dead one left ----------------------


def become_owner(lock_file, kind, replace):
    """Take the key's OWNER_LOCK for good, and clear away what a dead loader left. Returns
    the dead loader's Qt lock of the other kind, if it must be removed later (see
    clear_qt_lock_of), else None."""
    # DATA_LOCK first: show_shared.py probes OWNER_LOCK only under DATA_LOCK, so a probe
    # can never make us believe another loader is alive.
    if not lock_file.lock(DATA_LOCK, exclusive=True, step="own the key", give_up=stopped):
        raise Failure(f"stopped while waiting for the lock on key {kind.key!r}; "
                      "nothing was loaded")
    leftover = None
    try:
        logbook = lock_file.read_logbook()
        if not lock_file.lock(OWNER_LOCK, exclusive=True, step="own the key", wait=False):
            pid = f" (pid {logbook.pid})" if logbook else ""
            raise Failure(f"another load_shared.py{pid} holds key {kind.key!r}; stop it first")
        # Not even --replace, nor root, touches what another user has under this key, of
        # either kind: a segment, Qt's lock or Qt's key files.
        theirs = shmcodec.owned_by_others(shmcodec.kinds_here(kind.key))
        if theirs:
            raise Failure(f"{shmcodec.whose(theirs[0])}: only they or root may remove it "
                          f"(root: {'; '.join(owned.removal for owned in theirs)}); "
                          "use another --key")
        if logbook:  # the OWNER_LOCK was free: the loader that wrote this is gone
            left = shmcodec.KINDS[logbook.tag](kind.key)  # of either kind
            if left.exists():
                warn(f"replacing {left.label}, left behind by load_shared.py "
                    f"(pid {logbook.pid}), which is gone")
                left.remove()
            left.clear_unfinished()
            leftover = clear_qt_lock_of(lock_file, left, reused=left.tag == kind.tag)
        if kind.exists():
            users = kind.attached_count()  # None where the kind cannot tell
            if users == 0:
                warn(f"replacing {kind.label}, which nobody is attached to "
                    "(a program that made it was killed)")
            elif replace:
                warn(f"--replace: taking over {kind.label}")
            elif users:
                raise Failure(f"{kind.label} is held by {users} attached "
                              f"process{'es' if users > 1 else ''} (a Qt program?); "
                              "use --replace to take it over")
            else:
                raise Failure(f"segment {kind.label} exists but load_shared.py did not make it "
                              "(a Qt program's?); use --replace to take it over")
            kind.remove()
        kind.clear_unfinished()
        lock_file.write_logbook("")  # a fresh start: no segment of ours yet
    finally:
        lock_file.unlock(DATA_LOCK, step="own the key")
    return leftover


def clear_qt_lock_of(lock_file, left, reused):
    """A dead loader's Qt lock: give it back if the loader died inside it, so that whoever
    waits on it (a Qt program) goes on. If we will not use that kind of lock, it goes, once
    nobody is inside: this returns it if that is not yet, for release() to remove."""
    try:
        stuck = left.open_qt_lock(lock_file)
    except FileNotFoundError:
        return None
    stuck.look_for_dead_holder()  # its Qt record proves that it died inside
    stuck.made = not reused  # our own open_qt_lock(create=True) takes over one of our kind
    if reused or stuck.acquire(give_up=lambda: True):
        stuck.close()  # removed if made: we hold it
        return None
    return stuck


# --- The command line, standard input, and stop signals ----------------------------------


def read_command_line():
    key, options, operands = shmcodec.parse_command_line(
        __doc__, flags=["--replace", "--sysv"], most_operands=1)
    text = operands[0] if operands else None
    if isinstance(text, str) and not is_utf8(text):
        shmcodec.usage_error("TEXT is not valid UTF-8")
    if "--sysv" in options:
        if not shmcodec.SYSTEM_V_HERE:
            shmcodec.usage_error("--sysv: Qt's System V segments are supported on 64-bit "
                                 "Linux only")
        if shmcodec.system_v_key_problem(key):
            shmcodec.usage_error(shmcodec.system_v_key_problem(key))
    kind = shmcodec.SystemV(key) if "--sysv" in options else shmcodec.Posix(key)
    return key, text, options.get("--replace", False), kind


def is_utf8(text):
    # Python hands over the bytes of argv that are not UTF-8 as lone surrogates.
    return text.isascii() or not any("\ud800" <= char <= "\udfff" for char in text)


def read_stdin():
    """All of standard input as text, less one final newline."""
    with open(0, "rb", closefd=False) as stdin:  # fd 0: works even with no sys.stdin
        data = stdin.read()
    end = len(data) - 1 if data.endswith(b"\n") else len(data)
    try:
        return str(memoryview(data)[:end], "utf-8")  # a view: no copy of a large input
    except UnicodeDecodeError as error:
        raise Failure(f"standard input is not valid UTF-8 (byte {error.start})") from None


def wait_for_input_or_stop(qt_lock, stdin):
    """Wait until a stop signal comes or (with stdin) input does; return True for input.

    Meanwhile, once a second, give Qt's lock back if a process died holding it, so that
    a Qt program never waits on a dead one while we idle.
    """
    while True:
        stop = shmcodec.stop_pipe
        ready, _, _ = select.select([stop, 0] if stdin else [stop], [], [], 1)
        if stop in ready:
            return False
        if ready:
            return True
        qt_lock.look_for_dead_holder()


def lines_until_stopped(kind, qt_lock):
    """Yield each line read from stdin, as bytes (each is a new text, like clicking Load
    again), until the end of input or a stop signal; None for a line too long for our
    memory, whose bytes we skip."""
    interactive = os.isatty(0)
    unfinished = bytearray()  # a line's start, until its newline comes
    skipping = False  # the rest of a line too long to hold
    while True:
        if interactive:
            say(f"Text for {kind.label} (Ctrl-D quits): ", end="")
        if not wait_for_input_or_stop(qt_lock, stdin=True):
            break
        chunk = os.read(0, 1 << 20)
        lines = []
        try:
            if skipping:
                if b"\n" in chunk:
                    skipping, chunk = False, chunk.split(b"\n", 1)[1]
                    lines.append(None)
                else:
                    continue
            unfinished += chunk
            if b"\n" in chunk:  # look for lines in the new bytes only: linear in a long line
                *complete, rest = unfinished.split(b"\n")
                lines += complete
                unfinished = bytearray(rest)
            elif unfinished and not chunk:  # at the end of input, a last line counts too
                lines.append(bytes(unfinished))
        except MemoryError:
            unfinished, skipping = bytearray(), b"\n" not in chunk
            lines.append(None) if not skipping else None
        for line in lines:
            yield line
        if not chunk:
            break
    if interactive:
        say("")  # end the prompt's line


def report(line):
    """A result line on stdout, flushed at once so a script that waits for it sees it."""
    try:
        print(line, flush=True)
    except OSError:
        # Nobody reads our stdout any more (a closed pipe or terminal). Keep serving the
        # segment, and send stdout to /dev/null so that exiting does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
