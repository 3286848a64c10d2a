#!/usr/bin/env python3
"""SharedMemoryLoad in Python: load a text into shared memory under KEY, in the bytes that
Qt's QDataStream writes, for show_shared.py (or a Qt program) to read.

With no TEXT, each line typed replaces the last, as clicking Load again does; Ctrl-D or
Ctrl-C quits. TEXT, or - for all of standard input (less one final newline), is held
until Ctrl-C, SIGTERM or SIGHUP. The loader owns its segment: when it quits, it removes
the segment and Qt's lock.
"""
import argparse
import os
import select
import sys

import shmcodec
from shmcodec import QSharedMemory, qstring_parts, warn

EXIT_STATUS = """exit status:
  0  released cleanly (end of input, Ctrl-C, SIGTERM, SIGHUP)
  1  failed (key held by another loader or user, a segment it did not make is in the way,
     no memory or no room for the text, stopped before its text was loaded...), or a typed
     line could not be loaded (the text before it stayed)
  2  bad usage
  130  stopped before it began"""


def main():
    args = command_line()
    # sharedMem.setKey("MySharedMemory"): the plain key is Qt's System V segment.
    memory = QSharedMemory(args.key if args.sysv else QSharedMemory.platformSafeKey(args.key))
    label = f"{args.key} (System V)" if args.sysv else f"/{args.key}"
    shmcodec.stop_like_ctrl_c()
    missed = False
    pending = None if args.text is None else "the text was not loaded"  # lost by a stop now
    try:
        if args.text == "-" and "--" not in sys.argv[1:]:  # before we own anything
            args.text = read_stdin()
        shmcodec.fill_standard_fds()
        if not memory.own(args.replace):  # ours: one loader per key
            warn(memory.errorString())
            return 1
        for text in texts(args, memory, label):
            pending = "the text was not loaded"
            try:  # QDataStream out; out << text: a count, then the code units
                parts = qstring_parts(text if isinstance(text, str) else text.decode())
            except MemoryError:
                why = "not enough memory for the text"
            except UnicodeDecodeError as error:
                why = f"the text is not valid UTF-8 (byte {error.start})"
            else:
                # sharedMem.create(size), lock(), memcpy(data(), ...), unlock(): in one
                # call, which makes the new segment beside the old one, kept if it fails.
                if memory.load(*parts):
                    pending = None  # before we say so: a stop right after costs nothing
                    report(f"Loaded {sum(map(len, parts))} bytes into {label}")
                    continue
                why = memory.errorString()
            if not memory.isAttached():  # no old text to keep: we fail
                warn(why)
                return 1
            warn(f"that line was not loaded: {why}; the old text stays")
            pending, missed = None, True
        if args.text is not None:
            print(f"holding {label} until Ctrl-C, SIGTERM or SIGHUP", file=sys.stderr)
            while True:
                idle(memory, [])
    except KeyboardInterrupt:
        memory.detach(wait=False)  # told to stop: wait for nobody
        if pending:
            warn(f"stopped before the text was loaded under key {args.key!r}; {pending}")
            return 1
    except OSError as error:  # standard input, say
        warn(shmcodec.one_line(error))
        return 1
    except UnicodeDecodeError as error:
        warn(f"standard input is not valid UTF-8 (byte {error.start})")
        return 1
    finally:
        memory.detach()  # the owner's detach removes its segment and Qt's lock
    return 1 if missed else 0


def read_stdin():
    """All of standard input as text, less one final newline."""
    with open(0, "rb", closefd=False) as stdin:  # fd 0: works even with no sys.stdin
        data = stdin.read()
    return str(memoryview(data)[:len(data) - data.endswith(b"\n")], "utf-8")  # no copy


def texts(args, memory, label):
    """The texts to load: TEXT (or standard input's), or each line typed."""
    if args.text is not None:
        yield args.text
    else:
        yield from typed_lines(memory, label)


def typed_lines(memory, label):
    """Each line read from standard input, as bytes, until its end. Lines are looked for
    in the new bytes only: linear in a long line."""
    interactive, unfinished = os.isatty(0), bytearray()
    while True:
        if interactive:
            print(f"Text for {label} (Ctrl-D quits): ", end="", file=sys.stderr, flush=True)
        while not idle(memory, [0]):
            pass
        chunk = os.read(0, 1 << 20)
        unfinished += chunk
        if b"\n" in chunk or not chunk and unfinished:
            *lines, rest = unfinished.split(b"\n") if chunk else (unfinished, b"")
            unfinished = bytearray(rest)
            yield from lines  # as bytes: decoded where a failure can be told
        if not chunk:
            if interactive:
                print(file=sys.stderr)
            return


def idle(memory, inputs):
    """Wait up to a second for inputs (True when one is ready). Meanwhile, give Qt's lock
    back if a process of ours died inside it, so that a Qt program waiting goes on."""
    if select.select(inputs, [], [], 1)[0]:
        return True
    memory.recover()
    return False


def report(line):
    """A result line on stdout, at once, for a script that waits for it."""
    try:
        print(line, flush=True)
    except OSError:  # nobody reads our stdout any more: keep serving the text
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def command_line():
    parser = shmcodec.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("text", nargs="?", metavar="TEXT | -", help="the text to load "
                        "(- for standard input; -- - for the text '-')")
    parser.add_argument("--key", default="MySharedMemory", help="the segment's key "
                        "(default: %(default)s)")
    parser.add_argument("--sysv", action="store_true", help="Qt's System V segment for KEY, "
                        "as the article's programs and every Qt 5 program use it "
                        "(QSharedMemory(\"KEY\")), instead of the POSIX segment /KEY of Qt 6's "
                        "platformSafeKey(\"KEY\"); 64-bit Linux only")
    parser.add_argument("--replace", action="store_true",
                        help="take over a segment that load_shared.py did not make")
    parser.add_argument("--verbose", action="store_true",
                        help="tell each step on stderr: the Qt call, and what does it here")
    args = parser.parse_args()
    shmcodec.verbose = args.verbose
    problem = shmcodec.key_problem(args.key, system_v=args.sysv)
    if problem:
        parser.error(problem)
    if args.text and any("\ud800" <= char <= "\udfff" for char in args.text):
        parser.error("TEXT is not valid UTF-8")
    return args


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # stopped before it began: nothing to release
        sys.exit(130)
