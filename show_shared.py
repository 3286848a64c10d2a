#!/usr/bin/env python3
"""usage: show_shared.py [--key KEY] [--hex[=ROWS|=all]] [--verbose]

ShowSharedMem in Python: print the text that load_shared.py (or a Qt program) holds under
KEY, read as Qt's QDataStream reads it. It looks for the POSIX segment /KEY (Qt 6's
QSharedMemory::platformSafeKey("KEY")) first, else for Qt's System V segment for KEY (the
article's QSharedMemory("KEY"), and every Qt 5 program's).

  --key KEY      the segment's key (default: MySharedMemory)
  --hex          instead of the text, show what is in the segment: which kind it is, its
                 size, its owner, the byte count and the UTF-16 code units, 16 rows
                 (--hex=ROWS for more, --hex=all for every row); also on a corrupt
                 segment, to see what is wrong
  --verbose      tell each step on stderr as it happens: the article's Qt call, and the
                 system call that does it here
  -h, --help     show this help

The viewer only reads, under Qt's lock as well as ours: it never removes a segment, whose
lifetime belongs to the loader.

exit status: 0 shown, 1 nothing to show (nothing loaded, corrupt segment, ...), 2 bad usage
"""

import _signal as signal  # signal's C module: its calls, without 4 ms of enums to import

# Ctrl-C, or a reader that stops reading (show_shared.py | head), ends us at once and
# quietly, like any Unix filter: the kernel releases all we hold, but for Qt's lock (below).
# A Ctrl-C that we inherited as ignored (a job started with & by a script) stays ignored.
if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
signal.signal(signal.SIGPIPE, signal.SIG_DFL)

import contextlib  # noqa: E402  (after the lines above, so that Ctrl-C is quiet while importing)
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import shmcodec  # noqa: E402
from shmcodec import DATA_LOCK, Failure, tell, warn  # noqa: E402


def main():
    key, options, _ = shmcodec.parse_command_line(__doc__, valued=["--hex"])
    shmcodec.fill_standard_fds()
    hex_rows = options.get("--hex")
    if hex_rows not in (None, True, "all") and not hex_rows.isdigit():
        shmcodec.usage_error(f"--hex={hex_rows}: give a number of rows, or all")
    # A QString may hold lone surrogates, which no encoding can write: print them escaped.
    sys.stdout.reconfigure(errors="backslashreplace")
    try:
        if hex_rows is None:
            text = read_text(key)
            print("" if text is None else text)  # a null QString shows as empty, as in Qt
        else:
            show_bytes(key, 16 if hex_rows is True else None if hex_rows == "all" else
                       int(hex_rows))
    except (Failure, OSError) as failure:
        warn(shmcodec.one_line(failure))
        return 1
    except MemoryError:
        warn("not enough memory to decode the text")
        return 1
    return 0


def read_text(key):
    """The text under key, as ShowSharedMem reads it (see attached()). A segment of zeros
    that no loader of ours made is a Qt writer between its create() and its lock(): we
    give it a second to write."""
    for _ in range(10):
        with attached(key) as found:
            if found.loader and found.loader.died_writing:
                raise no_whole_text(found.loader, found.kind.label)
            if not made_but_not_written(found):
                text = decoded(found)
                break
        time.sleep(0.1)
    else:
        raise Failure(f"the segment under key {key!r} was made but not written yet (a Qt "
                      "program between create() and lock(); see README, \"The dance on one "
                      "page\")")
    if found.loader and not found.loader.alive:
        warn(f"note: load_shared.py (pid {found.loader.pid}), which loaded this text, is "
             "gone; the next load_shared.py replaces it")
    return text


class Found:
    """The segment found under a key: kind, its kind (shmcodec.Posix or shmcodec.SystemV);
    buffer, its bytes, read-only, straight from its memory; loader, the Loader that made
    it, or None if no loader of ours did (a Qt program, say)."""

    def __init__(self, kind, buffer, loader):
        self.kind, self.buffer, self.loader = kind, buffer, loader


class Loader:
    """The last load_shared.py under a key: its pid; whether it is alive; whether it died
    while its segment may hold half a text (its logbook says "writing")."""

    def __init__(self, pid, alive, died_writing):
        self.pid, self.alive, self.died_writing = pid, alive, died_writing


@contextlib.contextmanager
def attached(key):
    """The original's lock(), attach(), constData(), detach() and unlock(): yield the
    segment under key as a Found, attached read-only, while we hold both locks, ours and
    Qt's. Failure if there is none to show."""
    try:
        lock_file = shmcodec.LockFile(key, create=False)
    except FileNotFoundError:  # no loader of ours ran here: Qt's lock is all there is
        lock_file = None
    # Lock *before* attaching: our loader makes a new segment for each text, and our lock
    # makes sure that we map a whole one. (A Qt writer takes no lock of ours, and between
    # its create() and its lock() its segment is all zeros: see read_text.)
    if lock_file:
        lock_file.lock(DATA_LOCK, exclusive=False, step="lock(), our half")
    try:
        loader, tag = last_loader(lock_file)
        kind = shmcodec.find_segment(key)
        tell("attach(): which kind?", kind.label if kind else f"neither /{key} nor System V")
        if kind is None:
            if loader and loader.died_writing:  # it may have died before its segment was made
                raise no_whole_text(loader, f"under key {key!r}")
            raise nothing_loaded(key)
        theirs = shmcodec.owned_by_others([kind])
        if theirs:
            raise Failure(f"{shmcodec.whose(theirs[0])}: it is theirs to show")
        if tag != kind.tag:
            loader = None  # its logbook speaks of the other kind of segment
        # A loader that died while writing left no whole text to wait for: do not wait for
        # its Qt lock (the next one of ours to take its turn gives it back).
        with qt_lock_held(kind, lock_file, skip=loader and loader.died_writing):
            try:
                segment = kind.attach()
            except FileNotFoundError:  # a Qt program removed it meanwhile
                raise nothing_loaded(key) from None
            try:
                yield Found(kind, segment.buf, loader)
            finally:
                kind.detach(segment)  # unmap, and leave the segment alone
    finally:
        if lock_file:
            lock_file.unlock(DATA_LOCK, step="unlock(), our half")


def last_loader(lock_file):
    """(Loader, its kind's tag) of the last load_shared.py under the key, as its logbook and
    its OWNER_LOCK tell; (None, None) if no loader of ours left a logbook. Call it under
    DATA_LOCK."""
    logbook = lock_file and lock_file.read_logbook()
    if not logbook:
        return None, None
    alive = lock_file.owner_alive()
    return Loader(logbook.pid, alive, not alive and logbook.state == "writing"), logbook.tag


def no_whole_text(loader, where):
    return Failure(f"load_shared.py (pid {loader.pid}) died while writing {where}; there is "
                   "no whole text to show")


def nothing_loaded(key):
    return Failure(f"nothing loaded under key {key!r}: "
                   "run load_shared.py first (Enter a text first)")


@contextlib.contextmanager
def qt_lock_held(kind, lock_file, skip=False):
    """sharedMem.lock(), Qt's half: hold the semaphore that a Qt program's lock() takes.

    If there is none, no Qt program holds one: go on without. A POSIX semaphore has no
    undo, and one left taken by a dead process would block Qt for ever: so, from our turn
    at it until we give it back, a stop signal waits for us (see
    shmcodec.watch_stop_signals); one that comes while we wait for the lock ends us at
    once, and one that comes while we hold it, as soon as we give it back.
    """
    try:
        qt_lock = None if skip else kind.open_qt_lock(lock_file)
    except FileNotFoundError:
        qt_lock = None
    if qt_lock is None:
        yield
        return
    shmcodec.watch_stop_signals()
    try:
        if qt_lock.acquire(give_up=shmcodec.stopped):
            try:
                yield
            finally:
                qt_lock.release()
    finally:
        qt_lock.close()
        shmcodec.end_watching_stop_signals()  # a stop that came ends us here


def made_but_not_written(found):
    """True for a segment of zeros that no loader of ours made (see read_text)."""
    buffer = found.buffer
    return (not found.loader and len(buffer) > 4 and not any(buffer[:4]) and
            buffer.tobytes().count(0) == len(buffer))  # copied only after a count of 0


def decoded(found):
    """QDataStream >> text, straight from the segment's memory."""
    try:
        text = shmcodec.decode_qstring(found.buffer)
    except shmcodec.QStringFormatError as error:
        raise Failure(f"segment {found.kind.label} ({len(found.buffer)} bytes) holds no "
                      f"QString: {error}") from None
    tell("QDataStream >> text", "a null QString" if text is None else
         f"{len(text)} characters, straight from the segment's memory")
    return text


# --- show_shared.py --hex: the segment, byte by byte ---------------------------------------

ROW = 16  # bytes a row: 8 UTF-16 code units


def show_bytes(key, rows):
    """Print what is in the segment; raise Failure if it holds no whole QString."""
    with attached(key) as found:  # copy what we show, and check it, under the locks
        size, kind, loader = len(found.buffer), found.kind, found.loader
        try:
            span, problem = shmcodec.qstring_span(found.buffer) or (4, 4), None  # null: none
        except shmcodec.QStringFormatError as error:
            span, problem = None, str(error)
        data = bytes(found.buffer[:size if rows is None else 12 + rows * ROW])
        details = where_it_is(kind, size)
    path = shmcodec.lock_path(key)
    details.append(("lock file", path if path and os.path.exists(path) else
                    "none: no load_shared.py ran here"))
    if loader and loader.alive:
        owner = f"load_shared.py pid {loader.pid}, alive"
    elif loader:
        owner = f"load_shared.py pid {loader.pid}, gone (it died; the segment is stale)"
        if loader.died_writing:
            problem = problem or f"load_shared.py (pid {loader.pid}) died while writing"
    else:
        owner = "no load_shared.py: another program (a Qt one?) made it"
    details += [("owner", owner), ("count", explain_count(data))]
    for label, value in details:
        print(f"{label:<10} {value}")
    if problem:  # the count cannot be trusted: show every byte, and no characters
        print_rows(data, 0, size, rows, characters=False)
        raise Failure(f"segment {kind.label} holds no whole QString: {problem}")
    print_rows(data, *span, rows, characters=True)
    if size > span[1]:
        print(f"{size - span[1]} bytes after the text, which a reader ignores")


def where_it_is(kind, size):
    """(label, value) rows that say where the segment is: where ls or ipcs finds it."""
    if kind.tag == shmcodec.Posix.tag:
        where = f" = /dev/shm/{kind.key}" if sys.platform.startswith("linux") else ""
        return [("segment", f"{kind.label}{where}, {size} bytes")]
    shmid = kind.shmid()
    status = shmcodec.shm_status(shmid)
    maker = f"pid {status.cpid} ({'alive' if pid_alive(status.cpid) else 'gone'})"
    return [("segment", f"{kind.label}, {size} bytes: shmid {shmid}, IPC key "
                        f"0x{status.ipc_key & 0xFFFF_FFFF:08x} (ipcs -m lists it)"),
            ("key file", kind.key_file.path),
            ("attached", f"{status.nattch} process{'es' if status.nattch > 1 else ''}, "
                         f"this one included; made by {maker}")]


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        pass
    return True


def explain_count(data):
    """What the byte-count prefix at the start of data says."""
    count = int.from_bytes(data[:4], "big")
    if len(data) < 4:
        return f"{data.hex() or '(none)'}: cut short, a count takes 4 bytes"
    if count == shmcodec.NULL_COUNT:
        return f"{data[:4].hex()} = a null QString: no text at all"
    if count == shmcodec.LARGE_COUNT and len(data) >= 12:
        count = int.from_bytes(data[4:12], "big", signed=True)
        return (f"{data[:4].hex()} {data[4:12].hex()} = Qt 6.7+ large-size form: "
                f"{count} bytes = {count / 2:g} UTF-16 code units")
    return f"{data[:4].hex()} = {count} bytes = {count / 2:g} UTF-16 code units"


def print_rows(data, start, end, rows, characters):
    """Rows of offset, 16 bytes as 8 code units, and the characters they encode.

    data holds the first bytes of the segment; the rows cover offsets start to end, or
    the first rows of them (None: all).
    """
    shown = data[start:end if rows is None else min(end, start + rows * ROW)]
    where = {}  # offset -> the character that starts there (a surrogate pair is one)
    if characters:
        offset = start
        for char in str(shown[:len(shown) // 2 * 2], "utf-16-be", "surrogatepass"):
            where[offset] = visible(char)
            offset += 4 if ord(char) > 0xFFFF else 2
    for row in range(start, start + len(shown), ROW):
        chunk = shown[row - start:row - start + ROW]
        units = " ".join(chunk[i:i + 2].hex() for i in range(0, len(chunk), 2))
        text = "".join(where.get(row + i, "") for i in range(0, len(chunk), 2))
        print(f"{row:08x}  {units:<39}  {text}".rstrip())
    left_out = rows_for(end - start) - rows_for(len(shown))
    if left_out > 0:
        print(f"... {left_out} more rows (--hex=all shows them)")


def rows_for(byte_count):
    return (byte_count + ROW - 1) // ROW


def visible(char):
    """A character as it can be seen: control characters and lone surrogates escaped."""
    if char.isprintable() or char == " ":
        return char
    return ascii(char)[1:-1]  # \n, \x00, \ud800 ...


if __name__ == "__main__":
    sys.exit(main())
