#!/usr/bin/env python3
"""usage: load_shared.py [--key KEY] [--replace] [TEXT | -]

SharedMemoryLoad in Python: load a text into the shared-memory segment /KEY, in the bytes
that Qt's QDataStream writes, for show_shared.py (or a Qt program) to read.

  (no TEXT)      ask for texts: each line replaces the last; Ctrl-D or Ctrl-C quits
  TEXT           load TEXT and hold it until Ctrl-C, SIGTERM or SIGHUP
                 (write -- TEXT for a text that starts with "-")
  -              the same with all of standard input (UTF-8), less one final newline
  --key KEY      the segment's key (default: MySharedMemory)
  --replace      take over a segment /KEY that load_shared.py did not make (a Qt one)
  -h, --help     show this help

The loader owns the segment: POSIX shared memory has no count of attached processes, so
the segment lives exactly as long as this program holds it, and goes when it quits.

exit status: 0 released cleanly (end of input, Ctrl-C, SIGTERM, SIGHUP),
             1 failed (key held by another loader, segment not ours, no memory, ...),
             2 bad usage
"""

import signal

# Until this program owns anything, Ctrl-C may simply end it: no traceback, nothing left.
signal.signal(signal.SIGINT, signal.SIG_DFL)

import os  # noqa: E402  (after the line above, so that Ctrl-C is quiet while importing)
import select  # noqa: E402
import sys  # noqa: E402

import shmcodec  # noqa: E402
from shmcodec import DATA_LOCK, OWNER_LOCK  # noqa: E402


class Failure(Exception):
    """A runtime failure: its message is the one line we print before exiting 1."""


def main():
    key, text, replace = read_command_line()
    lock_fd = None
    try:
        if text == "-":
            text = read_stdin()  # before we own anything: a Ctrl-C here just ends us
        # 1. The key's lock file, which show_shared.py (and any other loader) opens too.
        lock_fd = shmcodec.open_lock_file(key)
        # 2. From here on, Ctrl-C and kill are noted, and acted on when we next wait.
        stop_fd = watch_stop_signals()
        # 3. Own the key: one loader at a time, and clear away what a crashed one left.
        become_owner(lock_fd, key, replace)
        # 4. Load the text (each line typed replaces it), 5. and hold it until told to stop.
        if text is None:
            for number, line in enumerate(lines_until_stopped(key, stop_fd)):
                load(lock_fd, key, line, replacing=number > 0)
        else:
            load(lock_fd, key, text, replacing=False)
            say(f"holding /{key} until Ctrl-C, SIGTERM or SIGHUP")
            select.select([stop_fd], [], [])  # wait for a stop signal
    except (Failure, OSError) as failure:
        say(f"load_shared.py: {failure}")
        return 1
    finally:
        # 6. Release: remove our segment, whichever way we leave.
        if lock_fd is not None:
            release(lock_fd, key)
    return 0


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
        if shmcodec.segment_exists(key):
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
        shmcodec.write_logbook(lock_fd, "")  # a fresh start: no segment of ours yet
    finally:
        shmcodec.unlock(lock_fd, DATA_LOCK)


def load(lock_fd, key, text, replacing):
    """Write text into a new segment /key, under the lock: QSharedMemory::create() + memcpy."""
    # Serialize before we lock, so that readers wait only for the copy.
    prefix, payload = shmcodec.qstring_parts(text)  # QDataStream << text
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
    shmcodec.lock(lock_fd, DATA_LOCK, exclusive=True)
    logbook = shmcodec.read_logbook(lock_fd)
    if logbook and logbook[0] == os.getpid():
        try:
            shmcodec.unlink_segment(key)
        except FileNotFoundError:
            pass
        shmcodec.write_logbook(lock_fd, "")
    shmcodec.unlock(lock_fd, DATA_LOCK)


def read_command_line():
    key, options, operands = shmcodec.parse_command_line(__doc__, ["--replace"], 1)
    text = operands[0] if operands else None
    if text is not None and text != "-" and not is_utf8(text):
        shmcodec.usage_error("TEXT is not valid UTF-8")
    return key, text, options.get("--replace", False)


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


def watch_stop_signals():
    """Make Ctrl-C, SIGTERM and SIGHUP wake us where we wait, instead of stopping us mid-step.

    The self-pipe trick: a signal's only effect is a byte written to a pipe. We notice it
    when we next wait for input, so it never cuts a write or the release in half.
    Returns the pipe's read end, readable once a stop signal has come.
    """
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end)
    for each in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(each, lambda signum, frame: None)  # the byte in the pipe is enough
    return read_end


def lines_until_stopped(key, stop_fd):
    """Yield each line read from stdin (each is a new text, like clicking Load again)
    until the end of input or a stop signal."""
    interactive = os.isatty(0)
    unfinished = b""
    while True:
        if interactive:
            say(f"Text for /{key} (Ctrl-D quits): ", end="")
        ready, _, _ = select.select([0, stop_fd], [], [])
        if stop_fd in ready:
            break
        chunk = os.read(0, 1 << 16)
        if chunk:
            *lines, unfinished = (unfinished + chunk).split(b"\n")
        else:  # end of input; a last line without "\n" counts too
            lines, unfinished = [unfinished] if unfinished else [], b""
        for line in lines:
            try:
                yield line.decode("utf-8")
            except UnicodeDecodeError:
                say("that line is not valid UTF-8; the text stays as it was")
        if not chunk:
            break
    if interactive:
        say("")  # end the prompt's line


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


if __name__ == "__main__":
    sys.exit(main())
