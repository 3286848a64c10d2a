#!/usr/bin/env python3
"""SharedMemoryLoad in Python: load TEXT (or each line typed) into shared memory under KEY,
in the bytes that Qt's QDataStream writes, for show_shared.py (or a Qt program) to read."""
import argparse
import contextlib
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
    missed, pending = False, args.text is not None  # pending: a stop now loses the text
    try:
        if args.text == "-" and "--" not in sys.argv[1:]:  # before we own anything
            data = open(0, "rb", closefd=False).read()  # fd 0: sys.stdin may be None
            args.text = str(memoryview(data)[:len(data) - data.endswith(b"\n")], "utf-8")
        shmcodec.fill_standard_fds()
        if not memory.own(args.replace):  # ours: one loader per key
            warn(memory.errorString())
            return 1
        for text in typed_lines(memory, label) if args.text is None else [args.text]:
            pending = True
            try:  # QDataStream out; out << text: a count, then the code units
                parts = qstring_parts(text if isinstance(text, str) else text.decode())
            except MemoryError:
                why = "not enough memory for the text"
            except UnicodeDecodeError as error:
                why = f"the text is not valid UTF-8 (byte {error.start})"
            else:  # create(size), lock(), memcpy(), unlock(): one call, made beside the old text
                if memory.load(*parts):
                    pending = False  # before we say so: a stop right after costs nothing
                    with contextlib.suppress(OSError):  # nobody may read our stdout any more
                        os.write(1, f"Loaded {sum(map(len, parts))} bytes into {label}\n".encode())
                    continue
                why = memory.errorString()
            if not memory.isAttached():  # no old text to keep: we fail
                warn(why)
                return 1
            warn(f"that line was not loaded: {why}; the old text stays")
            pending, missed = False, True
        if args.text is not None:
            print(f"holding {label} until Ctrl-C, SIGTERM or SIGHUP", file=sys.stderr)
            while not select.select([], [], [], 1)[0]:  # for ever: idle, as between lines
                memory.recover()
    except KeyboardInterrupt:
        memory.detach(wait=False)  # told to stop: wait for nobody
        if pending:
            warn(f"stopped before the text was loaded under key {args.key!r}")
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


def typed_lines(memory, label):
    interactive, unfinished, chunk = os.isatty(0), bytearray(), None
    while chunk != b"":  # b"": the end of input
        if interactive:
            print(f"Text for {label} (Ctrl-D quits): ", end="", file=sys.stderr, flush=True)
        while not select.select([0], [], [], 1)[0]:  # idle: if one of ours died inside Qt's
            memory.recover()  # lock, give it back, so that a Qt program waiting goes on
        unfinished += (chunk := os.read(0, 1 << 20))
        if b"\n" in chunk:  # only the new bytes are searched: linear in a long line
            *lines, unfinished = unfinished.split(b"\n")
            yield from lines  # as bytes: decoded where a failure can be told
    print(end="\n" if interactive else "", file=sys.stderr)
    yield from [unfinished] if unfinished else []  # a last line without its newline


def command_line():
    parser = shmcodec.ArgumentParser(description=__doc__, epilog=EXIT_STATUS,
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
    if problem or args.text and any("\ud800" <= char <= "\udfff" for char in args.text):
        parser.error(problem or "TEXT is not valid UTF-8")
    return args


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # stopped before it began: nothing to release
        sys.exit(130)
