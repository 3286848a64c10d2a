#!/usr/bin/env python3
"""ShowSharedMem in Python: print the text under KEY as Qt's QDataStream reads it, from the
POSIX segment /KEY, else from Qt's System V segment for KEY, under Qt's lock and ours."""
import argparse
import os
import signal
import sys
import time

import shmcodec
from shmcodec import QSharedMemory, QStringFormatError, decode_qstring, warn

EXIT_STATUS = """exit status:
  0  shown (--watch: until Ctrl-C or SIGTERM)
  1  nothing to show (nothing loaded, a loader died while writing, another user's segment,
     a corrupt segment, not enough memory...), or the text could not be written out
  2  bad usage
  130  stopped (Ctrl-C, SIGTERM or SIGHUP)"""
ROW = 16  # bytes a --hex row: 8 UTF-16 code units


class Failure(Exception):
    """Nothing to show: the message is the one line we say."""


def main():
    args = command_line()
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # show_shared.py | head: end quietly
    shmcodec.fill_standard_fds()
    shmcodec.stop_like_ctrl_c()
    try:
        if args.watch:
            return watch(args)
        shown, problem, loader, _ = read_under_lock(args.key, args.hex)
        if loader and not loader.alive:
            warn(f"note: load_shared.py (pid {loader.pid}), which loaded this text, is gone; "
                 "the next load_shared.py replaces it")
        write_out(shown, args.end)
        if problem:
            raise Failure(problem)
    except (Failure, OSError, MemoryError) as failure:  # a MemoryError has no message
        warn(shmcodec.one_line(failure) or "not enough memory to decode the text")
        return 1
    return 0


def watch(args):
    """--watch: the text, then each new one as soon as a loader puts it under the key, until
    Ctrl-C. A new text is a new segment: its name is looked at ten times a second, with no
    lock, and the text read under the lock only when it changed."""
    memories = (QSharedMemory(QSharedMemory.platformSafeKey(args.key)), QSharedMemory(args.key))
    seen = said = last_pid = None
    try:
        while True:
            now = next(filter(None, (memory.segmentId() for memory in memories)), "")
            if now == seen:
                time.sleep(0.1)
                continue
            try:
                shown, problem, loader, seen = read_under_lock(args.key, args.hex)
            except (Failure, OSError, MemoryError) as failure:
                seen, why = now, shmcodec.one_line(failure) or "not enough memory to decode"
                if last_pid and not now:
                    why, last_pid = f"load_shared.py (pid {last_pid}) quit; {why}", None
                if why != said:  # once
                    warn(why)
                    said = why
                continue
            if loader and loader.pid != last_pid and (last_pid or said):
                warn(f"a new load_shared.py (pid {loader.pid}) loads under key {args.key!r}")
            last_pid, said = loader and loader.pid, problem
            write_out(shown, args.end)
            if problem:  # --hex of a corrupt segment
                warn(problem)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the end of watching, not a failure
        return 0


def read_under_lock(key, hex_rows):
    """The article's slot, attach() to detach(): what to show, what is wrong, our loader,
    and the segment's segmentId()."""
    for _ in range(10):
        memory = attach(key)  # if (!sharedMem.attach()) "Enter a text first"
        if not memory.lock():  # sharedMem.lock()
            memory.detach()
            raise Failure(memory.errorString())
        label = memory.nativeKey() if memory.key() == "" else f"{key} (System V)"
        data = memory.constData()  # buffer.setData(sharedMem.constData(), sharedMem.size())
        try:
            loader, seen = last_loader(memory, label), memory.segmentId()  # both locked
            if hex_rows is not None:  # --hex shows a corrupt segment too
                return (*show_bytes(label, data, hex_rows), loader, seen)
            # All zeros (no loader of ours leaves that): a Qt writer between create() and lock().
            if loader or len(data) <= 4 or any(data[:4]) or bytes(data).count(0) < len(data):
                text = decode_qstring(data)  # in >> text
                shmcodec.tell("QDataStream >> text", f"{len(text or '')} characters, no copy")
                return text or "", None, loader, seen  # a null QString shows as empty
        except QStringFormatError as error:
            raise Failure(f"segment {label} ({len(data)} bytes) holds no QString: {error}")
        finally:
            memory.unlock()  # sharedMem.unlock()
            memory.detach()  # sharedMem.detach(): a reader's never removes the segment
        time.sleep(0.1)
    raise Failure(f"the segment under key {key!r} was made but not written yet "
                  "(a Qt program between create() and lock())")


def attach(key):
    """A QSharedMemory attached read-only to /KEY, else to KEY's System V segment; or Failure."""
    found = None
    for memory in (QSharedMemory(QSharedMemory.platformSafeKey(key)), QSharedMemory(key)):
        if memory.nativeKey() and memory.attach(QSharedMemory.AccessMode.ReadOnly):
            return memory
        if memory.error() not in (QSharedMemory.SharedMemoryError.NotFound,
                                  QSharedMemory.SharedMemoryError.KeyError) and not found:
            found = memory.errorString()  # another user's segment, say
    raise Failure(found or f"nothing loaded under key {key!r}: "
                  "run load_shared.py first (Enter a text first)")


def last_loader(memory, label):
    """Our loader that made this segment, if any; Failure if it died while writing."""
    loader = memory.lastLoader()  # under the lock: it is not writing now
    if loader and loader.kind != ("posix" if memory.key() == "" else "sysv"):
        return None  # its logbook speaks of the other kind of segment
    if loader and loader.writing:
        raise Failure(f"load_shared.py (pid {loader.pid}) died while writing {label}; "
                      "there is no whole text to show")
    return loader


def write_out(text, end):
    """text and end on stdout, every byte (after a short write, the rest), or Failure."""
    data = text.encode(sys.stdout.encoding or "utf-8", "backslashreplace")  # lone surrogates
    try:
        for part in (memoryview(data), memoryview(end)):  # no copy of text + end
            while part:
                part = part[os.write(sys.stdout.fileno(), part):]
    except OSError as error:
        raise Failure(f"cannot write the text out: {error.strerror}")


def show_bytes(label, data, rows):
    """--hex: the segment, byte by byte, and what is wrong with it (None: nothing)."""
    try:
        start, count = shmcodec.qstring_header(data, whole=True)
        end, problem = start + (count or 0), None
        says = f"{data[:start].hex(' ', 4)} = " + ("a null QString: no text at all" if count is
               None else f"{'Qt 6.7+ large-size form: ' * (start == 12)}{count} bytes = "
               f"{count // 2} UTF-16 code units")
    except QStringFormatError as error:
        start, end, problem = 0, len(data), f"segment {label} holds no whole QString: {error}"
        says = f"{bytes(data[:4]).hex() or '(none)'}: {error}"
    shown = bytes(data[start:min(end, start + rows * ROW)])  # copied under the lock
    chars = []  # for each code unit: the character that starts there, or ""
    for char in "" if problem else str(shown, "utf-16-be", "surrogatepass"):
        chars += [char if char.isprintable() else ascii(char)[1:-1]] + [""] * (ord(char) > 0xFFFF)
    lines = [f"segment    {label}, {len(data)} bytes", f"count      {says}"]
    for row in range(0, len(shown), ROW):
        units, text = shown[row:row + ROW].hex(" ", -2), "".join(chars[row // 2:row // 2 + 8])
        lines.append(f"{start + row:08x}  {units:<39}  {text}".rstrip())
    if (more := -(-(end - start) // ROW) - rows) > 0:  # a last partial row counts
        lines.append(f"... {more} more rows (--hex=all shows them)")
    if len(data) > end:
        lines.append(f"{len(data) - end} bytes after the text, which a reader ignores")
    return "\n".join(lines), problem


def command_line():
    parser = shmcodec.ArgumentParser(description=__doc__, epilog=EXIT_STATUS,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--key", default="MySharedMemory", help="the segment's key "
                        "(default: %(default)s)")
    parser.add_argument("--hex", nargs="?", const="16", metavar="ROWS|all", help="show the "
                        "segment's bytes instead (16 rows, or ROWS, or all), even if corrupt")
    parser.add_argument("--watch", action="store_true", help="show the text, then each new "
                        "one as soon as it is loaded, until Ctrl-C (exit status 0)")
    parser.add_argument("-0", "--null", dest="end", action="store_const", const=b"\0",
                        default=b"\n", help="end each text with a NUL, not a newline, as "
                        "find -print0 does: with --watch, a text may hold newlines")
    parser.add_argument("--verbose", action="store_true", help="tell each step on stderr")
    args = parser.parse_args()
    shmcodec.verbose = args.verbose
    if args.hex not in (None, "all") and not (args.hex.isascii() and args.hex.isdigit()):
        parser.error(f"--hex={args.hex}: give a number of rows, or all")
    if problem := shmcodec.key_problem(args.key):
        parser.error(problem)
    args.hex = sys.maxsize if args.hex == "all" else args.hex and int(args.hex)  # None: no --hex
    return args


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM or SIGHUP (see stop_like_ctrl_c)
        sys.exit(130)
