#!/usr/bin/env python3
"""SharedMemoryLoad in Python: put a text into shared memory for show_shared.py to show.

The loader owns the segment: POSIX shared memory has no count of attached processes, so
the segment lives exactly as long as this program holds it, and is removed when it quits.

exit status: 0 released cleanly (end of input, Ctrl-C, SIGTERM, SIGHUP),
             1 failed (key held by another loader, segment not ours, no memory, ...),
             2 bad usage
"""

import signal

# Until this program owns anything, Ctrl-C may simply end it: no traceback, nothing left.
signal.signal(signal.SIGINT, signal.SIG_DFL)

import argparse  # noqa: E402  (after the line above, so that Ctrl-C is quiet while importing)
import os  # noqa: E402
import sys  # noqa: E402

import shmcodec  # noqa: E402
from shmcodec import DATA_LOCK, OWNER_LOCK  # noqa: E402

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Failure(Exception):
    """A runtime failure: its message is the one line we print before exiting 1."""


def parse_args():
    parser = argparse.ArgumentParser(
        description="Load a text into the shared-memory segment /KEY, in the bytes Qt's "
                    "QDataStream writes, and hold it there until you quit.",
        epilog="Without TEXT, each line you type replaces the text; Ctrl-D or Ctrl-C quits. "
               "Exit status: 0 released cleanly, 1 failed, 2 bad usage.")
    parser.add_argument("text", nargs="?", metavar="TEXT",
                        help="load TEXT and hold it until Ctrl-C, SIGTERM or SIGHUP; "
                             "'-' loads all of standard input (UTF-8) less one final newline")
    parser.add_argument("--key", default=shmcodec.DEFAULT_KEY,
                        help="segment key; the segment is /KEY (default: %(default)s)")
    parser.add_argument("--replace", action="store_true",
                        help="take over a segment /KEY that load_shared.py did not make "
                             "(one left by a Qt program, say)")
    args = parser.parse_args()
    problem = shmcodec.key_problem(args.key)
    if problem:
        parser.error(problem)
    if args.text is not None and args.text != "-" and not is_utf8(args.text):
        parser.error("TEXT is not valid UTF-8")
    return args


def is_utf8(text):
    # Python hands undecodable bytes of argv over as lone surrogates.
    return text.isascii() or not any("\ud800" <= c <= "\udfff" for c in text)


def read_stdin():
    """All of standard input as text, less one final newline."""
    data = sys.stdin.buffer.read()
    end = len(data) - 1 if data.endswith(b"\n") else len(data)
    try:
        return str(memoryview(data)[:end], "utf-8")  # a view: no copy of a large input
    except UnicodeDecodeError as error:
        raise Failure(f"standard input is not valid UTF-8 (byte {error.start})") from None


def stop(signum, frame):
    """Ctrl-C, SIGTERM and SIGHUP all raise one KeyboardInterrupt, handled in main().

    Any later signal is ignored, so that nothing cuts short the release that follows.
    """
    for each in STOP_SIGNALS:
        signal.signal(each, signal.SIG_IGN)
    raise KeyboardInterrupt


def become_owner(lock_fd, key, replace):
    """Take the key's OWNER_LOCK for good, and clear away a segment left by a dead loader."""
    # DATA_LOCK first: show_shared.py probes OWNER_LOCK only under DATA_LOCK, so a probe
    # can never make us believe another loader is alive.
    shmcodec.lock(lock_fd, DATA_LOCK, exclusive=True)
    try:
        logbook = shmcodec.read_logbook(lock_fd)
        if not shmcodec.lock(lock_fd, OWNER_LOCK, exclusive=True, wait=False):
            pid = f" (pid {logbook[0]})" if logbook else ""
            raise Failure(f"another load_shared.py{pid} holds key {key!r}; stop it first")
        if segment_exists(key):
            # The OWNER_LOCK was free, so nobody alive owns this segment.
            if logbook:
                say(f"replacing /{key}, left behind by load_shared.py (pid {logbook[0]}), "
                    "which is gone")
            elif replace:
                say(f"--replace: taking over /{key}")
            else:
                raise Failure(f"segment /{key} exists but load_shared.py did not make it "
                              "(a Qt program's?); use --replace to take it over")
            shmcodec.unlink_segment(key)
        shmcodec.write_logbook(lock_fd, "")
    finally:
        shmcodec.unlock(lock_fd, DATA_LOCK)


def segment_exists(key):
    try:
        shmcodec.attach_segment(key).close()
    except FileNotFoundError:
        return False
    except ValueError:  # a 0-byte segment exists, but cannot be mapped
        pass
    return True


def load(lock_fd, key, text, replacing):
    """Write text into a new segment /key, under the lock: QSharedMemory::create() + memcpy."""
    prefix, payload = shmcodec.qstring_parts(text)  # QDataStream << text, before locking
    size = len(prefix) + len(payload)
    shmcodec.lock(lock_fd, DATA_LOCK, exclusive=True)  # sharedMem.lock()
    try:
        # The logbook says "writing" before the segment exists and "loaded" once it is
        # whole, so a crash at any point leaves a state that the next run can read.
        shmcodec.write_logbook(lock_fd, "writing")
        if replacing:
            # A segment has a fixed size: a new text needs a new segment.
            try:
                shmcodec.unlink_segment(key)
            except FileNotFoundError:  # removed by hand meanwhile
                pass
        try:
            segment = shmcodec.create_segment(key, size)  # sharedMem.create(size)
        except FileExistsError:
            raise Failure(f"segment /{key} was made meanwhile by another program") from None
        except OSError as error:
            raise Failure(f"cannot make a {size}-byte segment /{key}: {error.strerror}") from None
        try:
            segment.buf[:len(prefix)] = prefix  # memcpy(to, from, size)
            segment.buf[len(prefix):size] = payload
        finally:
            segment.close()  # we keep no mapping: the name keeps the segment alive
        shmcodec.write_logbook(lock_fd, "loaded")
    finally:
        shmcodec.unlock(lock_fd, DATA_LOCK)  # sharedMem.unlock()
    report(f"Loaded {size} bytes into /{key}")


def release(lock_fd, key):
    """Remove the segment if the logbook says it is ours, then empty the logbook."""
    for each in STOP_SIGNALS:  # nothing may interrupt this
        signal.signal(each, signal.SIG_IGN)
    shmcodec.lock(lock_fd, DATA_LOCK, exclusive=True)
    logbook = shmcodec.read_logbook(lock_fd)
    if logbook and logbook[0] == os.getpid():
        try:
            shmcodec.unlink_segment(key)
        except FileNotFoundError:
            pass
        shmcodec.write_logbook(lock_fd, "")
    shmcodec.unlock(lock_fd, DATA_LOCK)


def texts_from_terminal(key):
    """Each line typed (or piped) in is a new text, like clicking Load again."""
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            say(f"Text for /{key} (Ctrl-D quits): ", end="")
        line = sys.stdin.buffer.readline()
        if not line:
            return
        try:
            yield line.rstrip(b"\n").decode("utf-8")
        except UnicodeDecodeError:
            say("that line is not valid UTF-8; the text stays as it was")


def say(message, end="\n"):
    """A message for the person at the terminal: stderr, so stdout stays clean."""
    print(message, end=end, file=sys.stderr, flush=True)


def report(line):
    """A result line on stdout, flushed at once so a script that waits for it sees it."""
    try:
        print(line, flush=True)
    except OSError:
        # Nobody reads our stdout any more (a closed pipe or terminal). Keep serving the
        # segment, and send stdout to /dev/null so that exiting does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main():
    args = parse_args()
    key = args.key
    try:
        lock_fd = shmcodec.open_lock_file(key)
    except OSError as error:
        say(f"load_shared.py: {error}")
        return 1

    # From here on Ctrl-C, kill and a closed terminal all end in the `finally` below.
    for each in STOP_SIGNALS:
        signal.signal(each, stop)
    try:
        text = read_stdin() if args.text == "-" else args.text
        become_owner(lock_fd, key, args.replace)
        if text is not None:
            load(lock_fd, key, text, replacing=False)
            say(f"holding /{key} until Ctrl-C, SIGTERM or SIGHUP")
            while True:
                signal.pause()
        for number, line in enumerate(texts_from_terminal(key)):
            load(lock_fd, key, line, replacing=number > 0)
    except KeyboardInterrupt:
        pass
    except (Failure, OSError) as failure:
        say(f"load_shared.py: {failure}")
        return 1
    finally:
        release(lock_fd, key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
