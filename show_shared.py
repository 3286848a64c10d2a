#!/usr/bin/env python3
"""ShowSharedMem in Python: print the text that load_shared.py (or a Qt program) holds
under KEY, read as Qt's QDataStream reads it: from the POSIX segment /KEY (Qt 6's
platformSafeKey("KEY")) if there is one, else from Qt's System V segment for KEY (the
article's QSharedMemory("KEY")). It only reads, under Qt's lock and ours, and never removes
a segment: its lifetime is the loader's.
"""
import argparse
import os
import signal
import sys
import time

import shmcodec
from shmcodec import QSharedMemory, QStringFormatError, decode_qstring, warn

EXIT_STATUS = """exit status:
  0  shown
  1  nothing to show (nothing loaded, a loader died while writing, another user's segment,
     corrupt segment, not enough memory...), or the text could not be written out
  2  bad usage
  130  stopped (Ctrl-C, SIGTERM or SIGHUP)"""


class Failure(Exception):
    """Nothing to show: the message is the one line we say."""


def main():
    args = command_line()
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # show_shared.py | head: end quietly
    shmcodec.fill_standard_fds()
    shmcodec.stop_like_ctrl_c()
    try:
        shown, problem, loader = read_under_lock(args.key, args.hex)
        if loader and not loader.alive:
            warn(f"note: load_shared.py (pid {loader.pid}), which loaded this text, is gone; "
                 "the next load_shared.py replaces it")
        write_out(shown)
        if problem:
            raise Failure(problem)
    except (Failure, OSError) as failure:
        warn(shmcodec.one_line(failure))
        return 1
    except MemoryError:
        warn("not enough memory to decode the text")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def read_under_lock(key, hex_rows):
    """The article's slot: attach(), lock(), read, unlock(), detach(). Returns what to show,
    what is wrong with it (--hex shows a corrupt segment too), and our loader, if any.
    A segment of zeros is a Qt writer between its create() and its lock(): wait a second."""
    for _ in range(10):
        memory = attach(key)  # if (!sharedMem.attach()) "Enter a text first"
        if not memory.lock():  # sharedMem.lock()
            memory.detach()
            raise Failure(memory.errorString())
        data = memory.constData()  # buffer.setData(sharedMem.constData(), sharedMem.size())
        try:
            loader = last_loader(memory)
            if hex_rows is not None:
                return (*show_bytes(memory, data, loader, hex_rows), loader)
            if loader or not is_unwritten(data):
                return read_text(memory, data), None, loader  # in >> text
        finally:
            memory.unlock()  # sharedMem.unlock()
            memory.detach()  # sharedMem.detach(): a reader's never removes the segment
        time.sleep(0.1)
    raise Failure(f"the segment under key {key!r} was made but not written yet "
                  "(a Qt program between create() and lock())")


def attach(key):
    """A QSharedMemory attached read-only to /KEY, else to Qt's System V segment for KEY
    (our own before another user's). Failure if there is neither."""
    found = None
    for memory in (QSharedMemory(QSharedMemory.platformSafeKey(key)), QSharedMemory(key)):
        if memory.nativeKey() and memory.attach(QSharedMemory.AccessMode.ReadOnly):
            return memory
        if memory.error() not in (QSharedMemory.SharedMemoryError.NotFound,
                                  QSharedMemory.SharedMemoryError.KeyError) and not found:
            found = memory.errorString()
    raise Failure(found or f"nothing loaded under key {key!r}: "
                  "run load_shared.py first (Enter a text first)")


def last_loader(memory):
    """The loader of ours that made this segment, if any (we hold the lock: it cannot
    write meanwhile); Failure if it died while writing: there may be half a text."""
    loader = memory.lastLoader()
    if loader and loader.kind != ("posix" if memory.key() == "" else "sysv"):
        return None  # its logbook speaks of the other kind of segment
    if loader and loader.writing:
        raise Failure(f"load_shared.py (pid {loader.pid}) died while writing "
                      f"{label(memory)}; there is no whole text to show")
    return loader


def label(memory):
    """How messages name the segment: /KEY, or KEY (System V)."""
    return memory.nativeKey() if memory.key() == "" else f"{memory.key()} (System V)"


def is_unwritten(data):
    """All zeros, which no loader of ours leaves: copied only after a count of 0."""
    return len(data) > 4 and not any(data[:4]) and bytes(data).count(0) == len(data)


def read_text(memory, data):
    try:
        text = decode_qstring(data)
    except QStringFormatError as error:
        raise Failure(f"segment {label(memory)} ({len(data)} bytes) holds no QString: "
                      f"{error}") from None
    shmcodec.tell("QDataStream >> text", "a null QString" if text is None else
                  f"{len(text)} characters, straight from the segment's memory")
    return "" if text is None else text  # a null QString shows as empty, as in Qt


def write_out(text):
    """Every byte of text and a newline to stdout, or Failure: a short write (after a stop
    and continue on a full pipe) is followed by the rest. Lone surrogates are escaped."""
    data = text.encode(sys.stdout.encoding or "utf-8", "backslashreplace")
    try:
        for part in (memoryview(data), memoryview(b"\n")):  # no copy of text + "\n"
            while part:
                part = part[os.write(sys.stdout.fileno(), part):]
    except OSError as error:
        raise Failure(f"cannot write the text out: {error.strerror}") from None


# --- show_shared.py --hex: the segment, byte by byte -------------------------------------

ROW = 16  # bytes a row: 8 UTF-16 code units


def show_bytes(memory, data, loader, rows):
    """What is in the segment, as text, and what is wrong with it (None: nothing)."""
    size = len(data)
    try:
        start, count = shmcodec.qstring_header(data, whole=True)
        end, problem = start + (count or 0), None
    except QStringFormatError as error:
        start, end, problem = 0, size, f"segment {label(memory)} holds no whole " \
                                       f"QString: {error}"
    shown = bytes(data[:size if rows == "all" else 12 + rows * ROW])  # copied under the lock
    try:
        path = shmcodec.lock_path(memory.key() or memory.nativeKey()[1:])
    except OSError:
        path = ""
    details = where_it_is(memory, size) + [
        ("lock file", path if os.path.exists(path) else "none: no load_shared.py ran here"),
        ("owner", "no load_shared.py: another program (a Qt one?) made it" if not loader else
         f"load_shared.py pid {loader.pid}, " + ("alive" if loader.alive else
                                                "gone (it died; the segment is stale)")),
        ("count", explain_count(shown))]
    lines = [f"{label:<10} {value}" for label, value in details]
    lines += hex_rows(shown, start, end, None if rows == "all" else rows, not problem)
    if size > end:
        lines.append(f"{size - end} bytes after the text, which a reader ignores")
    return "\n".join(lines), problem


def where_it_is(memory, size):
    """(label, value) rows that say where ls or ipcs finds the segment."""
    if memory.key() == "":
        return [("segment", f"{label(memory)} = /dev/shm{label(memory)}, "
                            f"{size} bytes")]
    shmid = shmcodec.SystemV(memory.key()).shmid()
    status = shmcodec.shm_status(shmid)
    maker = f"pid {status.cpid} ({'alive' if os.path.exists(f'/proc/{status.cpid}') else 'gone'})"
    return [("segment", f"{memory.key()} (System V), {size} bytes: shmid {shmid}, IPC key "
                        f"0x{status.ipc_key & 0xFFFF_FFFF:08x} (ipcs -m lists it)"),
            ("key file", memory.nativeKey()),
            ("attached", f"{status.nattch} process{'es' if status.nattch > 1 else ''}, this "
                         f"one included; made by {maker}")]


def explain_count(data):
    """What the count at the start of data says, as the codec reads it."""
    try:
        start, count = shmcodec.qstring_header(data)
    except QStringFormatError as error:
        return f"{data[:4].hex() or '(none)'}: {error}"
    prefix = data[:start].hex(" ", 4)
    if count is None:
        return f"{prefix} = a null QString: no text at all"
    form = "Qt 6.7+ large-size form: " if start == 12 else ""
    return f"{prefix} = {form}{count} bytes = {count // 2} UTF-16 code units"


def hex_rows(data, start, end, rows, characters):
    """Rows of offset, 16 bytes as 8 code units, and the characters they encode: from
    start to end, or the first rows of them (None: all)."""
    shown = data[start:end if rows is None else min(end, start + rows * ROW)]
    where, offset = {}, start  # offset -> the character that starts there
    for char in str(shown[:len(shown) // 2 * 2], "utf-16-be", "surrogatepass") \
            if characters else "":
        where[offset] = char if char.isprintable() or char == " " else ascii(char)[1:-1]
        offset += 4 if ord(char) > 0xFFFF else 2
    lines = []
    for row in range(start, start + len(shown), ROW):
        chunk = shown[row - start:row - start + ROW]
        units = " ".join(chunk[i:i + 2].hex() for i in range(0, len(chunk), 2))
        text = "".join(where.get(row + i, "") for i in range(0, len(chunk), 2))
        lines.append(f"{row:08x}  {units:<39}  {text}".rstrip())
    left_out = -(-(end - start) // ROW) - -(-len(shown) // ROW)
    if left_out > 0:
        lines.append(f"... {left_out} more rows (--hex=all shows them)")
    return lines


def rows_value(value):
    if value == "all":
        return value
    if not value.isascii() or not value.isdigit():
        raise argparse.ArgumentTypeError(f"--hex={value}: give a number of rows, or all")
    return int(value)


def command_line():
    parser = shmcodec.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--key", default="MySharedMemory", help="the segment's key "
                        "(default: %(default)s)")
    parser.add_argument("--hex", nargs="?", const="16", type=rows_value, metavar="ROWS|all",
                        help="instead of the text, show the segment: its kind, size, owner, "
                        "count, and 16 rows of code units (or ROWS, or all); also on a "
                        "corrupt segment, to see what is wrong")
    parser.add_argument("--verbose", action="store_true",
                        help="tell each step on stderr: the Qt call, and what does it here")
    args = parser.parse_args()
    shmcodec.verbose = args.verbose
    problem = shmcodec.key_problem(args.key)
    if problem:
        parser.error(problem)
    return args


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # stopped before it began: nothing to release
        sys.exit(130)
