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

import signal

# Ctrl-C, or a reader that stops reading (show_shared.py | head), ends us at once and
# quietly, like any Unix filter: the kernel releases all we hold, but for Qt's lock (below).
signal.signal(signal.SIGINT, signal.SIG_DFL)
signal.signal(signal.SIGPIPE, signal.SIG_DFL)

import contextlib  # noqa: E402  (after the lines above, so that Ctrl-C is quiet while importing)
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import shmcodec  # noqa: E402
from shmcodec import DATA_LOCK, tell  # noqa: E402


class Failure(Exception):
    """Nothing to show: its message is the one line we print before exiting 1."""


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
        print(f"show_shared.py: {shmcodec.one_line(failure)}", file=sys.stderr)
        return 1
    except MemoryError:
        print("show_shared.py: not enough memory to decode the text", file=sys.stderr)
        return 1
    return 0


class NotWrittenYet(Exception):
    """A segment of zeros that no loader of ours made: a Qt writer between its create()
    and its lock() (see the README, "The dance on one page")."""


def read_text(key):
    def decode(kind, buffer, logbook, alive):
        dead_loader = logbook if logbook and not alive else None
        if dead_loader and dead_loader.state != "loaded":  # its logbook says "writing"
            raise Failure(f"load_shared.py (pid {dead_loader.pid}) died while writing "
                          f"{kind.name}; there is no whole text to show")
        if not logbook and len(buffer) > 4 and not any(buffer[:4]) and \
                buffer.tobytes().count(0) == len(buffer):  # copied only after a count of 0
            raise NotWrittenYet
        try:
            text = shmcodec.decode_qstring(buffer)
            tell("QDataStream >> text", "a null QString" if text is None else
                 f"{len(text)} characters, straight from the segment's memory")
            return text, dead_loader
        except shmcodec.QStringFormatError as error:
            raise Failure(f"segment {kind.name} ({len(buffer)} bytes) holds no QString: "
                          f"{error}") from None

    for _ in range(10):  # give a Qt writer a second to write what it created
        try:
            text, dead_loader = read_segment(key, decode)
            break
        except NotWrittenYet:
            time.sleep(0.1)
    else:
        raise Failure(f"the segment under key {key!r} was made but not written yet (a Qt "
                      "program between create() and lock(); see README, \"The dance on one "
                      "page\")")
    if dead_loader:
        print(f"show_shared.py: note: load_shared.py (pid {dead_loader.pid}), which loaded "
              "this text, is gone; the next load_shared.py replaces it", file=sys.stderr)
    return text


def read_segment(key, read):
    """Return read(kind, the segment's memory, logbook, alive), run attached and locked.

    kind is the kind of segment found (shmcodec.Posix or shmcodec.SystemV); logbook is the
    last loader's (pid, state, kind) or None, and alive tells if that loader still lives.
    This is the original's lock(), attach(), constData(), detach() and unlock().
    """
    try:
        lock_file = shmcodec.LockFile(key, create=False)
    except FileNotFoundError:  # no loader of ours ran here: Qt's lock is all there is
        lock_file = None
    # Lock *before* attaching: a loader that replaces its text swaps in a new segment, and
    # the lock makes sure that we map the one that is whole, never one being written.
    if lock_file:
        lock_file.lock(DATA_LOCK, exclusive=False, step="lock(), our half")
    try:
        # The logbook names the last loader; its OWNER_LOCK tells if that loader lives.
        logbook = lock_file and lock_file.read_logbook()
        alive = logbook is not None and lock_file.owner_alive()
        died_writing = logbook and not alive and logbook.state == "writing"
        kind = shmcodec.find_segment(key)
        tell("attach(): which kind?", kind.name if kind else f"neither /{key} nor System V")
        if kind is None:
            if died_writing:  # it may have died before its segment even existed
                raise Failure(f"load_shared.py (pid {logbook.pid}) died while writing "
                              f"under key {key!r}; there is no whole text to show")
            raise nothing_loaded(key)
        theirs = shmcodec.other_users([kind])
        if theirs:
            raise Failure(f"{shmcodec.whose(theirs[0])}: it is theirs to show")
        if logbook and logbook.kind != kind.tag:
            logbook = died_writing = None  # it speaks of the other kind of segment
        # A loader that died while writing left no whole text: there is nothing to read
        # under Qt's lock (the next one of ours to take its turn gives it back).
        with qt_lock_held(kind, lock_file, skip=died_writing):
            try:
                segment = kind.attach()
            except FileNotFoundError:  # a Qt program removed it meanwhile
                raise nothing_loaded(key) from None
            try:
                return read(kind, segment.buf, logbook, alive)
            finally:
                kind.detach(segment)  # unmap, and leave the segment alone
    finally:
        if lock_file:
            lock_file.unlock(DATA_LOCK, step="unlock(), our half")


def nothing_loaded(key):
    return Failure(f"nothing loaded under key {key!r}: "
                   "run load_shared.py first (Enter a text first)")


@contextlib.contextmanager
def qt_lock_held(kind, lock_file, skip):
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


# --- show_shared.py --hex: the segment, byte by byte ---------------------------------------

ROW = 16  # bytes a row: 8 UTF-16 code units


def show_bytes(key, rows):
    """Print what is in the segment; raise Failure if it holds no whole QString."""
    def copy(kind, buffer, logbook, alive):  # copy what we show, and check it, under the lock
        try:
            span, problem = shmcodec.qstring_span(buffer) or (4, 4), None  # null: no units
        except shmcodec.QStringFormatError as error:
            span, problem = None, str(error)
        shown = len(buffer) if rows is None else 12 + rows * ROW
        return (kind, kind.describe(len(buffer)), bytes(buffer[:shown]), len(buffer), span,
                problem, logbook, alive)

    kind, details, data, size, span, problem, logbook, alive = read_segment(key, copy)
    path = shmcodec.lock_path(key)
    details.append(("lock file", path if path and os.path.exists(path) else
                    "none: no load_shared.py ran here"))
    if logbook and alive:
        owner = f"load_shared.py pid {logbook.pid}, alive"
    elif logbook:
        owner = f"load_shared.py pid {logbook.pid}, gone (it died; the segment is stale)"
        if logbook.state != "loaded":
            problem = problem or f"load_shared.py (pid {logbook.pid}) died while writing"
    else:
        owner = "no load_shared.py: another program (a Qt one?) made it"
    details += [("owner", owner), ("count", explain_count(data))]
    for label, value in details:
        print(f"{label:<10} {value}")
    if problem:  # the count cannot be trusted: show every byte, and no characters
        print_rows(data, 0, size, rows, characters=False)
        raise Failure(f"segment {kind.name} holds no whole QString: {problem}")
    print_rows(data, *span, rows, characters=True)
    if size > span[1]:
        print(f"{size - span[1]} bytes after the text, which a reader ignores")


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
