#!/usr/bin/env python3
"""usage: show_shared.py [--key KEY]

ShowSharedMem in Python: print the text in the shared-memory segment /KEY that
load_shared.py (or a Qt program) wrote, read as Qt's QDataStream reads it.

  --key KEY      the segment's key (default: MySharedMemory)
  -h, --help     show this help

The viewer only reads: it never removes a segment, whose lifetime belongs to the loader.

exit status: 0 shown, 1 nothing to show (nothing loaded, corrupt segment, ...), 2 bad usage
"""

import signal

# Ctrl-C, or a reader that stops reading (show_shared.py | head), ends us at once and
# quietly, like any Unix filter: we hold nothing that the kernel does not release for us.
signal.signal(signal.SIGINT, signal.SIG_DFL)
signal.signal(signal.SIGPIPE, signal.SIG_DFL)

import sys  # noqa: E402  (after the lines above, so that Ctrl-C is quiet while importing)

import shmcodec  # noqa: E402
from shmcodec import DATA_LOCK  # noqa: E402


class Failure(Exception):
    """Nothing to show: its message is the one line we print before exiting 1."""


def read_text(key):
    """Attach, read and detach under the lock: QSharedMemory::attach(), lock(), >>, detach()."""
    lock_fd = shmcodec.open_lock_file(key)
    # Lock *before* attaching: a loader that replaces its text swaps in a new segment, and
    # the lock makes sure that we map the one that is whole, never one being written.
    shmcodec.lock(lock_fd, DATA_LOCK, exclusive=False)  # sharedMem.lock()
    try:
        dead_loader = check_loader(lock_fd, key)
        try:
            segment = shmcodec.attach_segment(key)  # sharedMem.attach()
        except FileNotFoundError:
            raise Failure(f"nothing loaded under key {key!r}: "
                          "run load_shared.py first (Enter a text first)") from None
        except ValueError:  # mmap refuses an empty file
            raise Failure(f"segment /{key} is empty (0 bytes): it holds no QString") from None
        try:
            text = shmcodec.decode_qstring(segment.buf)  # QDataStream >> text, from the segment
        except shmcodec.QStringFormatError as error:
            raise Failure(f"segment /{key} ({segment.size} bytes) holds no QString: "
                          f"{error}") from None
        finally:
            segment.close()  # sharedMem.detach(): unmap, and leave the segment alone
    finally:
        shmcodec.unlock(lock_fd, DATA_LOCK)  # sharedMem.unlock()
    if dead_loader:
        print(f"show_shared.py: note: load_shared.py (pid {dead_loader}), which loaded this "
              "text, is gone; the next load_shared.py replaces it", file=sys.stderr)
    return text


def check_loader(lock_fd, key):
    """Return the pid of the loader of this segment if it is dead; fail if it died mid-write.

    The lock file's logbook names the last loader; its OWNER_LOCK tells if it still lives.
    """
    logbook = shmcodec.read_logbook(lock_fd)
    if logbook is None or shmcodec.owner_alive(lock_fd):
        return None  # a live loader's segment, or none of ours (made by Qt, say)
    pid, state = logbook
    if state != "loaded":
        raise Failure(f"load_shared.py (pid {pid}) died while writing /{key}; "
                      "there is no whole text to show")
    return pid


def main():
    key, _, _ = shmcodec.parse_command_line(__doc__)
    try:
        text = read_text(key)
    except (Failure, OSError) as failure:
        print(f"show_shared.py: {failure}", file=sys.stderr)
        return 1
    # A QString may hold lone surrogates, which no encoding can write: print them escaped.
    sys.stdout.reconfigure(errors="backslashreplace")
    print("" if text is None else text)  # a null QString shows as empty, as in Qt
    return 0


if __name__ == "__main__":
    sys.exit(main())
