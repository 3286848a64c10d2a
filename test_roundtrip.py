"""Tests: the codec against Qt's own bytes, then both scripts as real processes.

Run: python3 -m unittest -v test_roundtrip

Every cross-process test uses its own random key and its own TMPDIR (so its own lock
file), and removes its segment, lock file and processes even when it fails.
"""

import contextlib
import ctypes
import errno
import functools
import glob
import hashlib
import importlib.util
import json
import os
import random
import re
import resource
import select
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import types
import unittest
import unittest.mock

from multiprocessing.shared_memory import SharedMemory

import _posixshmem  # the C module behind SharedMemory
import shmcodec

libc = shmcodec.libc
HERE = os.path.dirname(os.path.abspath(__file__))
LOADER = os.path.join(HERE, "load_shared.py")
VIEWER = os.path.join(HERE, "show_shared.py")
TIMEOUT = 60  # seconds for any one step; generous, the machines are shared

# The scripts keep a stop signal that they inherit as ignored (nohup's SIGHUP), and the
# tests send them stop signals: so the processes that the tests start begin with each
# signal's default, even when this suite itself runs with one ignored (under nohup, or
# started with & by a shell without job control, which ignores SIGINT there).
for _signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    if signal.getsignal(_signum) == signal.SIG_IGN:
        signal.signal(_signum, signal.default_int_handler if _signum == signal.SIGINT
                      else signal.SIG_DFL)
needs_system_v = unittest.skipUnless(shmcodec.SYSTEM_V_HERE,
                                     "System V segments are used on 64-bit Linux only")
BIG = 32 << 20  # characters of a text that takes a viewer a while to read (64 MiB)
GETPID, GETVAL = 11, 12  # semctl(): the last pid to change a System V semaphore; its value

# What Qt 6.12's QDataStream << QString writes (../shared/reference/qt-facts.md).
QT_BYTES = {
    None: "ffffffff",
    "": "00000000",
    "hello": "0000000a00680065006c006c006f",
    "Grüße": "0000000a0047007200fc00df0065",
    "😀": "00000004d83dde00",
    "a\nb": "000000060061000a0062",
}


class CodecTest(unittest.TestCase):
    def test_qt_bytes_both_ways(self):
        for text, hex_bytes in QT_BYTES.items():
            with self.subTest(text=text):
                self.assertEqual(shmcodec.encode_qstring(text).hex(), hex_bytes)
                self.assertEqual(shmcodec.decode_qstring(bytes.fromhex(hex_bytes)), text)

    def test_null_and_empty_differ(self):
        self.assertIsNone(shmcodec.decode_qstring(b"\xff\xff\xff\xff"))
        self.assertEqual(shmcodec.decode_qstring(b"\0\0\0\0"), "")

    def test_astral_characters_become_surrogate_pairs(self):
        text = "a\U0001F600b\U00010348"
        data = shmcodec.encode_qstring(text)
        self.assertEqual(data[:4], (2 * 6).to_bytes(4, "big"))  # 6 code units
        self.assertEqual(data[6:10], bytes.fromhex("d83dde00"))
        self.assertEqual(shmcodec.decode_qstring(data), text)

    def test_lone_surrogates_round_trip(self):
        for text in ("\ud800", "x\udfffy", "\ude00\ud83d", "\udc80" * 3):
            with self.subTest(text=ascii(text)):
                data = shmcodec.encode_qstring(text)
                self.assertEqual(len(data), 4 + 2 * len(text))
                self.assertEqual(shmcodec.decode_qstring(data), text)

    def test_random_texts_round_trip(self):
        rng = random.Random(1)
        for _ in range(300):
            # ASCII, the BMP without surrogates, and the astral planes
            choices = [(0, 0x80), (0, 0xD800), (0xE000, 0x10000), (0x10000, 0x110000)]
            text = "".join(chr(rng.randrange(*rng.choice(choices)))
                           for _ in range(rng.randrange(40)))
            data = shmcodec.encode_qstring(text)
            self.assertEqual(data[4:], text.encode("utf-16-be"))
            self.assertEqual(int.from_bytes(data[:4], "big"), len(data) - 4)
            self.assertEqual(shmcodec.decode_qstring(data), text)

    def test_trailing_bytes_ignored_and_buffer_types(self):
        data = shmcodec.encode_qstring("hello") + b"\x00garbage"
        for buffer in (data, bytearray(data), memoryview(data)):
            self.assertEqual(shmcodec.decode_qstring(buffer), "hello")

    def test_large_size_form(self):
        # Qt 6.7+: a count of 0xFFFFFFFE or more is the marker, then a signed 64-bit count.
        self.assertEqual(shmcodec.count_prefix(0xFFFFFFFD).hex(), "fffffffd")
        self.assertEqual(shmcodec.count_prefix(0xFFFFFFFE).hex(), "fffffffe00000000fffffffe")
        self.assertEqual(shmcodec.count_prefix(1 << 40).hex(), "fffffffe0000010000000000")
        data = bytes.fromhex("fffffffe" "0000000000000004" "00680069") + b"tail"
        self.assertEqual(shmcodec.decode_qstring(data), "hi")
        self.assertIsNone(shmcodec.decode_qstring(bytes.fromhex("fffffffe" + "ff" * 8)))

    def test_malformed_input_says_what_is_wrong(self):
        cases = {
            "": "cut short", "00": "cut short", "000000": "cut short",
            "00000003616263": "odd byte count",
            "0000000a0068": "past the end",
            "fffffffe000000": "large-size count cut short",
            "fffffffe8000000000000000": "bad large-size count",
            "fffffffe0000000000000006" "0061": "past the end",
            "fffffffe0000000000000003" "000000": "odd byte count",
        }
        for hex_bytes, words in cases.items():
            with self.subTest(data=hex_bytes):
                with self.assertRaisesRegex(shmcodec.QStringFormatError, words):
                    shmcodec.decode_qstring(bytes.fromhex(hex_bytes))
        self.assertTrue(issubclass(shmcodec.QStringFormatError, ValueError))

    def test_random_bytes_raise_only_format_errors(self):
        rng = random.Random(2)
        for _ in range(3000):
            size = rng.randrange(16)
            data = bytes(rng.randrange(256) for _ in range(size))
            if rng.random() < 0.5 and size >= 4:  # make plausible counts common
                data = rng.randrange(size).to_bytes(4, "big") + data[4:]
            try:
                result = shmcodec.decode_qstring(data)
            except shmcodec.QStringFormatError:
                continue
            self.assertTrue(result is None or isinstance(result, str))

    def test_decoding_a_segment_leaves_no_view_behind(self):
        # A view left on the segment's buffer would make close() fail with BufferError.
        for data in (shmcodec.encode_qstring("hi"), b"\0\0\0\x09abc"):
            name = f"test_roundtrip-{os.getpid()}-view"
            segment = qt_posix_segment(name, len(data))
            try:
                segment.buf[:len(data)] = data
                try:
                    shmcodec.decode_qstring(segment.buf)
                except shmcodec.QStringFormatError:
                    pass
            finally:
                segment.close()
                shmcodec.Posix(name).remove()

    def test_key_rules(self):
        self.assertIsNone(shmcodec.key_problem("MySharedMemory"))
        self.assertIsNone(shmcodec.key_problem("k" * shmcodec.MAX_KEY_BYTES))
        for bad in ("", "a/b", "/a", "a\0b", "é", ".", "..", "a\nb", "sem.x",
                    "k" * (shmcodec.MAX_KEY_BYTES + 1)):
            with self.subTest(key=bad):
                self.assertIsNotNone(shmcodec.key_problem(bad))


class ProcessTestCase(unittest.TestCase):
    """Runs the scripts with a random key and a private TMPDIR, and cleans up after them."""

    def setUp(self):
        self.key = f"test_roundtrip-{os.getpid()}-{random.randrange(1 << 32):08x}"
        self.tmpdir = tempfile.mkdtemp(prefix="test_roundtrip-")
        self.env = dict(os.environ, TMPDIR=self.tmpdir, PYTHONWARNINGS="default",
                        TEST_ROUNDTRIP=f"{os.getpid()} {self.id()}")  # for tearDownModule
        self.env.pop("XDG_RUNTIME_DIR", None)  # lock files, too, in our TMPDIR
        self.processes = []  # every process the test starts, so that it can clean up after it
        self.system_v_before = set(system_v_objects())
        self.addCleanup(self.clean_up)

    def clean_up(self):
        # A prefix (strace, unshare) may leave its command running when it is killed: so the
        # children go too, found before their parents die, and are waited for as well.
        # (Only of those not reaped yet: their pids cannot have been taken by another.)
        descendants = [pid for process in self.processes if process.returncode is None
                       for pid in children(process.pid, descendants=True)]
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()
        for pid in descendants:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_gone(pid)
        for process in self.processes:
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream:
                    stream.close()
        # A killed loader (or Qt program) leaves its segment and Qt's semaphore behind.
        self.unlink_segment()
        for path in self.unfinished():
            os.unlink(path)
        libc.sem_unlink(f"/{self.key}".encode())
        for table, ident in self.system_v_left():
            remove_system_v(table, ident)
        shutil.rmtree(self.tmpdir)

    def segment_kind(self, sysv):
        """shmcodec's Posix or SystemV for our key, with Qt's key files in our TMPDIR."""
        return shmcodec_in(self.tmpdir, lambda: shmcodec.SystemV(self.key)) if sysv \
            else shmcodec.Posix(self.key)

    def system_v_left(self):
        """System V segments and semaphore sets made since the test began, by its processes.

        Only those: the machine is shared, and other users' objects are none of ours.
        """
        ours = {process.pid for process in self.processes} | {os.getpid()}
        return {(table, ident) for (table, ident), pids in system_v_objects().items()
                if (table, ident) not in self.system_v_before and pids & ours}

    def assert_nothing_left(self):
        """No segment (under the key, or the temporary name), no semaphore, no Qt key
        file: what a clean exit must leave."""
        self.assertEqual([name for name in os.listdir("/dev/shm") if self.key in name], [])
        self.assertEqual(self.system_v_left(), set())
        self.assertEqual([name for name in os.listdir(self.tmpdir) if name.startswith("qipc_")],
                         [])

    @property
    def lock_path(self):  # as the scripts see it, with our TMPDIR
        return os.path.join(self.tmpdir, f"qshm-{os.geteuid()}", f"qshm-{self.key}.lock")

    def logbook(self):
        try:
            with open(self.lock_path) as lock_file:
                return lock_file.read()
        except FileNotFoundError:
            return ""

    def kill_while_writing(self, *args):
        """Start a loader of 64 MiB and SIGKILL it while it writes (holding both locks): for
        System V, once its logbook says "writing" (before or after its segment exists: the
        viewer must say the same); for POSIX, while it fills its segment under the
        temporary name, which takes the key's name only once it is whole."""
        sysv = "--sysv" in args
        with tempfile.TemporaryFile() as source:
            source.write(b"x" * (64 << 20))
            source.seek(0)
            loader = self.start(*args, "-", stdin=source)

        def writing():
            return " writing " in self.logbook() if sysv else self.unfinished()
        deadline = time.monotonic() + TIMEOUT
        while not writing() and time.monotonic() < deadline:
            time.sleep(0.0005)
        loader.kill()
        loader.wait()
        self.assertTrue(writing() and (sysv or not self.segment_exists()), "the kill came too late")
        return loader

    def unfinished(self):
        """The segments that a loader makes beside the old one, under names of their own."""
        return glob.glob(f"/dev/shm/{glob.escape(self.key)}\x7f*")

    @property
    def segment_path(self):
        return "/dev/shm/" + self.key

    def unlink_segment(self):
        shmcodec.Posix(self.key).remove()

    def segment_exists(self):
        return shmcodec.Posix(self.key).users() is not None

    def start(self, *args, stdin=subprocess.DEVNULL, key=None, script=LOADER, preexec_fn=None,
              env=None, prefix=()):
        """Start a script in the background (after prefix: unshare, strace...); stdout and
        stderr are pipes."""
        return self.start_command(
            [*prefix, sys.executable, script, "--key", self.key if key is None else key, *args],
            stdin=stdin, preexec_fn=preexec_fn, env=env)

    def start_command(self, command, stdin=subprocess.DEVNULL, preexec_fn=None, env=None,
                      stdout=subprocess.PIPE, cwd=HERE):
        """Start command in the background, and clean up after it whatever happens."""
        process = subprocess.Popen(command, stdin=stdin, stdout=stdout,
                                   stderr=subprocess.PIPE, env=env or self.env, cwd=cwd,
                                   preexec_fn=preexec_fn)
        self.processes.append(process)
        return process

    def start_forced(self, patch, script, *args, env=None, **kwargs):
        """Start one of our scripts with a moment forced by patch (see FORCED)."""
        return self.start_command([sys.executable, "-c", FORCED, patch, script, "--key",
                                   self.key, *args], env=env, **kwargs)

    def lock_peer(self, action, *args, sysv=False, prefix=(), python=sys.executable):
        """Start LOCK_PEER for our key: a stand-in for a Qt program in lock()."""
        return self.start_command([*prefix, python, "-c", LOCK_PEER, "sysv" if sysv else "posix",
                                   self.key, action, *args], stdin=subprocess.PIPE)

    def hold_qt_lock(self, *options, sysv=False, prefix=(), python=sys.executable):
        """A stand-in Qt program inside Qt's lock for our key (see LOCK_PEER), once it is in.
        let_go() lets it out."""
        holder = self.lock_peer("hold", *options, sysv=sysv, prefix=prefix, python=python)
        self.assertEqual(self.wait_line(holder), "inside\n")
        return holder

    def let_go(self, holder):
        holder.stdin.write(b"\n")
        holder.stdin.flush()
        self.assertEqual(self.wait_line(holder), "out\n")

    def semaphore_value(self, sysv=False):
        """The value of Qt's lock for our key now (1: free, 0: taken), read without mapping
        it: a test that mapped it could be taken for a holder. glibc's POSIX semaphore
        keeps its value in the low half of its first word (little-endian, 64-bit)."""
        if sysv:
            key_file = self.segment_kind(sysv=True).lock_key_file.path
            semid = libc.semget(libc.ftok(key_file.encode(), ord("Q")), 1, 0)
            return shmcodec.c_call(libc.semctl(semid, 0, GETVAL, 0), key_file)
        with open(f"/dev/shm/sem.{self.key}", "rb") as semaphore:
            return int.from_bytes(semaphore.read(4), "little")

    @contextlib.contextmanager
    def one_at_a_time(self, sysv=False):
        """Watch Qt's lock for our key, every 5 ms: fail if its value ever rises above 1,
        which would let two processes in at once."""
        stop, seen = threading.Event(), []

        def sample():
            while not stop.is_set():
                try:
                    seen.append(self.semaphore_value(sysv))
                except OSError:  # not there (yet, or any more)
                    pass
                time.sleep(0.005)
        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            yield
        finally:
            stop.set()
            sampler.join()
        self.assertLessEqual(max(seen, default=0), 1, "Qt's lock let two processes in at once")

    def type_line(self, loader, text):
        """Type a line into an interactive load_shared.py."""
        loader.stdin.write(text.encode() + b"\n")
        loader.stdin.flush()

    def wait_line(self, process, timeout=TIMEOUT, stderr=False):
        """The next line on process's stdout (or stderr), or a failure if none comes in time."""
        stream = process.stderr if stderr else process.stdout
        line = b""
        deadline = time.monotonic() + timeout
        while not line.endswith(b"\n"):
            ready, _, _ = select.select([stream], [], [], deadline - time.monotonic())
            chunk = os.read(stream.fileno(), 1) if ready else b""
            if not chunk:
                self.fail(f"no line from {process.args}; exit {process.poll()}, stderr: "
                          f"{process.stderr.read().decode() if process.poll() is not None else ''}")
            line += chunk
        return line.decode()

    def start_typing(self, *args, text="first", prefix=()):
        """Start an interactive load_shared.py (a text a line), and load text with it."""
        loader = self.start(*args, stdin=subprocess.PIPE, prefix=prefix)
        loader.stdin.write(text.encode() + b"\n")
        loader.stdin.flush()
        self.assertRegex(self.wait_line(loader), "^Loaded ")
        return loader

    def start_loader(self, *args, **kwargs):
        """Start load_shared.py and wait until it has loaded its text."""
        loader = self.start(*args, **kwargs)
        self.assertRegex(self.wait_line(loader), r"^Loaded \d+ bytes into ")
        return loader

    def still_running(self, process, seconds=1.0):
        """True if process has neither exited nor printed a line within seconds."""
        return not select.select([process.stdout], [], [], seconds)[0] and process.poll() is None

    def finish(self, process, timeout=TIMEOUT):
        """Wait for process; return (exit status, stdout, stderr)."""
        if process.stdin and process.stdin.closed:
            process.stdin = None
        out, err = process.communicate(timeout=timeout)
        return process.returncode, out, err.decode()

    def run_script(self, *args, script=VIEWER, key=None, input=None, prefix=()):
        """Run a script to its end: (exit status, stdout, stderr)."""
        process = self.start(*args, script=script, key=key, prefix=prefix,
                             stdin=subprocess.PIPE if input else subprocess.DEVNULL)
        out, err = process.communicate(input, timeout=TIMEOUT)
        return process.returncode, out, err.decode()

    def show(self, *args, **kwargs):
        return self.run_script(*args, script=VIEWER, **kwargs)

    def assert_shows(self, text):
        status, out, err = self.show()
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out, text.encode() + b"\n")

    def stop(self, process, signum=signal.SIGTERM):
        """Stop a script with signum: it ends cleanly (exit 0); return its (stdout, stderr)."""
        process.send_signal(signum)
        status, out, err = self.finish(process)
        self.assertEqual(status, 0, err)
        return out, err

    def load_line(self, loader, text):
        """Type a line into an interactive load_shared.py, and wait until it has loaded it."""
        self.type_line(loader, text)
        self.assertRegex(self.wait_line(loader), "^Loaded ")

    def assert_failed(self, status, out, err, *words):
        """A script failed as it should: exit 1, nothing on stdout, one clear line."""
        self.assertEqual((status, out), (1, b""), err)
        self.assert_one_line(err, *words)

    def assert_one_line(self, err, *words):
        """A failure is one clear line on stderr, never a traceback."""
        self.assertNotIn("Traceback", err)
        self.assertEqual(len(err.splitlines()), 1, err)
        for word in words:
            self.assertIn(word, err)

    def load_big(self, *args):
        """Start a loader of a 64 MiB segment (32 Mi "x"), which a viewer takes a while to
        read; wait until it has loaded."""
        with tempfile.TemporaryFile() as source:
            source.write(b"x" * BIG)
            source.seek(0)
            return self.start_loader(*args, "-", stdin=source)

    def qt_lock_taken(self, sysv=False):
        return self.semaphore_value(sysv) <= 0

    def viewer_stopped_inside_qt_lock(self, *args, prefix=(), start=None):
        """A show_shared.py caught (SIGSTOP) while it holds Qt's lock, reading a big text:
        it tells (--verbose) that it took the lock, and we stop it at once; if it was
        quicker than that, we let it end and try again. The process returned is the viewer
        itself, even under a prefix such as unshare. start(): how to start it."""
        sysv = "--sysv" in args
        for _ in range(20):
            started = start() if start else self.start("--verbose", script=VIEWER, prefix=prefix)
            while not re.search("lock\\(\\), Qt's half +(sem_wait|semop)",
                                self.wait_line(started, stderr=True)):
                pass
            viewer = self.the_script_in(started) if prefix else started
            os.kill(viewer.pid, signal.SIGSTOP)
            if self.qt_lock_taken(sysv):
                return viewer
            os.kill(viewer.pid, signal.SIGCONT)
            self.finish(started)
        self.fail("never caught a viewer inside Qt's lock")

    def the_script_in(self, started):
        """The script that a prefix command (unshare --fork, say) started as its child."""
        deadline = time.monotonic() + TIMEOUT
        while not children(started.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        return types.SimpleNamespace(pid=children(started.pid)[0], stderr=started.stderr)

    def hold_our_turn(self):
        """A process that holds QT_TURN in our lock file, as a viewer of ours that waits for
        Qt's POSIX lock does; a line on its stdin lets go."""
        code = ("import shmcodec, sys; shmcodec.LockFile.of(sys.argv[1]).lock(shmcodec.TURN); "
                "print('held', flush=True); sys.stdin.readline()")
        holder = self.start_command([sys.executable, "-c", code, self.key], stdin=subprocess.PIPE)
        self.assertEqual(self.wait_line(holder), "held\n")
        return holder

    def viewer_stopped_holding_our_lock(self, sysv=()):
        """A show_shared.py stopped (as by Ctrl-Z) while it holds our lock (the fcntl turn):
        it waits there for Qt's lock, which a stand-in Qt program holds; we stop it, then
        the Qt program lets go. A loader must be running (it made Qt's lock)."""
        holder = self.hold_qt_lock(sysv=bool(sysv))
        viewer = self.start(script=VIEWER)
        deadline = time.monotonic() + TIMEOUT
        while not holds_a_lock(viewer.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)  # from our lock to its wait for Qt's
        stop_now(viewer.pid)  # out of the semaphore's queue, so the holder's lock is not its
        self.let_go(holder)
        return viewer

    def hold_qt_lock_as_ours(self, sysv=False):
        """A process that takes Qt's lock for our key as show_shared.py does (our turn, our
        record, the semaphore), once it is in; let_go() lets it out."""
        code = ("from shmcodec import QSharedMemory as Q; import sys; "
                "memory = Q({}); memory.lock(); print('inside', flush=True); "
                "sys.stdin.readline(); print('out', flush=True); memory.unlock()"
                ).format("sys.argv[1]" if sysv else "Q.platformSafeKey(sys.argv[1])")
        ours = self.start_command([sys.executable, "-c", code, self.key], stdin=subprocess.PIPE)
        self.assertEqual(self.wait_line(ours), "inside\n")
        return ours

    def make_qt_posix_lock(self):
        """Qt's POSIX lock for our key, as a Qt program leaves it (the test's cleanup
        removes it)."""
        handle = libc.sem_open(f"/{self.key}".encode(), os.O_CREAT,
                                        ctypes.c_uint(0o600), ctypes.c_uint(1))
        libc.sem_close(ctypes.c_void_p(handle))

    HELD = 3  # seconds that a living holder holds, longer than a proof of death takes

    def assert_kept(self, holder, *waiting, let_go=None):
        """While holder is inside, none of waiting (processes that print a line when they
        get in) does, for HELD seconds; then holder lets go (let_go(), by default a line)."""
        deadline = time.monotonic() + self.HELD
        for process in waiting:
            self.assertTrue(self.still_running(process, max(0, deadline - time.monotonic())),
                            f"{process.args[:4]} got in while a living holder was inside")
        (let_go or self.let_go)(holder)

    def assert_every_judge_keeps(self, hold, prefix=(), text="first"):
        """hold() puts a living holder inside Qt's lock, and returns it and how to let it
        go. With it inside, each process of ours that may judge a holder dead waits in
        turn: a viewer; the idle loader (behind which a stand-in Qt program waits); the
        loader's next write. None gets in, nor lets another in, while the holder lives.
        prefix: the command prefix for our scripts. Returns what the scripts said."""
        loader = self.start_typing(prefix=prefix, text=text)
        said = ""
        with self.one_at_a_time():
            for judge in ("viewer", "idle loader", "write"):
                holder, let_go = hold()
                if judge == "viewer":
                    waiting = self.start(script=VIEWER, prefix=prefix)
                elif judge == "idle loader":
                    waiting = self.lock_peer("hold")
                else:
                    self.type_line(loader, text)
                    waiting = loader
                self.assert_kept(holder, waiting, let_go=let_go)
                if judge == "viewer":
                    status, out, err = self.finish(waiting)
                    self.assertEqual((status, len(out)), (0, len(text) + 1), err)
                    said += err
                elif judge == "idle loader":
                    self.assertEqual(self.wait_line(waiting), "inside\n")
                    self.let_go(waiting)
                else:
                    self.assertRegex(self.wait_line(loader), "^Loaded ")
        loader.stdin.close()
        status, out, err = self.finish(loader)
        self.assertEqual(status, 0, err)
        said += err
        self.assertNotIn("taking its place", said)
        return said

    def assert_qt_reads(self, text, sysv=False, prefix=()):
        """A PySide6 reader of our key reads text (where there is a Python with PySide6;
        with QT_TESTS_REQUIRED, there must be)."""
        python = python_with("PySide6", "QT6_PYTHON")
        if not python:
            if os.environ.get("QT_TESTS_REQUIRED"):
                self.fail("QT_TESTS_REQUIRED is set, but there is no Python with PySide6")
            return
        result = subprocess.run([*prefix, python, "-c", QT_PEER, "PySide6",
                                 "legacy" if sysv else "safe", self.key, "read"],
                                capture_output=True, env=self.env, timeout=TIMEOUT)
        self.assertEqual((result.returncode, result.stdout.decode()), (0, ascii(text) + "\n"),
                         result.stderr)

    def assert_old_text_stays(self, loader, line, why, sysv=(), prefix=()):
        """Type line into loader, which cannot load it (why: words of the reason); the old
        text, "first", stays for our viewer and for Qt; the next line loads; and at the
        end of input the loader says that a line was not loaded (exit 1)."""
        self.type_line(loader, line)
        said = self.wait_line(loader, stderr=True)
        self.assertRegex(said, r"^load_shared.py: that line was not loaded: .*; the old text "
                               r"stays\n$")
        self.assertIn(why, said)
        status, out, err = self.run_script(script=VIEWER, prefix=prefix)
        self.assertEqual((status, out, err), (0, b"first\n", ""))
        self.assert_qt_reads("first", bool(sysv), prefix)
        self.load_line(loader, "next")
        self.assertEqual(self.run_script(script=VIEWER, prefix=prefix)[:2], (0, b"next\n"))
        loader.stdin.close()
        status, out, err = self.finish(loader)
        self.assertEqual(status, 1, err)
        self.assertNotIn("Traceback", err)
        self.assert_nothing_left()

    def typing_loader(self, *args, limit=None, prefix=()):
        """An interactive load_shared.py (after prefix), with a resource limit (resource,
        bytes), that has loaded "first"."""
        def set_limit():
            if limit:
                resource.setrlimit(limit[0], (limit[1], limit[1]))
        loader = self.start(*args, stdin=subprocess.PIPE, preexec_fn=set_limit, prefix=prefix)
        self.load_line(loader, "first")
        return loader

    def base_size(self, *args):
        """The address space that a loader uses once it has loaded a short line (bytes)."""
        loader = self.start(*args, stdin=subprocess.PIPE)
        self.load_line(loader, "first")
        with open(f"/proc/{loader.pid}/status") as status:
            size = next(int(line.split()[1]) << 10 for line in status if line.startswith("VmSize"))
        loader.stdin.close()
        self.finish(loader)
        return size

    def something_to_show(self):
        """A Qt program's segment for our key, and Qt's lock: a viewer takes our lock to
        read it."""
        self.write_segment(shmcodec.encode_qstring("Qt's"))
        self.make_qt_posix_lock()

    @needs_system_v
    def write_segment(self, data):
        """Make segment /key by hand, as a Qt program (or a vandal) would."""
        segment = qt_posix_segment(self.key, max(len(data), 1))
        if data:
            segment.buf[:len(data)] = data
        segment.close()


class RoundTripTest(ProcessTestCase):
    def test_segment_holds_qt_bytes(self):
        loader = self.start_loader("Grüße")
        with open(self.segment_path, "rb") as segment:
            self.assertEqual(segment.read().hex(), QT_BYTES["Grüße"])
        loader.terminate()
        self.finish(loader)

    def test_empty_text(self):
        loader = self.start_loader("")
        self.assert_shows("")
        self.stop(loader)

    def test_multiline_text_from_stdin(self):
        text = "first line\nsecond line\n\nfourth, after an empty one\n"
        loader = self.start("-", stdin=subprocess.PIPE)
        loader.stdin.write(text.encode() + b"\n")  # one final newline is dropped
        loader.stdin.close()
        self.assertRegex(self.wait_line(loader), "^Loaded ")
        self.assert_shows(text)

    def test_64_mib_text(self):
        text = "0123456789abcdef" * (4 << 20)  # 64 MiB of text, 128 MiB of UTF-16
        with tempfile.TemporaryFile() as source:
            source.write(text.encode())
            source.seek(0)
            loader = self.start_loader("-", stdin=source)
        status, out, err = self.show()
        self.assertEqual((status, err), (0, ""))
        self.assertTrue(out == text.encode() + b"\n")  # not assertEqual: no 64 MiB diff
        self.stop(loader, signal.SIGINT)
        self.assertFalse(self.segment_exists())

    def test_interactive_bad_utf8_line_keeps_the_text(self):
        loader = self.start(stdin=subprocess.PIPE)
        loader.stdin.write(b"good\n\xff\xfe bad\n")
        loader.stdin.flush()
        self.assertRegex(self.wait_line(loader), "^Loaded ")
        self.assertEqual(self.wait_line(loader, stderr=True), "load_shared.py: that line was not "
                         "loaded: the text is not valid UTF-8 (byte 0); the old text stays\n")
        self.assert_shows("good")
        loader.stdin.close()
        status, out, err = self.finish(loader)
        self.assertEqual(status, 1)  # a line was not loaded
        self.assertNotIn("Traceback", err)

    def test_viewer_before_any_load(self):
        for args in ((), ("--hex",), ("--key", "a-typo")):
            with self.subTest(args=args):
                status, out, err = self.show(*args)
                self.assert_failed(status, out, err, "load_shared.py",
                                   args[-1] if args[:1] == ("--key",) else self.key)
                self.assertEqual(os.listdir(self.tmpdir), [])  # a viewer leaves no litter

    def test_second_loader_is_refused(self):
        first = self.start_loader("first text")
        status, out, err = self.run_script("second text", script=LOADER)
        self.assert_failed(status, out, err, "another load_shared.py", f"pid {first.pid}")
        self.assert_shows("first text")
        status, out, err = self.run_script(script=LOADER, input=b"third\n")
        self.assertEqual(status, 1)
        self.assert_shows("first text")
        status, out, err = self.run_script("--replace", "fourth", script=LOADER)  # a segment,
        self.assert_failed(status, out, err, "another load_shared.py", f"pid {first.pid}")
        self.assert_shows("first text")  # not a living loader: --replace never takes that

    def test_release_on_every_way_out(self):
        ways = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGHUP": signal.SIGHUP}
        for name, signum in ways.items():
            with self.subTest(name):
                loader = self.start_loader("bye")
                self.assertTrue(self.segment_exists())
                loader.send_signal(signum)
                status, out, err = self.finish(loader)
                self.assertEqual(status, 0)
                self.assertNotIn("Traceback", err)
                self.assertFalse(self.segment_exists())
        with self.subTest("end of input"):
            loader = self.start(stdin=subprocess.PIPE)
            self.type_line(loader, "bye")
            self.wait_line(loader)
            self.assertTrue(self.segment_exists())
            loader.stdin.close()
            self.assertEqual(self.finish(loader)[0], 0)
            self.assertFalse(self.segment_exists())

    def test_segment_written_in_qt_layout(self):
        for text, hex_bytes in QT_BYTES.items():
            with self.subTest(text=text):
                # + slack, as a page-sized segment has (none for "": all zeros would read as
                # a segment made but not written yet)
                self.write_segment(bytes.fromhex(hex_bytes) + (b"\0" * 7 if text else b""))
                self.assert_shows(text or "")
                self.assertTrue(self.segment_exists())  # the viewer never removes it
                self.unlink_segment()

    def test_lone_surrogates_print_escaped(self):
        self.write_segment(bytes.fromhex("00000006" "0061d8000062"))
        status, out, err = self.show()
        self.assertEqual((status, out, err), (0, b"a\\ud800b\n", ""))

    def test_no_resource_tracker_and_no_leak_warning(self):
        loader = self.start_loader("tracked?")
        for _ in range(3):
            self.assert_shows("tracked?")
        time.sleep(0.2)  # a tracker would unlink the segment as its viewer exits
        self.assertTrue(self.segment_exists())
        if os.path.isdir("/proc"):
            self.assertEqual(children(loader.pid), [])
        loader.terminate()
        status, out, err = self.finish(loader)
        self.assertEqual((status, err.count("leaked")), (0, 0))
        self.assertNotIn("resource_tracker", err)

    def test_help_and_usage_errors(self):
        for script in (LOADER, VIEWER):
            with self.subTest(script=script):
                result = subprocess.run([sys.executable, script, "--help"],
                                        capture_output=True, env=self.env, timeout=TIMEOUT)
                self.assertEqual(result.returncode, 0)
                self.assertIn(b"--key", result.stdout)
                status, out, err = self.run_script("--no-such-option", script=script)
                self.assertEqual((status, out), (2, b""))


class FaultTest(ProcessTestCase):
    """Crashes, races and hostile input: nothing lost, nothing stuck, never a traceback."""

    def segment_bytes(self):
        with open(self.segment_path, "rb") as segment:
            return segment.read()

    def test_semaphore_of_a_loader_killed_while_writing_is_given_back(self):
        # A POSIX semaphore has no undo: the dead loader left Qt's lock taken. Whoever
        # waits on it (a Qt program) is let go by the next loader, which keeps that
        # semaphore and waits its own turn on it: the two get in one after the other, in
        # either order (a semaphore keeps no queue), never both at once (each holds a flock
        # on a marker file while inside).
        marker = os.path.join(self.tmpdir, "inside")
        self.kill_while_writing()
        # a Qt program in lock(), behind the dead loader
        waiter = self.lock_peer("hold", f"--marker={marker}")
        self.assertTrue(self.still_running(waiter), "the dead loader's lock was free")
        second = self.start_forced(MARKED_INSIDE, LOADER, "next", env=dict(self.env, MARKER=marker))
        self.assertEqual(self.wait_line(waiter), "inside\n", "the waiter was not let go alone")
        time.sleep(1)  # the loader's turn, if it comes second: it must not get in meanwhile
        self.let_go(waiter)
        self.assertRegex(self.wait_line(second), "^Loaded ")
        self.assert_shows("next")
        err = self.stop(second)[1]
        self.assertIn("inside", err)  # it took Qt's lock to write
        self.assertNotIn("VIOLATION", err)
        self.assert_nothing_left()

    def test_foreign_segment_is_never_destroyed_silently(self):
        qt_bytes = bytes.fromhex(QT_BYTES["hello"])
        self.write_segment(qt_bytes)
        status, out, err = self.run_script("mine", script=LOADER)
        self.assert_failed(status, out, err, f"/{self.key}", "--replace")
        self.assertEqual(self.segment_bytes(), qt_bytes)
        self.assert_shows("hello")  # and the viewer reads it normally, without a warning
        loader = self.start_loader("--replace", "mine")
        self.assertIn("taking over", loader.stderr.readline().decode())
        self.assert_shows("mine")
        self.stop(loader)
        self.assertFalse(self.segment_exists())

    def test_two_loaders_at_the_same_instant(self):
        for round_ in range(5):
            with self.subTest(round=round_):
                pair = [self.start(f"text {n}") for n in (1, 2)]
                deadline = time.monotonic() + TIMEOUT
                while all(p.poll() is None for p in pair) and time.monotonic() < deadline:
                    time.sleep(0.01)
                losers = [p for p in pair if p.poll() is not None]
                self.assertEqual(len(losers), 1)
                winner = pair[1 - pair.index(losers[0])]
                status, out, err = self.finish(losers[0])
                self.assertEqual(status, 1)
                self.assert_one_line(err, "another load_shared.py")
                self.assertRegex(self.wait_line(winner), "^Loaded ")
                self.assert_shows(winner.args[-1])
                self.stop(winner)

    def test_stress_no_torn_reads(self):
        sizes = [1, 10, 1000, 100_000, 1 << 20, 8 << 20]  # bytes of text, 1 B to 8 MiB
        texts = [chr(ord("a") + n) * size for n, size in enumerate(sizes)]
        loader = self.start(stdin=subprocess.PIPE)
        loader.stdin.write(texts[0].encode() + b"\n")
        loader.stdin.flush()
        self.wait_line(loader)
        stop = threading.Event()

        def feed():  # replace the text as fast as the loader takes it
            try:
                while not stop.is_set():
                    for text in texts:
                        loader.stdin.write(text.encode() + b"\n")
                loader.stdin.flush()
            except (BrokenPipeError, ValueError):
                pass

        expected = {text.encode() + b"\n" for text in texts}
        results = []

        def read(rounds):
            for _ in range(rounds):
                results.append(self.show())

        feeder = threading.Thread(target=feed)
        readers = [threading.Thread(target=read, args=(30,)) for _ in range(3)]
        feeder.start()
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join()
        stop.set()
        feeder.join(TIMEOUT)
        loader.stdin.close()
        status, out, err = self.finish(loader)
        self.assertEqual(status, 0)
        bad = [(s, len(o), e) for s, o, e in results if (s, e) != (0, "") or o not in expected]
        print(f"\nstress: {len(results)} reads, {out.count(b'Loaded') + 1} loads, "
              f"{len(bad)} bad", file=sys.stderr)
        self.assertEqual(bad, [])
        self.assertEqual(len(results), 90)

    def test_text_larger_than_shared_memory_fails_cleanly(self):
        if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
            self.skipTest("no private mount namespace here (unshare -m not permitted)")
        script = ('mount -t tmpfs -o size=1m tmpfs /dev/shm || exit 99; '
                  '"$0" load_shared.py --key "$1" - < "$2"; echo "status=$?"; ls -A /dev/shm')
        with tempfile.NamedTemporaryFile() as source:
            source.write(b"y" * (4 << 20))  # 8 MiB of UTF-16 for a 1 MiB /dev/shm
            source.flush()
            result = subprocess.run(["unshare", "-m", "sh", "-c", script, sys.executable,
                                     self.key, source.name], capture_output=True,
                                    env=self.env, cwd=HERE, timeout=TIMEOUT)
        if result.returncode == 99:
            self.skipTest("cannot mount a tmpfs in a private namespace here")
        self.assertEqual(result.stdout.decode(), "status=1\n")  # and /dev/shm is empty
        self.assert_one_line(result.stderr.decode(), "No space left", f"/{self.key}")

    def test_bad_keys_exit_2_before_touching_anything(self):
        self.addCleanup(lambda: [os.unlink(path) for path in glob.glob(  # a key sem.X taken
            f"/dev/shm/sem.sem.{glob.escape(self.key)}")])  # by mistake: its semaphore
        for key in ("", "a/b", "/lead", "é", ".", "..", "k" * 256, f"sem.{self.key}"):  # sem.X:
            # the file of key X's semaphore, /dev/shm/sem.X, is also the segment of key sem.X
            for script in (LOADER, VIEWER):
                with self.subTest(key=key, script=os.path.basename(script)):
                    status, out, err = self.run_script("text", script=script, key=key) \
                        if script == LOADER else self.show(key=key)
                    self.assertEqual((status, out), (2, b""))
                    self.assert_one_line(err, "key")
                    self.assertEqual(os.listdir(self.tmpdir), [])

    def test_every_byte_is_written_after_a_stop_on_a_full_pipe(self):
        # Unbuffered (PYTHONUNBUFFERED=1, as in many containers), a viewer stopped and
        # continued (Ctrl-Z, fg) while stdout is a full pipe sees write() return short.
        with tempfile.TemporaryFile() as source:
            source.write(b"x" * 3_000_000)
            source.seek(0)
            loader = self.start_loader("-", stdin=source)
        viewer = self.start(script=VIEWER, env=dict(self.env, PYTHONUNBUFFERED="1"))
        deadline = time.monotonic() + 10  # wchan may be hidden: then stop it after 10 s
        while not open(f"/proc/{viewer.pid}/wchan").read().endswith("pipe_write") and \
                time.monotonic() < deadline:  # until it waits, the pipe full
            time.sleep(0.01)
        stop_now(viewer.pid)
        os.kill(viewer.pid, signal.SIGCONT)
        status, out, err = self.finish(viewer)
        self.assertEqual((status, len(out), err), (0, 3_000_001, ""))
        self.stop(loader)

    def test_no_two_keys_share_a_lock_file(self):
        # A key too long for a plain file name is named by its sha1, which no plain key's
        # name can be: here the key that a former scheme gave the same name, at once.
        long_key = (self.key * 20)[:250]
        twin = long_key[:200] + "-" + hashlib.sha1(long_key.encode()).hexdigest()
        self.addCleanup(lambda: [shmcodec.Posix(key).remove() for key in (long_key, twin)])
        first = self.start_loader("first", key=long_key)
        second = self.start_loader("second", key=twin)
        self.assertEqual(self.show(key=long_key)[:2], (0, b"first\n"))
        self.assertEqual(self.show(key=twin)[:2], (0, b"second\n"))
        self.stop(first)
        self.stop(second)

    def test_longest_key_works(self):
        self.key = (self.key * 10)[:shmcodec.MAX_KEY_BYTES]  # our own key: never a person's
        loader = self.start_loader("long key")
        self.assert_shows("long key")
        self.stop(loader)

    def test_lock_file_is_private_and_traps_are_refused(self):
        loader = self.start_loader("private")
        self.assertEqual(os.stat(self.lock_path).st_mode & 0o777, 0o600)
        loader.terminate()
        self.finish(loader)
        os.unlink(self.lock_path)
        target = os.path.join(self.tmpdir, "precious")
        with open(target, "w") as precious:
            precious.write("precious")
        traps = {
            "symlink": (lambda: os.symlink(target, self.lock_path), "symlink"),
            "fifo": (lambda: os.mkfifo(self.lock_path, 0o600), "not a regular file"),
            "directory": (lambda: os.mkdir(self.lock_path), self.lock_path),
        }
        if os.geteuid() == 0:
            def foreign_file():
                with open(self.lock_path, "w") as foreign:
                    foreign.write("theirs")
                os.chmod(self.lock_path, 0o644)
                os.chown(self.lock_path, 65534, 65534)
            traps["another user's file"] = (foreign_file, "belongs to user")
        for name, (make, words) in traps.items():
            with self.subTest(name):
                make()
                before = os.lstat(self.lock_path)
                for script in (LOADER, VIEWER):
                    if script == VIEWER:  # it meets our lock file once there is Qt's lock
                        self.something_to_show()
                    status, out, err = self.run_script("text", script=script) \
                        if script == LOADER else self.show()
                    self.assert_failed(status, out, err, words)
                self.unlink_segment()
                after = os.lstat(self.lock_path)
                self.assertEqual((after.st_mode, after.st_uid, after.st_size, after.st_mtime_ns),
                                 (before.st_mode, before.st_uid, before.st_size,
                                  before.st_mtime_ns))
                with open(target) as precious:
                    self.assertEqual(precious.read(), "precious")
                self.assertFalse(self.segment_exists())
                (os.rmdir if name == "directory" else os.unlink)(self.lock_path)

    def test_viewer_into_a_closed_pipe_is_quiet(self):
        with tempfile.TemporaryFile() as source:
            source.write(b"z" * (1 << 20))
            source.seek(0)
            loader = self.start_loader("-", stdin=source)
        result = subprocess.run(f'"{sys.executable}" show_shared.py --key {self.key} | head -c 1',
                                shell=True, capture_output=True, env=self.env, cwd=HERE,
                                timeout=TIMEOUT)
        self.assertEqual((result.stdout, result.stderr), (b"z", b""))
        self.stop(loader)

    def test_loader_with_nobody_reading_its_stdout(self):
        loader = self.start(stdin=subprocess.PIPE)
        loader.stdout.close()
        loader.stdout = None
        loader.stdin.write(b"one\ntwo\n")
        loader.stdin.flush()
        deadline = time.monotonic() + TIMEOUT
        while self.show()[1] != b"two\n" and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assert_shows("two")
        loader.stdin.close()
        status, out, err = self.finish(loader)
        self.assertEqual((status, err), (0, ""))
        self.assertFalse(self.segment_exists())

    def test_loader_without_standard_input(self):
        # Without fd 0, the interactive loader meets the end of input at once (exit 0), and
        # "-" cannot read its text (exit 1); neither leaves anything behind.
        for args, expected in (((), 0), (("-",), 1)):
            with self.subTest(args=args):
                loader = self.start(*args, preexec_fn=lambda: os.close(0))  # no fd 0 at all,
                # as in some CI runners
                status, out, err = self.finish(loader)
                self.assertEqual((status, out), (expected, b""))
                if expected:
                    self.assert_one_line(err, "Bad file descriptor")
                self.assertNotIn("Traceback", err)
                self.assertFalse(self.segment_exists())

    def test_stop_signal_at_any_moment(self):
        rng = random.Random(4)
        for round_ in range(16):
            delay, signum = rng.uniform(0, 0.3), rng.choice(
                [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
            with self.subTest(round=round_, delay=delay, signal=signum):
                sysv = ("--sysv",) if round_ % 4 >= 2 else ()
                args = ("now",) if round_ % 2 else ()
                loader = self.start(*sysv, *args, stdin=subprocess.PIPE)
                if not args:
                    self.type_line(loader, "now")
                viewer = self.start(script=VIEWER)
                time.sleep(delay)
                loader.send_signal(signum)
                viewer.send_signal(signal.SIGINT)
                status, out, err = self.finish(loader)
                self.assert_no_traceback_of_ours(err)
                if "KeyboardInterrupt" not in err:  # else Python's own, as it starts up
                    self.assertIn(status, (0, 1, 130, -signum))  # 130 or -signum: before
                    if status == 1:  # stopped with a text not loaded yet
                        self.assert_one_line(err, "stopped before the text was loaded")
                status, out, err = self.finish(viewer)
                self.assert_no_traceback_of_ours(err)
                self.assert_nothing_left()

    def assert_no_traceback_of_ours(self, err):
        """A Ctrl-C that comes while a script's imports still run (a module's or a class's
        body) is a KeyboardInterrupt traceback, as in any Python program; from main() on,
        no traceback may come: the script's first frame is not the line that calls main()."""
        if "Traceback" in err:
            self.assertIn("KeyboardInterrupt", err)
            first = re.search(r'(?:load_shared|show_shared)\.py", line \d+, in <module>\n'
                              r'\s*(.*)', err)
            self.assertTrue(not first or "main()" not in first.group(1), err)  # not first:
            # Python's own start-up ("Fatal Python error: init_import_site"), before ours
            self.assertNotRegex(err, r'(?:load_shared|show_shared)\.py", line \d+, in main\n')


class DeathTest(ProcessTestCase):
    """Whoever dies or stops, wherever: nobody waits for ever, and no viewer costs the loader
    its text."""

    def test_a_viewer_without_memory_leaves_the_segment_alone(self):
        # SharedMemory(name) unlinks a segment that it fails to map (CPython issue 153279).
        loader = self.load_big()
        said = set()
        # Enough to start Python, but not to map 64 MiB; then not to decode it; then enough.
        for mib in (60, 96, 104, 112, 200):
            def set_limit(limit=mib << 20):
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            with self.subTest(limit_mib=mib):
                status, out, err = self.finish(self.start(script=VIEWER, preexec_fn=set_limit))
                if status:
                    self.assert_failed(status, out, err)
                    said.add(err)
                else:
                    self.assertEqual((len(out), err), (BIG + 1, ""))
                status, out, err = self.show()  # the text is whole, and still there
                self.assertEqual((status, len(out), err), (0, BIG + 1, ""))
        self.assertEqual({line.split(": ", 1)[1].strip() for line in said},
                         {"Cannot allocate memory", "not enough memory to decode the text"})
        self.stop(loader)
        self.assert_nothing_left()

    def test_a_viewer_killed_inside_qt_lock_blocks_nobody(self):
        loader = self.start_typing(text="x" * BIG)
        viewer = self.viewer_stopped_inside_qt_lock()
        viewer.kill()  # SIGKILL: a POSIX semaphore has no undo, the lock stays taken
        viewer.wait()
        self.assertTrue(self.qt_lock_taken())
        status, out, said = self.show()  # the next viewer: proves the holder dead
        self.assertEqual((status, len(out)), (0, BIG + 1))
        loader.stdin.write(b"next\n")  # the loader's next write
        loader.stdin.flush()
        self.assertRegex(self.wait_line(loader), "^Loaded ")
        self.assert_shows("next")
        loader.stdin.close()
        status, out, err = self.finish(loader)
        self.assertEqual(status, 0)
        said += err + self.show()[2]
        self.assertEqual(said.count(f"was left taken by show_shared.py (pid {viewer.pid}), a "
                                    "process of ours that died inside it; taking its place"), 1,
                         said)
        self.assert_nothing_left()

    def test_a_living_holder_is_named_and_never_robbed(self):
        loader = self.start_loader("held")
        holder = self.hold_qt_lock()  # a Qt program inside lock()
        viewers = [self.start(script=VIEWER) for _ in range(2)]
        said = {viewer.pid: self.wait_line(viewer, stderr=True) for viewer in viewers}
        first = next(pid for pid, line in said.items() if "not one of ours" in line)
        for pid, line in said.items():  # the first in line says what holds Qt's lock; the
            if pid == first:  # other waits behind it, for our lock
                self.assertIn(f"Qt's lock on /{self.key}, held by a program that is not one "
                              f"of ours", line)
                self.assertIn(f"rm /dev/shm/sem.{self.key}", line)
            else:
                self.assertIn(f"held by show_shared.py (pid {first})", line)
        self.assertTrue(self.still_running(viewers[0], 3), "a living holder's lock was taken")
        self.let_go(holder)
        for viewer in viewers:
            self.assertEqual(self.finish(viewer)[:2], (0, b"held\n"))
        self.stop(loader)

    def test_a_loader_told_to_stop_does_not_wait_for_a_stopped_viewer(self):
        loader = self.start_loader("held")
        viewer = self.viewer_stopped_holding_our_lock()
        loader.send_signal(signal.SIGTERM)
        status, out, err = self.finish(loader, timeout=10)
        self.assertEqual(status, 0)
        self.assertIn(f"leaving Qt's lock on /{self.key} in place: our lock on key "
                      f"{self.key!r} is held by show_shared.py (pid {viewer.pid})", err)
        self.assertFalse(self.segment_exists())
        viewer.send_signal(signal.SIGCONT)
        self.assertEqual(self.finish(viewer)[:2], (0, b"held\n"))  # its mapping kept the text
        self.stop(self.start_loader("next"))  # the next loader removes Qt's lock
        self.assert_nothing_left()

    def test_a_fifo_in_the_segments_place(self):
        os.mkfifo(self.segment_path, 0o600)
        self.addCleanup(self.unlink_segment)
        for script in (VIEWER, LOADER):
            with self.subTest(os.path.basename(script)):
                status, out, err = self.finish(self.start("text", script=script)
                                               if script == LOADER else self.start(script=script),
                                               timeout=10)
                self.assertEqual((status, out), (1, b""))
                self.assert_one_line(err, f"/{self.key}", "not a shared-memory segment"
                                     if script == VIEWER else "did not make it")
                self.assertTrue(stat.S_ISFIFO(os.lstat(self.segment_path).st_mode))

    def test_a_segment_made_but_not_written_yet(self):
        # The article's writer calls create() and then lock(): in between, its segment is
        # all zeros (README, "The original, step by step").
        self.write_segment(bytes(64))
        status, out, err = self.show()
        self.assert_failed(status, out, err, "made but not written yet")
        self.unlink_segment()
        # Written while the viewer tries again, under Qt's lock as a Qt writer would.
        writer = qt_posix_segment(self.key, 64)
        self.make_qt_posix_lock()
        viewer = self.start(script=VIEWER)
        time.sleep(0.3)
        qt_lock = self.hold_qt_lock()
        data = shmcodec.encode_qstring("late")
        writer.buf[:len(data)] = data
        self.let_go(qt_lock)
        self.assertEqual(self.finish(viewer)[:2], (0, b"late\n"))
        writer.close()
        self.unlink_segment()
        self.write_segment(bytes(4))  # an empty QString, and no more: shown at once
        self.assert_shows("")


class RulesTest(ProcessTestCase):
    """Each rule of the README's safety-net table, aimed at the rule itself."""

    def test_dash_after_double_dash_is_a_text_and_flags_take_no_value(self):
        for args, script in ((("--sysv=no", "x"), LOADER), (("--replace=no", "x"), LOADER),
                             (("--verbose=1",), VIEWER), (("--verbose=1", "x"), LOADER)):
            with self.subTest(args=args):
                status, out, err = self.run_script(*args, script=script)
                self.assertEqual((status, out), (2, b""))
                self.assert_one_line(err, "ignored explicit argument")
        self.assertEqual(os.listdir(self.tmpdir), [])
        loader = self.start_loader("--", "-")
        self.assert_shows("-")
        self.stop(loader)

    def test_each_kind_checks_its_own_key_limit(self):
        letters = shmcodec.MAX_SYSTEM_V_LETTERS
        status, out, err = self.run_script("--sysv", "x", key=self.key[:0] + "k" * (letters + 1),
                                           script=LOADER)
        self.assertEqual((status, out), (2, b""))
        self.assert_one_line(err, f"allows {letters}")
        self.assertEqual(os.listdir(self.tmpdir), [])
        longest = ("k" * letters + "-" + self.key)[:shmcodec.MAX_KEY_BYTES]  # digits: no letters
        status, out, err = self.show(key=longest)  # POSIX allows it; System V cannot find it
        self.assert_failed(status, out, err, "nothing loaded")
        self.key = "k" * letters + f"-{os.getpid()}-{random.randrange(10 ** 8)}"  # no more letters
        loader = self.start_loader("--sysv", "longest System V key")
        self.assert_shows("longest System V key")
        self.stop(loader)
        self.assert_nothing_left()

    def test_a_long_line_across_reads(self):
        line = "ab" * (3 << 20)  # 6 MiB, read in several pieces
        loader = self.start(stdin=subprocess.PIPE)
        loader.stdin.write(f"{line}\nlast, without a newline".encode())
        loader.stdin.close()
        self.assertRegex(self.wait_line(loader), "^Loaded ")
        self.assertRegex(self.wait_line(loader), "^Loaded ")
        status, out, err = self.finish(loader)
        self.assertEqual((status, err), (0, ""))
        loader = self.start(stdin=subprocess.PIPE)
        loader.stdin.write(f"{line}\n".encode())
        loader.stdin.flush()
        self.assertRegex(self.wait_line(loader), "^Loaded ")
        status, out, err = self.show()
        self.assertEqual(out, line.encode() + b"\n")
        loader.stdin.close()
        self.finish(loader)

    def test_lock_directory_rules_are_the_same_everywhere(self):
        runtime = os.path.join(self.tmpdir, "runtime")
        os.mkdir(runtime, 0o700)
        loader = self.start_loader("there", env=dict(self.env, XDG_RUNTIME_DIR=runtime))
        self.assertEqual(os.listdir(runtime), [f"qshm-{self.key}.lock"])  # and not in TMPDIR
        self.assertFalse(os.path.exists(os.path.dirname(self.lock_path)))
        self.stop(loader)
        private = os.path.dirname(self.lock_path)
        os.mkdir(private)
        for place, env in ((runtime, dict(self.env, XDG_RUNTIME_DIR=runtime)),
                           (private, self.env)):
            for mode in (0o770, 0o777, 0o720):
                with self.subTest(place=place, mode=oct(mode)):
                    os.chmod(place, mode)
                    status, out, err = self.finish(self.start("x", env=env))
                    self.assert_failed(status, out, err, place, "may be written by others",
                                       "refusing")
                    self.assertFalse(self.segment_exists())
                    self.something_to_show()
                    status, out, err = self.finish(self.start(script=VIEWER, env=env))
                    self.assert_failed(status, out, err, place, "may be written by others",
                                       "refusing")
                    self.unlink_segment()

    def test_a_stop_signal_inherited_as_ignored_stays_ignored(self):
        # nohup starts a program with SIGHUP ignored, and a shell script's job started with &
        # has SIGINT ignored: a hang-up, or Ctrl-C, must then not end it.
        for ignored in (signal.SIGHUP, signal.SIGINT):
            with self.subTest(signal=ignored):
                loader = self.start_loader("held", preexec_fn=lambda: signal.signal(
                    ignored, signal.SIG_IGN))
                loader.send_signal(ignored)
                self.assertTrue(self.still_running(loader), "an ignored signal ended it")
                self.assert_shows("held")
                self.stop(loader)
                self.assert_nothing_left()

    def test_the_lock_files_lines_keep_no_tail_of_a_longer_one(self):
        # Each line is rewritten whole: "PID loaded sysv" after "PID writing sysv", an empty
        # logbook after either, an empty Qt record after a process inside Qt's lock.
        def lines():
            with open(self.lock_path) as lock_file:
                return lock_file.read()
        loader = self.start_loader("--sysv", "held")
        self.assertEqual(lines()[:64], f"{loader.pid} loaded sysv".ljust(63) + "\n")
        self.stop(loader)
        loader = self.start_loader("held")  # its turn at Qt's POSIX lock wrote the Qt record
        self.stop(loader)
        self.assertEqual(lines(), " " * 63 + "\n" + " " * 63 + "\n")

    def dead_loaders_logbook(self, line):
        """A logbook "PID line" of a loader that is gone (a pid that was, and ended)."""
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout.strip()
        os.makedirs(os.path.dirname(self.lock_path), mode=0o700, exist_ok=True)
        with open(self.lock_path, "w") as lock_file:
            lock_file.write(f"{dead} {line}".ljust(63) + "\n")
        return dead

    def test_a_logbook_that_names_an_unknown_kind_reads_as_posix(self):
        # As a newer loader, or a broken one, might leave it: a dead loader's "loaded".
        dead = self.dead_loaders_logbook("loaded quantum")
        self.write_segment(shmcodec.encode_qstring("left"))
        status, out, err = self.show()
        self.assertEqual((status, out), (0, b"left\n"))
        self.assert_one_line(err, f"pid {dead}", "is gone")
        loader = self.start_loader("next")  # clears the dead loader's POSIX segment
        self.assertIn(f"left behind by load_shared.py (pid {dead})", self.wait_line(
            loader, stderr=True))
        self.stop(loader)
        self.assert_nothing_left()

    def test_a_viewer_maps_the_segment_read_only(self):
        for sysv in ((), ("--sysv",)):
            with self.subTest(sysv=sysv):
                loader = self.load_big(*sysv)
                viewer = self.viewer_stopped_inside_qt_lock(*sysv, start=lambda: self.start(
                    "--verbose", script=VIEWER))
                with open(f"/proc/{viewer.pid}/maps") as maps:
                    segment = [line.split()[1] for line in maps
                               if f"/dev/shm/{self.key}" in line or "/SYSV" in line]
                os.kill(viewer.pid, signal.SIGCONT)
                self.assertEqual(self.finish(viewer)[0], 0)
                self.assertEqual(segment, ["r--s"])
                self.stop(loader)

    def test_a_logbook_of_the_other_kind_is_not_about_the_segment_found(self):
        # A System V loader of ours died while writing; the POSIX segment that a Qt program
        # made meanwhile is whole, and shown.
        self.dead_loaders_logbook("writing sysv")
        self.write_segment(shmcodec.encode_qstring("whole"))
        status, out, err = self.show()
        self.assertEqual((status, out, err), (0, b"whole\n", ""))

    def test_an_unknown_single_dash_option_is_a_usage_error(self):
        for script in (LOADER, VIEWER):
            with self.subTest(os.path.basename(script)):
                status, out, err = self.run_script("-v", script=script)
                self.assertEqual((status, out), (2, b""))
                self.assert_one_line(err, "unrecognized arguments: -v")
                self.assertFalse(self.segment_exists())

    def test_a_viewer_told_to_stop_inside_qt_lock_gives_it_back(self):
        loader = self.load_big()
        viewer = self.viewer_stopped_inside_qt_lock()
        viewer.send_signal(signal.SIGTERM)  # waits until the viewer gives Qt's lock back
        viewer.send_signal(signal.SIGCONT)
        status, out, err = self.finish(viewer)
        self.assertEqual((status, out), (130, b""))  # it ends, as asked, as Ctrl-C would
        self.assertFalse(self.qt_lock_taken())
        self.stop(loader)
        self.assert_nothing_left()

    @needs_system_v
    def test_a_dead_posix_loader_is_cleared_by_a_system_v_loader(self):
        self.kill_while_writing()  # it dies holding Qt's POSIX lock
        waiter = self.lock_peer("hold")  # a Qt program in lock(), behind the dead loader
        self.assertTrue(self.still_running(waiter), "the dead loader's lock was free")
        loader = self.start_loader("--sysv", "next")
        self.assertEqual(self.wait_line(waiter), "inside\n",
                         "the waiter on the dead loader's lock was not let go")
        self.let_go(waiter)
        self.assertFalse(self.segment_exists())  # its POSIX segment
        self.assert_shows("next")
        self.stop(loader)
        self.assert_nothing_left()  # and its Qt lock: once nobody was inside it

    @needs_system_v
    def test_a_dead_loaders_segment_of_the_other_kind_is_cleared(self):
        for first, second in (((), ("--sysv",)), (("--sysv",), ())):
            with self.subTest(first=first):
                dead = self.start_loader(*first, "left")
                dead.kill()
                self.finish(dead)
                loader = self.start(*second, "next")
                self.assertIn(f"left behind by load_shared.py (pid {dead.pid})",
                              self.wait_line(loader, stderr=True))
                self.assertRegex(self.wait_line(loader), "^Loaded ")
                left = self.segment_kind(sysv=bool(first))
                self.assertIsNone(left.users())
                self.stop(loader)
                self.assert_nothing_left()

    @needs_system_v
    def test_a_system_v_lock_removed_by_its_maker_while_a_viewer_waits(self):
        system_v = self.segment_kind(sysv=True)
        theirs = system_v.make(16)  # a Qt program's segment and lock, as a Qt program holds them
        self.addCleanup(lambda: (theirs.close(), system_v.remove()))
        data = shmcodec.encode_qstring("qt's")
        theirs.buf[:len(data)] = data
        qt_lock = system_v  # and its Qt lock, which the Qt program holds
        shmcodec_in(self.tmpdir, lambda: system_v.open_lock(create=True))
        self.assertTrue(qt_lock.take(TIMEOUT))
        viewer = self.start(script=VIEWER)
        self.assertIn("waiting for Qt's lock", self.wait_line(viewer, stderr=True))
        qt_lock.remove_lock()  # the Qt program quits: its set and key file are gone
        self.assertEqual(self.finish(viewer)[:2], (0, b"qt's\n"))
        self.assertEqual([ident for ident in self.system_v_left() if ident[0] == "sem"], [])
        self.assertFalse(os.path.exists(system_v.lock_key_file.path))

    @needs_system_v
    def test_a_system_v_lock_that_vanishes_at_the_worst_moment(self):
        # A Qt program that holds Qt's System V lock quits: it removes the set, then its key
        # file. A viewer, or our loader, waiting on the set makes it again, as Qt does; the
        # moment forced: it finds the key file there when it tries to make it, and gone
        # when it looks at it. It goes on, and shows or loads the text.
        system_v = self.segment_kind(sysv=True)
        forced = dict(self.env, KEY=self.key)
        for script in (VIEWER, LOADER):
            with self.subTest(os.path.basename(script)):
                if script == VIEWER:  # a Qt program's segment
                    theirs = system_v.make(16)
                    theirs.buf[:12] = shmcodec.encode_qstring("qt's")
                else:
                    loader = self.start_forced(VANISH_AT_THE_WORST_MOMENT, LOADER, "--sysv",
                                               env=forced, stdin=subprocess.PIPE)
                    self.load_line(loader, "first")
                # A Qt program's create() takes an existing set over, and removes it at its end.
                qt_lock = system_v
                shmcodec_in(self.tmpdir, lambda: system_v.open_lock(create=True))
                self.assertTrue(qt_lock.take(TIMEOUT))
                if script == VIEWER:
                    waiting = self.start_forced(VANISH_AT_THE_WORST_MOMENT, VIEWER, env=forced)
                else:
                    self.type_line(loader, "second")
                    waiting = loader
                self.assertIn("waiting for Qt's lock", self.wait_line(waiting, stderr=True))
                libc.semctl(qt_lock.semid, 0, shmcodec.IPC_RMID, 0)  # it quits
                if script == VIEWER:
                    try:
                        self.assertEqual(self.finish(waiting)[:2], (0, b"qt's\n"))
                    finally:
                        theirs.close()
                        system_v.remove()
                else:
                    self.assertRegex(self.wait_line(loader), "^Loaded ")
                    self.assert_shows("second")
                    loader.stdin.close()
                    self.assertEqual(self.finish(loader)[0], 0)
                qt_lock.lock_key_file.remove()
                self.assert_nothing_left()

class QtLockTest(ProcessTestCase):
    """Qt's POSIX lock is given back only when the kernel proves that its holder, a process
    of ours, died (its turn, an fcntl lock, is free while its record stands); a living
    holder, ours or a Qt program's, never loses it, and a Qt program's death blocks the key
    as it blocks Qt's own programs, said with the way out. (The /proc proof that a Qt
    program died is gone, on purpose: its tests went with it.)"""

    def holder_with(self, *options):
        """A hold() for assert_every_judge_keeps: a stand-in Qt program with options."""
        return lambda: (self.hold_qt_lock(*options), self.let_go)

    def test_a_holder_whose_main_thread_ended_keeps_it(self):
        self.assert_every_judge_keeps(self.holder_with("--main-exits"))

    def test_a_holder_with_a_second_thread_in_line_keeps_it(self):
        def hold():
            holder = self.hold_qt_lock("--second-thread")

            def let_go(holder):
                self.let_go(holder)
                self.assertEqual(self.wait_line(holder), "second inside\n")  # only now
            return holder, let_go
        self.assert_every_judge_keeps(hold)

    def unshare_pid(self):
        """A command prefix that runs its command in a new PID namespace, with its own
        /proc, as a container does; skip the test where that cannot be done."""
        prefix = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
        if not shutil.which("unshare") or subprocess.run(
                [*prefix, "true"], capture_output=True).returncode != 0:
            self.skipTest("unshare --pid --fork --mount-proc cannot run here (root only)")
        return prefix

    def test_in_another_pid_namespace_a_living_holder_keeps_it(self):
        self.assert_every_judge_keeps(self.holder_with(), prefix=self.unshare_pid())

    def test_in_another_pid_namespace_our_own_death_is_proven(self):
        # The kernel drops a dead process's fcntl locks in any namespace: our record proves it.
        namespace = self.unshare_pid()
        loader = self.load_big()
        viewer = self.viewer_stopped_inside_qt_lock(prefix=namespace)
        os.kill(viewer.pid, signal.SIGKILL)
        started = time.monotonic()
        status, out, err = self.finish(self.start(script=VIEWER, prefix=namespace))
        self.assertEqual((status, len(out)), (0, BIG + 1))
        self.assertLess(time.monotonic() - started, 3)
        self.assertIn("a process of ours that died inside it; taking its place", err)
        self.stop(loader)

    def test_a_viewer_stopped_the_moment_it_got_the_lock_keeps_it(self):
        def hold():
            viewer = self.viewer_stopped_inside_qt_lock()
            return viewer, lambda viewer: os.kill(viewer.pid, signal.SIGCONT)
        self.assert_every_judge_keeps(hold, text="x" * BIG)

    def test_a_qt_program_locked_twice_keeps_its_lock(self):
        # Inside lock(), it locks again through a second QSharedMemory of the same key: its
        # only thread sleeps on the semaphore, as a waiter's would. It is alive: nobody of
        # ours takes its lock. It never lets go (as in Qt): the way out is to kill it.
        loader = self.start_typing()
        holder = self.hold_qt_lock("--lock-again")
        with self.one_at_a_time():
            viewer = self.start(script=VIEWER)
            said = self.wait_line(viewer, stderr=True)
            self.type_line(loader, "second")
            self.assertIn(f"held by a program that is not one of ours", said)
            self.assertIn(f"rm /dev/shm/sem.{self.key}", said)
            self.assertTrue(self.still_running(viewer, 3), "a living holder was robbed")
            self.assertTrue(self.still_running(loader, 0.1), "a living holder was robbed")
            viewer.kill()
            viewer.wait()
            holder.kill()  # the way out: quit every program that uses the key...
            holder.wait()
            loader.send_signal(signal.SIGTERM)
            status, out, err = self.finish(loader)
            self.assertEqual(status, 1)
            self.assertIn("leaving Qt's lock on", err)
        self.assertEqual(self.semaphore_value(), 0)  # ...and remove it (the cleanup does)

    def test_two_rescuers_give_back_once(self):
        loader = self.load_big()
        with self.one_at_a_time():
            dead = self.viewer_stopped_inside_qt_lock()
            rescuers = [self.start(script=VIEWER) for _ in range(3)]
            time.sleep(0.5)  # all three in line behind it
            os.kill(dead.pid, signal.SIGKILL)
            results = [self.finish(rescuer) for rescuer in rescuers]
        self.assertEqual([(status, len(out)) for status, out, _ in results],
                         [(0, BIG + 1)] * 3)
        loader.terminate()
        said = self.finish(loader)[2] + "".join(err for _, _, err in results)
        self.assertEqual(said.count("taking its place"), 1, said)

    def test_a_dead_qt_holder_blocks_the_key_and_every_waiter_says_how_to_free_it(self):
        loader = self.start_typing()
        holder = self.hold_qt_lock()
        holder.kill()  # a Qt program killed inside lock(): nobody can prove it dead
        holder.wait()
        viewers = [self.start(script=VIEWER) for _ in range(2)]
        said = [self.wait_line(viewer, stderr=True) for viewer in viewers]
        self.assertTrue(any(f"rm /dev/shm/sem.{self.key}" in line for line in said), said)
        self.assertTrue(self.still_running(viewers[0], 2), "a guess was taken for a proof")
        self.assertEqual(self.semaphore_value(), 0)
        for viewer in viewers:  # what the line says: quit every program that uses the key,
            viewer.kill()
            viewer.wait()
        self.stop(loader)
        os.unlink(f"/dev/shm/sem.{self.key}")  # then remove the lock
        loader = self.start_loader("again")
        self.assert_shows("again")
        self.stop(loader)
        self.assert_nothing_left()


class LockProtocolTest(ProcessTestCase):
    """Each step of lock(), unlock(), a rescue and the quitting loader's removal of Qt's
    lock, with a death right after it, or a failure of its write: the semaphore never
    rises above 1, nobody is ever inside with another (a flock marker), and the next
    process of ours gets in within a few seconds, or, where the state is stuck but safe,
    says so with the way out (README: "When something dies")."""

    def setUp(self):
        super().setUp()
        self.marker = os.path.join(self.tmpdir, "inside")
        self.start_marked_loader()

    def start_marked_loader(self, *args):
        """An interactive load_shared.py, inside marked, that has loaded "first"."""
        self.loader = self.start_forced(MARKED_INSIDE, LOADER, *args, env=dict(
            self.env, MARKER=self.marker), stdin=subprocess.PIPE)
        self.load_line(self.loader, "first")

    def viewer_with(self, step, then="die", sysv=False):
        """A show_shared.py, inside marked, with step and then (see STEP_THEN); its end."""
        env = dict(self.env, MARKER=self.marker, STEP=step, THEN=then)
        return self.finish(self.start_forced(MARKED_INSIDE + STEP_THEN, VIEWER, env=env))

    def next_viewer(self):
        """The next show_shared.py, inside marked: (status, out, err)."""
        return self.finish(self.start_forced(MARKED_INSIDE, VIEWER, env=dict(
            self.env, MARKER=self.marker)), timeout=10)

    def assert_gets_in(self, rescues=0):
        started = time.monotonic()
        status, out, err = self.next_viewer()
        self.assertEqual((status, out), (0, b"first\n"), err)
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual(err.count("taking its place"), rescues, err)
        self.assertNotIn("VIOLATION", err)

    def assert_stuck_but_safe(self):
        viewer = self.start_forced(MARKED_INSIDE, VIEWER, env=dict(self.env, MARKER=self.marker))
        said = self.wait_line(viewer, stderr=True)
        self.assertIn(f"held by a program that is not one of ours", said)
        self.assertIn(f"rm /dev/shm/sem.{self.key}", said)
        self.assertTrue(self.still_running(viewer, 2), "a lock taken was given back on a guess")
        self.assertEqual(self.semaphore_value(), 0)
        viewer.kill()  # the way out: quit every program that uses the key, remove the lock
        self.assertNotIn("waiting for", self.finish(viewer)[2])  # said once, not again
        self.stop(self.loader)
        os.unlink(f"/dev/shm/sem.{self.key}")
        self.stop(self.start_loader("again"))
        self.assert_nothing_left()

    def finish_loader(self):
        self.loader.stdin.close()
        status, out, err = self.finish(self.loader)
        self.assertEqual(status, 0, err)
        self.assertNotIn("VIOLATION", err)
        self.assert_nothing_left()

    def test_a_death_after_each_step_of_lock_and_unlock(self):
        steps = {  # step: whether the next gets in (how many rescues), or it is stuck
            "LockFile.lock 1": 0,  # our turn: the kernel drops it
            "Posix.take 1": None,  # sem_wait, before the record
            "LockFile.write 1 , 1, '": 1,  # the record written: proven, taken over
            "LockFile.write 2 , 1, '": None,  # the record cleared, before sem_post
            "Posix.give 1": 0,  # sem_post: only our turn left, dropped
            "LockFile.unlock 1 , 0)": 0,  # our turn, let go last: nothing left
        }
        for step, rescues in steps.items():
            with self.subTest(step):
                if self.loader.poll() is not None:
                    self.start_marked_loader()
                with self.one_at_a_time():
                    status, out, err = self.viewer_with(step)
                    self.assertEqual(status, -signal.SIGKILL, err)
                    if rescues is None:
                        self.assert_stuck_but_safe()
                    else:
                        self.assert_gets_in(rescues)
                        self.load_line(self.loader, "first")  # the loader's lock() too

    def test_a_rescuer_that_dies_is_rescued_in_turn_once(self):
        with self.one_at_a_time():
            self.assertEqual(self.viewer_with("LockFile.write 1 , 1, '")[0], -signal.SIGKILL)
            status, out, err = self.viewer_with("QSharedMemory._take_place_of_dead 1")
            self.assertEqual(status, -signal.SIGKILL)
            self.assertEqual(err.count("taking its place"), 1, err)
            self.assert_gets_in(rescues=1)
            self.assert_gets_in(rescues=0)
        self.finish_loader()

    def test_a_record_names_its_semaphore_and_no_fresh_one_is_given_back_for_it(self):
        # A viewer dies inside; then Qt's lock is made afresh (a Qt program's create()
        # unlinks it first) and a living Qt program holds the fresh one. The record speaks
        # of the old semaphore: nobody of ours takes the Qt program's place.
        with self.one_at_a_time():
            self.assertEqual(self.viewer_with("LockFile.write 1 , 1, '")[0], -signal.SIGKILL)
            os.unlink(f"/dev/shm/sem.{self.key}")
            self.make_qt_posix_lock()
            holder = self.hold_qt_lock()
            viewer = self.start_forced(MARKED_INSIDE, VIEWER, env=dict(
                self.env, MARKER=self.marker))
            self.assertIn("held by a program that is not one of ours",
                          self.wait_line(viewer, stderr=True))
            self.assertTrue(self.still_running(viewer, 2), "the fresh lock was given back")
            self.assertEqual(self.semaphore_value(), 0)
            self.let_go(holder)
            status, out, err = self.finish(viewer)
            self.assertEqual((status, out), (0, b"first\n"), err)
            self.assertNotIn("taking its place", err)
        self.loader.stdin.close()  # it quits at once: the lock it made is gone already,
        self.assertEqual(self.finish(self.loader)[0], 0)  # and the fresh one is not its
        os.unlink(f"/dev/shm/sem.{self.key}")  # own to remove, but the Qt program's
        self.assert_nothing_left()

    def test_a_record_that_cannot_be_written_means_we_do_not_go_in(self):
        with self.one_at_a_time():
            status, out, err = self.viewer_with("LockFile.write 1 , 1, '", then="fail")
            self.assert_failed(status, out, err, "File too large")
            self.assertEqual(self.semaphore_value(), 1)  # given back at once
            self.assert_gets_in()
        self.finish_loader()

    def test_a_record_that_cannot_be_cleared_is_taken_over_by_the_next(self):
        with self.one_at_a_time():
            status, out, err = self.viewer_with("LockFile.write 2 , 1, '", then="fail")
            self.assertNotIn("Traceback", err)
            self.assert_gets_in(rescues=1)  # it never gave the lock back: the next takes over
        self.finish_loader()

    def test_under_a_file_size_limit_nobody_goes_in_without_a_record(self):
        # A viewer under `ulimit -f 0`, and a loader that may write 64 bytes (its logbook,
        # not its record): each fails in one line, gives Qt's lock back, and leaves nothing.
        def limit(size):
            return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        with self.one_at_a_time():
            status, out, err = self.finish(self.start(script=VIEWER, preexec_fn=limit(0)))
            self.assert_failed(status, out, err, "cannot write our record", "File too large")
            self.assertEqual(self.semaphore_value(), 1)
            self.assert_gets_in()
            self.stop(self.loader)
            status, out, err = self.finish(self.start("text", preexec_fn=limit(64)))
            self.assertEqual((status, out), (1, b""), err)
            self.assertIn("cannot write our record", err)
            self.assertNotIn("Traceback", err)
        self.stop(self.start_loader("next"))  # the next removes the Qt lock that it left
        self.assert_nothing_left()

    def test_few_file_descriptors_never_leave_a_lock_taken(self):
        # Nothing that a wait needs may fail once the lock is taken: under a small limit of
        # open files, a viewer or a loader works, or fails in one line; never inside.
        for limit in range(5, 12):
            def set_limit(limit=limit):
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
            with self.subTest(limit=limit), self.one_at_a_time():
                status, out, err = self.finish(self.start(script=VIEWER, preexec_fn=set_limit))
                if status:
                    self.assert_failed(status, out, err)
                else:
                    self.assertEqual((out, err), (b"first\n", ""))
                self.assertEqual(self.semaphore_value(), 1)
        self.stop(self.loader)
        for limit in range(5, 12):
            def set_limit(limit=limit):
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
            with self.subTest(loader_limit=limit):
                loader = self.start(stdin=subprocess.PIPE, preexec_fn=set_limit)
                out, err = loader.communicate(b"text\n", timeout=TIMEOUT)
                self.assertNotIn("Traceback", err.decode())
                self.assertIn(loader.returncode, (0, 1), err)
                self.assertFalse(os.path.exists(f"/dev/shm/sem.{self.key}") and
                                 self.semaphore_value() != 1, "Qt's lock left taken")
                self.stop(self.start_loader("again"))  # clears whatever a failure left
                self.assert_nothing_left()

    def test_a_system_v_lock_is_given_back_by_the_kernel(self):
        self.stop(self.loader)
        self.start_marked_loader("--sysv")
        for step in ("LockFile.lock 1", "SystemV.take 1"):
            with self.subTest(step), self.one_at_a_time(sysv=True):
                self.assertEqual(self.viewer_with(step)[0], -signal.SIGKILL)
                self.assert_gets_in()
        self.finish_loader()

    def test_a_loader_that_dies_removing_qt_lock(self):
        # Between the quitting loader's sem_unlink and its sem_post: a Qt program that has
        # the lock open waits on a removed one for ever (README: restart it); ours go on.
        self.stop(self.loader)
        loader = self.start_forced(STEP_THEN, LOADER, env=dict(
            self.env, STEP="Posix.remove_lock 1", THEN="die"), stdin=subprocess.PIPE)
        self.load_line(loader, "first")
        waiter = self.lock_peer("hold", "--on-line")  # a Qt program with the lock open
        deadline = time.monotonic() + TIMEOUT
        while not any(f"sem.{self.key}" in line for line in open_lines(
                f"/proc/{waiter.pid}/maps")):
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.01)
        loader.send_signal(signal.SIGTERM)
        self.assertEqual(self.finish(loader)[0], -signal.SIGKILL)
        self.assertFalse(os.path.exists(f"/dev/shm/sem.{self.key}"))  # removed, and taken
        self.type_line(waiter, "go")  # its lock() waits on the removed lock...
        self.assertTrue(self.still_running(waiter, 2))  # ...for ever: restart it
        with self.one_at_a_time():
            started = time.monotonic()
            loader = self.start_loader("next")  # ours go on, with a fresh lock
            self.assert_shows("next")
            self.assertLess(time.monotonic() - started, 5)
            self.stop(loader)
        waiter.kill()
        self.assert_nothing_left()


class ReplacementTest(ProcessTestCase):
    """A new text that cannot be loaded leaves the old one in place, byte for byte, of
    either kind; the loader says so in one line and goes on with the next line. Our
    viewers, and a Qt program, read the old text throughout."""

    def test_a_segment_over_the_file_size_limit(self):
        # tmpfs obeys RLIMIT_FSIZE: ftruncate fails with EFBIG (prlimit --fsize).
        loader = self.typing_loader(limit=(resource.RLIMIT_FSIZE, 1_000_000))
        self.assert_old_text_stays(loader, "y" * 600_000, "cannot make a 1200004-byte segment "
                                   f"/{self.key}: File too large")

    def test_a_loader_killed_after_a_failure_is_cleared_by_the_next(self):
        # After a failed replacement, the logbook still names the loader and the text it
        # kept: if it is killed then, the next loader knows that segment for ours, left
        # behind, and replaces it without --replace.
        n = 30 << 20
        cases = [((), (resource.RLIMIT_FSIZE, 1_000_000), 600_000)]
        if shmcodec.SYSTEM_V_HERE:  # encoded, it fits; attached (shmat), it does not
            cases.append((("--sysv",), (resource.RLIMIT_AS, self.base_size("--sysv") + 5 * n), n))
        for sysv, limit, letters in cases:
            with self.subTest(sysv=sysv):
                loader = self.typing_loader(*sysv, limit=limit)
                self.type_line(loader, "y" * letters)
                self.assertIn("that line was not loaded", self.wait_line(loader, stderr=True))
                loader.kill()
                loader.wait()
                after = self.start_loader(*sysv, "after")
                self.assertIn(f"left behind by load_shared.py (pid {loader.pid}), which is gone",
                              after.stderr.readline().decode())
                self.assert_shows("after")
                self.stop(after)
                self.assert_nothing_left()

    def test_the_first_line_that_cannot_be_loaded_fails_as_before(self):
        # With no old text to keep, the failure is one line, exit 1, nothing left.
        def set_limit():
            resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))
        for args in ((), ("-",)):
            with self.subTest(args=args):
                typed = b"y" * 600_000 + (b"\nnext\n" if not args else b"")
                loader = self.start(*args, stdin=subprocess.PIPE, preexec_fn=set_limit)
                out, err = loader.communicate(typed, timeout=TIMEOUT)
                self.assertEqual((loader.returncode, out), (1, b""))
                self.assert_one_line(err.decode(), "cannot make a 1200004-byte segment",
                                     "File too large")
                self.assert_nothing_left()

    def private_dev_shm(self, size):
        """A command prefix that runs a command with its own /dev/shm of size (a tmpfs in a
        private mount namespace); then in_it(pid) joins that namespace. Skips where that
        cannot be done (root only)."""
        prefix = ["unshare", "-m", "sh", "-c", f'mount -t tmpfs -o size={size} tmpfs /dev/shm '
                  '&& exec "$@"', "sh"]
        if not shutil.which("nsenter") or subprocess.run(
                [*prefix, "true"], capture_output=True).returncode != 0:
            self.skipTest("cannot mount a tmpfs in a private namespace here (root only)")
        return prefix

    def test_no_room_left_in_dev_shm(self):
        # A full /dev/shm: posix_fallocate fails with ENOSPC.
        loader = self.typing_loader(prefix=self.private_dev_shm("4m"))
        inside = ["nsenter", f"--mount=/proc/{loader.pid}/ns/mnt"]
        self.assert_old_text_stays(loader, "y" * (5 << 20), "No space left on device",
                                   prefix=inside)

    def test_no_address_space_to_attach_a_system_v_segment(self):
        # Encoded in 4N bytes, it fits; attached (shmat), 2N more do not: ENOMEM.
        n = 30 << 20
        limit = self.base_size("--sysv") + 5 * n
        loader = self.typing_loader("--sysv", limit=(resource.RLIMIT_AS, limit))
        self.assert_old_text_stays(loader, "y" * n, "Cannot allocate memory", ("--sysv",))

    def private_ipc(self, *settings):
        """A command prefix that runs a command in its own IPC namespace, with settings
        (kernel.NAME=VALUE) there; skips where that cannot be done (root only)."""
        sets = " && ".join(f"echo {value} > /proc/sys/kernel/{name}"
                           for name, value in (setting.split("=") for setting in settings))
        prefix = ["unshare", "--ipc", "sh", "-c", f'{sets} && exec "$@"', "sh"]
        if not shutil.which("nsenter") or subprocess.run(
                [*prefix, "true"], capture_output=True).returncode != 0:
            self.skipTest("cannot make an IPC namespace here (root only)")
        return prefix

    @needs_system_v
    def test_a_system_v_segment_over_the_size_limit(self):
        # shmget fails with EINVAL over kernel.shmmax: the old segment, gone from the key
        # by then, is put back from the loader's own mapping of it.
        loader = self.typing_loader("--sysv", prefix=self.private_ipc("shmmax=1048576"))
        inside = ["nsenter", f"--ipc=/proc/{loader.pid}/ns/ipc"]
        self.assert_old_text_stays(loader, "y" * (1 << 20), "Invalid argument", ("--sysv",),
                                   inside)

    @needs_system_v
    def test_no_system_v_segment_id_left(self):
        # kernel.shmmni=1: the old segment holds the only id while the loader maps it, so
        # the new one cannot be made (ENOSPC), nor a copy of the old one beside it: the old
        # text is copied out, its segment let go, and made again.
        loader = self.typing_loader("--sysv", prefix=self.private_ipc("shmmni=1"))
        inside = ["nsenter", f"--ipc=/proc/{loader.pid}/ns/ipc"]
        self.type_line(loader, "second")
        said = self.wait_line(loader, stderr=True)
        self.assertIn("that line was not loaded: cannot make a 16-byte segment", said)
        self.assertIn("No space left on device; the old text stays", said)
        self.assertEqual(self.run_script(script=VIEWER, prefix=inside), (0, b"first\n", ""))
        self.assert_qt_reads("first", True, inside)
        subprocess.run([*inside, "sh", "-c", "echo 16 > /proc/sys/kernel/shmmni"], check=True)
        self.load_line(loader, "next")
        self.assertEqual(self.run_script(script=VIEWER, prefix=inside)[:2], (0, b"next\n"))
        loader.stdin.close()
        self.assertEqual(self.finish(loader)[0], 1)
        self.assert_nothing_left()

    def test_a_loader_killed_while_it_replaces_a_posix_text_leaves_the_old_one(self):
        loader = self.typing_loader()
        self.type_line(loader, "y" * (32 << 20))
        deadline = time.monotonic() + TIMEOUT
        while not self.unfinished() and time.monotonic() < deadline:
            time.sleep(0.0005)
        loader.kill()  # while it writes the new segment, under both locks
        loader.wait()
        self.assertTrue(self.unfinished(), "the kill came too late")
        status, out, err = self.show()
        self.assertEqual((status, out), (0, b"first\n"))
        self.assertEqual(err, f"show_shared.py: Qt's lock on /{self.key} was left taken by "
                              f"load_shared.py (pid {loader.pid}), a process of ours that died "
                              f"inside it; taking its place\nshow_shared.py: note: load_shared.py "
                              f"(pid {loader.pid}), which loaded this text, is gone; the next "
                              "load_shared.py replaces it\n")
        self.assert_qt_reads("first")
        second = self.start_loader("next")  # it clears what the dead one left
        self.assertEqual(self.unfinished(), [])
        self.assert_shows("next")
        self.stop(second)
        self.assert_nothing_left()

    def test_a_reader_that_attaches_before_it_locks_never_finds_the_key_empty(self):
        # The article's reader attaches, and only then locks: between a loader's removal of
        # the old segment and its making of the new one, it would find nothing. Where a new
        # POSIX segment takes the old one's name at once, there is no such moment.
        loader = self.typing_loader()
        code = ("import _posixshmem, os, sys\nprint('ready', flush=True)\nmissed = 0\n"
                "while not os.path.exists(sys.argv[2]):\n    try:\n"
                "        os.close(_posixshmem.shm_open(sys.argv[1], os.O_RDONLY))\n"
                "    except FileNotFoundError:\n        missed += 1\nprint(missed)")
        done = os.path.join(self.tmpdir, "done")
        reader = self.start_command([sys.executable, "-c", code, f"/{self.key}", done])
        self.assertEqual(self.wait_line(reader), "ready\n")
        for n in range(300):  # while it looks
            self.load_line(loader, f"text {n}")
        open(done, "w").close()
        status, out, err = self.finish(reader)
        self.assertEqual((status, out), (0, b"0\n"), err)
        loader.stdin.close()
        self.assertEqual(self.finish(loader)[0], 0)


class EachKindTests:
    """Tests that run for each kind of segment, as QtPeerTests runs for Qt 5 and Qt 6: for
    the POSIX segment /KEY (PosixKindTest) and for Qt's System V segment (SystemVKindTest,
    with load_shared.py --sysv)."""
    sysv = None  # the loader's options for the kind: () or ("--sysv",)

    def kind(self):
        return self.segment_kind(bool(self.sysv))

    def make_foreign_segment(self, data):
        """A segment under our key, made and written by hand, as a Qt program (or a vandal)
        would, and left there (a System V one with nobody attached)."""
        if not self.sysv:
            if data:
                self.write_segment(data)
            else:  # SharedMemory will not make a 0-byte segment; shm_open will
                os.close(_posixshmem.shm_open("/" + self.key, os.O_CREAT | os.O_RDWR, 0o600))
            return
        segment = self.kind().make(len(data))
        segment.buf[:len(data)] = data
        segment.close()

    def foreign_segment_bytes(self):
        segment = self.kind().attach(writable=False)
        try:
            return bytes(segment.buf)
        finally:
            segment.close()

    def test_texts_round_trip_and_nothing_is_left(self):
        for text in ("hello", "Grüße, ça va? Ωμέγα", "😀 and 𝄞", "tab\there", "two\nlines", ""):
            with self.subTest(text=text):
                loader = self.start_loader(*self.sysv, text)
                self.assert_shows(text)
                if self.sysv:
                    status = shmcodec.shm_status(self.kind().shmid())
                    self.assertEqual((status.nattch, status.mode & 0o777, status.cpid),
                                     (1, 0o600, loader.pid))  # the loader stays attached
                    self.assertEqual(os.stat(self.kind().key_file.path).st_mode & 0o777, 0o640)
                self.stop(loader)
                self.assert_nothing_left()

    def test_lines_replace_the_text(self):
        loader = self.start(*self.sysv, stdin=subprocess.PIPE)
        for text in ("first", "a longer second text", "3", "", "fünf 😀"):
            self.type_line(loader, text)
            self.assertEqual(self.wait_line(loader), f"Loaded {len(shmcodec.encode_qstring(text))} "
                                                     f"bytes into {self.kind().label}\n")
            self.assert_shows(text)
        loader.stdin.close()  # end of input: release and exit 0
        self.assertEqual(self.finish(loader)[:2], (0, b""))
        self.assert_nothing_left()

    def test_sigkill_while_holding_does_not_block_the_next_run(self):
        loader = self.start_loader(*self.sysv, "survivor")
        loader.kill()
        loader.wait()
        if self.sysv:
            self.assertEqual(self.kind().users(), 0)  # an orphan: nobody attached
        status, out, err = self.show()  # still shows the text, and says its loader is gone
        self.assertEqual((status, out), (0, b"survivor\n"))
        self.assert_one_line(err, "gone", f"pid {loader.pid}")
        self.assertIsNotNone(self.kind().users())
        second = self.start_loader(*self.sysv, "next")
        self.assertIn(f"left behind by load_shared.py (pid {loader.pid})",
                      second.stderr.readline().decode())
        self.assert_shows("next")
        self.stop(second, signal.SIGHUP)
        self.assert_nothing_left()

    def test_garbage_segments_are_reported_and_left_alone(self):
        rng = random.Random(3)
        cases = {
            "random bytes": (bytes(rng.randrange(256) for _ in range(64)), "holds no QString"),
            "count past the end": (bytes.fromhex("0000fffe00410042"), "past the end"),
            "odd count": (bytes.fromhex("000000070041"), "odd byte count 7"),
            "3 bytes": (b"\0\0\0", "cut short"),
            "0 bytes": (b"", "0 of 4 bytes"),  # (a System V segment has a byte at least)
        }
        for name, (data, words) in cases.items():
            if self.sysv and not data:
                continue
            with self.subTest(name):
                self.addCleanup(self.kind().remove)
                self.make_foreign_segment(data)
                status, out, err = self.show()
                self.assert_failed(status, out, err, words, self.kind().label)
                status, out, err = self.show("--hex")  # the bytes, and what is wrong
                self.assertEqual(status, 1)
                if len(data) >= 4:
                    self.assertIn(f"00000000  {data[:2].hex()} {data[2:4].hex()}", out.decode())
                self.assertEqual(self.foreign_segment_bytes(), data)  # untouched
                self.kind().remove()

    def test_hex_says_what_and_where(self):
        self.start_loader(*self.sysv, "Grüße 😀\nb")
        status, out, err = self.show("--hex")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out.decode().splitlines(), [
            f"segment    {self.key} (System V), 24 bytes" if self.sysv else
            f"segment    /{self.key}, 24 bytes",
            "count      00000014 = 20 bytes = 10 UTF-16 code units",
            "00000004  0047 0072 00fc 00df 0065 0020 d83d de00  Grüße 😀",
            "00000014  000a 0062                                \\nb"])

    def load_steps(self, sysv):  # POSIX: made beside the old text, then put in place
        return ["our lock file", "own()", "logbook", "Qt's lock", "lock(), our half",
                "lock(), Qt's half", "logbook", "create(14)", "memcpy(to, from, size)",
                "logbook" if sysv else "put in place", "unlock(), Qt's half",
                "unlock(), our half"]

    def release_steps(self, sysv):  # Qt's lock is removed while we hold it
        return ["detach()", "remove", "logbook", "Qt's lock"]

    def show_steps(self, sysv):  # the article's order: attach, then lock
        return ["attach()", "Qt's lock", "our lock file", "lock(), our half",
                "lock(), Qt's half", "QDataStream >> text", "unlock(), Qt's half",
                "unlock(), our half", "detach()"]

    def steps(self, err, script):
        """The step names that script told, in order (the column after "script: ")."""
        return [line[len(script) + 2:][:24].rstrip() for line in err.splitlines()
                if line.startswith(script + ": ") and line[len(script) + 2:][:24].strip()
                and len(line) > len(script) + 27]

    def test_sigkill_while_writing_shows_no_half_text(self):
        self.kill_while_writing(*self.sysv)
        status, out, err = self.show()  # at once: it does not wait for Qt's lock
        self.assertEqual((status, out), (1, b""))
        # System V: its segment may hold half a text (or be not made yet). POSIX: none is
        # under the key.
        self.assert_one_line(err, "nothing loaded" if not self.sysv or "nothing" in err else
                             "died while writing")
        second = self.start_loader(*self.sysv, "whole")
        self.assert_shows("whole")
        second.send_signal(signal.SIGINT)
        self.assertEqual(self.finish(second)[0], 0)
        self.assert_nothing_left()


    def test_stop_signals_end_a_loader_behind_a_stopped_viewer(self):
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with self.subTest(signal=signum):
                loader = self.start_typing(*self.sysv)
                viewer = self.viewer_stopped_holding_our_lock(self.sysv)
                loader.stdin.write(b"second\n")
                loader.stdin.flush()
                self.assertIn("waiting for the lock", self.wait_line(loader, stderr=True))
                loader.send_signal(signum)
                status, out, err = self.finish(loader, timeout=10)
                self.assertEqual((status, out), (1, b""))
                note, failure = err.splitlines()  # it leaves Qt's lock, and says so
                self.assertIn("leaving Qt's lock", note)
                self.assert_one_line(failure, "stopped before the text was loaded")
                self.assertIsNone(self.segment_kind(self.sysv).users())  # released all it owned
                viewer.send_signal(signal.SIGCONT)
                status, out, err = self.finish(viewer)
                self.assertNotIn("Traceback", err)
                self.stop(self.start_loader(*self.sysv, "next"))  # it removes Qt's lock
                self.assert_nothing_left()


    def test_load_and_show_tell_their_steps_in_order(self):
        loader = self.start_loader("--verbose", *self.sysv, "Hello")
        status, out, err = self.show("--verbose")
        self.assertEqual((status, out), (0, b"Hello\n"))  # stdout as without it
        self.assertEqual(self.steps(err, "show_shared.py"), self.show_steps(self.sysv))
        self.assertIn("shmat(SHM_RDONLY)" if self.sysv else "mmap(PROT_READ)", err)
        loader.send_signal(signal.SIGINT)
        status, out, err = self.finish(loader)
        self.assertEqual((status, out), (0, b""))
        self.assertEqual(self.steps(err, "load_shared.py"),
                         self.load_steps(self.sysv) + self.release_steps(self.sysv))
        tag = "sysv" if self.sysv else "posix"
        self.assertEqual([line.split(maxsplit=2)[2].split(" in our")[0]
                          for line in err.splitlines() if " logbook " in line],
                         ["(empty)", *([f"{loader.pid} writing {tag}"] if self.sysv else []),
                          f"{loader.pid} loaded {tag}", "(empty)"])
        self.assertIn("shmctl(IPC_RMID)" if self.sysv else "shm_unlink", err)
        self.assert_nothing_left()


    def test_loader_says_it_waits_for_a_stopped_viewer(self):
        loader = self.start_typing(*self.sysv)
        viewer = self.viewer_stopped_holding_our_lock(self.sysv)
        loader.stdin.write(b"second\n")
        loader.stdin.flush()
        started = time.monotonic()
        said = self.wait_line(loader, stderr=True)
        self.assertLess(time.monotonic() - started, 5)
        self.assertIn(f"waiting for the lock on key {self.key!r}", said)
        self.assertIn(f"held by show_shared.py (pid {viewer.pid})", said)
        self.assertTrue(self.still_running(loader))  # it goes on waiting
        viewer.send_signal(signal.SIGCONT)
        self.assertEqual(self.finish(viewer)[:2], (0, b"first\n"))
        self.assertRegex(self.wait_line(loader), "^Loaded ")
        self.assert_shows("second")
        loader.stdin.close()
        status, out, err = self.finish(loader)
        self.assertEqual(status, 0)
        self.assertNotIn("waiting for", err)  # said once, however long it waited
        self.assert_nothing_left()



    def test_every_touch_of_qt_lock_leaves_a_living_holder_inside(self):
        # Our code opens Qt's lock, makes it (as Qt's create() does), waits for it, gives it
        # back, and removes it; none of these lets a second process in while a Qt program is
        # inside, of either kind.
        if self.sysv:  # a lock that a Qt program left, and a Qt program inside it
            shmcodec_in(self.tmpdir, lambda: self.segment_kind(True).open_lock(create=True))
        else:
            self.make_qt_posix_lock()
        holder = self.hold_qt_lock(sysv=bool(self.sysv))
        waiter = self.lock_peer("hold", sysv=bool(self.sysv))  # another Qt program in line
        with self.one_at_a_time(bool(self.sysv)):
            loader = self.start(*self.sysv, "ours")  # create(): it keeps the lock there
            self.assertIn("waiting for Qt's lock", self.wait_line(loader, stderr=True))
            self.assertTrue(self.still_running(loader, 2), "it wrote while Qt was inside")
            started = time.monotonic()
            loader.terminate()  # it quits, and removes Qt's lock only while holding it
            status, out, err = self.finish(loader)
            self.assertLess(time.monotonic() - started, 2)  # within a second, as every wait
            self.assertEqual((status, out), (1, b""))
            self.assertIn("stopped before the text was loaded", err)
            self.assertIn("leaving Qt's lock on", err)
            self.assertIn("in place: it is held by another process", err)
            self.assertTrue(self.still_running(waiter, 1), "the waiter was let in")
            self.let_go(holder)
            self.assertEqual(self.wait_line(waiter), "inside\n")
            self.let_go(waiter)
            self.assertEqual(self.finish(waiter)[0], 0)  # it says "out", then unlocks
        self.assertEqual(self.semaphore_value(bool(self.sysv)), 1)  # left in place, free
        # At the end of input, a loader waits for the holder, to remove its lock.
        loader = self.start_typing(*self.sysv)
        holder = self.hold_qt_lock(sysv=bool(self.sysv))
        with self.one_at_a_time(bool(self.sysv)):
            loader.stdin.close()
            self.assertIn("waiting for Qt's lock", self.wait_line(loader, stderr=True))
            waiter = self.lock_peer("hold", sysv=bool(self.sysv))  # in line behind it
            self.assertTrue(self.still_running(loader, 1))
            self.let_go(holder)
            # The waiter gets in before the loader (then the loader waits for it
            # too), or after: by the lock given back, or its set gone.
            self.assertEqual(self.wait_line(waiter), "inside\n")
            self.let_go(waiter)
            self.assertEqual(self.finish(loader)[0], 0)
        self.assert_nothing_left()


    def test_no_memory_to_encode_the_text(self):
        # A line of N characters: read and decoded in 2N bytes, encoded in 2N more.
        n = 30 << 20
        limit = self.base_size(*self.sysv) + 3 * n
        loader = self.typing_loader(*self.sysv, limit=(resource.RLIMIT_AS, limit))
        self.assert_old_text_stays(loader, "y" * n, "not enough memory for the text",
                                   self.sysv)


class PosixKindTest(EachKindTests, ProcessTestCase):
    """EachKindTests for the POSIX segment /KEY, Qt 6's platformSafeKey."""
    sysv = ()


@needs_system_v
class SystemVKindTest(EachKindTests, ProcessTestCase):
    """EachKindTests for Qt's System V segment: the article's plain key, Qt 5's."""
    sysv = ("--sysv",)


class TwoUsersCase(ProcessTestCase):
    """Two real users on one machine, as in a classroom lab: made for these tests (they
    need root), removed after them. They run a copy of the scripts that they may read,
    with the system's Python (root's pyenv may be closed to them), and share a temporary
    directory, as they would share /tmp."""

    python = "/usr/bin/python3"

    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0 or not os.access(cls.python, os.X_OK) or not all(
                shutil.which(command) for command in ("useradd", "userdel", "setpriv")):
            raise unittest.SkipTest("needs root, useradd, setpriv and /usr/bin/python3")
        import pwd
        cls.users = []
        cls.scripts = tempfile.mkdtemp(prefix="test_roundtrip-scripts-")
        try:
            for letter in "ab":
                name = f"qshm{letter}{os.getpid()}"
                subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin",
                                name], check=True, capture_output=True)
                cls.users.append(pwd.getpwnam(name))
            os.chmod(cls.scripts, 0o755)
            for script in ("load_shared.py", "show_shared.py", "shmcodec.py"):
                shutil.copy(os.path.join(HERE, script), cls.scripts)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        for user in cls.users:
            subprocess.run(["userdel", user.pw_name], capture_output=True)
        shutil.rmtree(cls.scripts)

    def setUp(self):
        super().setUp()
        os.chmod(self.tmpdir, 0o1777)  # everyone's, like /tmp

    @staticmethod
    def as_(user):
        """The command prefix that runs a command as user, in place."""
        return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups"]

    def as_user(self, user, script, *args, stdin=subprocess.DEVNULL):
        """Start script as user, in the background."""
        return self.start_command([*self.as_(user), self.python, os.path.join(self.scripts, script),
                                   "--key", self.key, *args], stdin=stdin, cwd=self.scripts)

    def load_as(self, user, *args):
        loader = self.as_user(user, "load_shared.py", *args)
        self.assertRegex(self.wait_line(loader), "^Loaded ")
        return loader

    def run_as(self, user, script, *args):
        return self.finish(self.as_user(user, script, *args))



class TwoUsersTest(TwoUsersCase):
    """What two users on one machine see of each other's segments, locks and files."""

    def test_another_users_qt_lock_alone_is_refused_too(self):
        a, b = self.users
        for sysv, kind in (((), "Posix"), (("--sysv",), "SystemV")):
            with self.subTest(kind):
                # A program of a's made Qt's lock for the key, and died without removing it.
                code = f"import shmcodec; shmcodec.{kind}({self.key!r}).open_lock(create=True)"
                self.assertEqual(self.as_python(a, code), 0)
                status, out, err = self.run_as(b, "load_shared.py", *sysv, "--replace", "mine")
                self.assert_failed(status, out, err, "Qt's lock", f"belongs to user {a.pw_name}")
                theirs = shmcodec_in(self.tmpdir, functools.partial(getattr(shmcodec, kind),
                                                                   self.key))
                self.assertEqual({owned[1] for owned in theirs.others()}, {a.pw_uid})  # untouched

    def test_names_beside_the_key_squatted_by_another_user_cost_nothing(self):
        # b makes the names a's loader makes a new text under: the old fixed one, and the
        # random one that a's loader (forced here) draws first. It draws another.
        a, b = self.users
        planted = [f"/dev/shm/{self.key}\x7f", f"/dev/shm/{self.key}\x7f{'00' * 8}"]
        for path in planted:
            self.plant(b, path, lambda path: open(path, "w").close())
        first_draw = ("import os\nreal = os.urandom\ndef urandom(n, drawn=[]):\n"
                      "    drawn.append(n)\n    return bytes(n) if len(drawn) == 1 else real(n)\n"
                      "os.urandom = urandom")
        loader = self.start_command([*self.as_(a), self.python, "-c", FORCED, first_draw,
                                     os.path.join(self.scripts, "load_shared.py"), "--key",
                                     self.key], stdin=subprocess.PIPE, cwd=self.scripts)
        for text in ("one", "two"):
            self.load_line(loader, text)
            self.assertEqual(self.run_as(a, "show_shared.py"), (0, text.encode() + b"\n", ""))
        loader.stdin.close()
        self.assertEqual(self.finish(loader)[::2], (0, ""))
        self.assertEqual([os.lstat(path).st_uid for path in planted], [b.pw_uid] * 2)

    @needs_system_v
    def test_system_v_keys_made_to_collide_are_refused_and_left_alone(self):
        # ftok() keeps 16 bits of a key file's inode, and a new file's inode can be guessed
        # (here: a freed one is given again). In a private IPC namespace, b makes sets and
        # segments, mode 0666, for the IPC keys of the next inodes; then a's loader, and
        # root's, make their key files: both name b in one line, exit 1 and touch nothing.
        a, b = self.users
        for table in ("sem", "shm"):  # Qt's lock (own() opens it), then the segment (load())
            with self.subTest(table):
                for _ in range(5):  # a guess may miss, as other programs make files too
                    lines, result = self.collide_and_load(a, b, table)
                    if not any(line.startswith("Loaded") for line in lines):
                        break
                told = [line for line in lines
                        if re.fullmatch(r"(loader|root) \d+|untouched", line)]
                said = [line for line in lines if line not in told]
                self.assertEqual(told, ["loader 1", "root 1", "untouched"],
                                 result.stdout + result.stderr)
                self.assertEqual(len(said), 2, result.stdout)  # one line each
                for line in said:
                    self.assertIn(f"belongs to user {b.pw_name}", line)
                self.assertEqual([name for name in os.listdir(self.tmpdir)
                                  if name.startswith("qipc_")], [])

    def collide_and_load(self, a, b, table):
        """In a private IPC namespace: b makes sets or segments (table) for the next 1,024
        inodes' IPC keys, then a's loader and root's try our key (for 10 s at the most: a
        guess that missed lets them load). Their output, and whether b's are untouched."""
        probe = os.path.join(self.tmpdir, "probe")
        open(probe, "w").close()
        inode, device = os.stat(probe).st_ino, os.stat(probe).st_dev
        os.unlink(probe)  # the next inodes, freed or new: 1024 of them, as others make files
        collide = ("import ctypes, sys\nlibc = ctypes.CDLL(None)\nfirst, device = map(int, "
                   "sys.argv[1:3])\nfor inode in range(first, first + 1024):\n"
                   "    key = (inode & 0xFFFF) | (device & 0xFF) << 16 | ord('Q') << 24\n"
                   f"    libc.{table}get(key, 1, 0o1666)\n")
        listing, before = "cat /proc/sysvipc/shm /proc/sysvipc/sem", f"{self.tmpdir}/before"

        def shell(user, *args):  # one command of the script, as user (None: root)
            return shlex.join([*(self.as_(user) if user else ()), self.python, *args])
        script = "; ".join([
            shell(b, "-c", collide, str(inode), str(device)),
            f"{listing} > {before}",
            "timeout 10 " + shell(a, "load_shared.py", "--key", self.key, "--sysv", "-") +
            " </dev/null 2>&1",
            "echo loader $?",
            "timeout 10 " + shell(None, "load_shared.py", "--key", self.key, "--sysv",
                                  "--replace", "-") + " </dev/null 2>&1",
            "echo root $?",
            f"{listing} | cmp -s - {before} && echo untouched"])
        result = subprocess.run(["unshare", "--ipc", "sh", "-c", script], cwd=self.scripts,
                                capture_output=True, text=True, timeout=TIMEOUT, env=self.env)
        return result.stdout.splitlines(), result

    def test_a_planted_lock_directory_is_refused_and_left_alone(self):
        a, b = self.users
        place = os.path.join(self.tmpdir, f"qshm-{a.pw_uid}")  # where a keeps lock files

        def owned_by(user, make, mode=None):
            def plant():
                make()
                os.lchown(place, user.pw_uid, user.pw_gid)
                if mode:
                    os.chmod(place, mode)
            return plant
        elsewhere = tempfile.mkdtemp(dir=self.tmpdir)
        os.chown(elsewhere, a.pw_uid, a.pw_gid)  # a's own directory, mode 0700
        plants = {
            "a's symlink, to a's own directory": owned_by(a, lambda: os.symlink(elsewhere, place)),
            "b's directory": owned_by(b, lambda: os.mkdir(place, 0o700)),
            "b's file": owned_by(b, lambda: open(place, "w").close()),
            "b's symlink": owned_by(b, lambda: os.symlink(elsewhere, place)),
            "a's directory, open to all": owned_by(a, lambda: os.mkdir(place), 0o777),
        }
        for name, plant in plants.items():
            with self.subTest(name):
                plant()
                before = os.lstat(place)
                for script in ("load_shared.py", "show_shared.py"):
                    if script == "show_shared.py":  # a's segment and Qt's lock to read
                        self.as_python(a, f"import shmcodec; m = shmcodec.Posix({self.key!r}); "
                                          "m.make(8).close(); m.open_lock(True)")
                    status, out, err = self.run_as(a, script, "text")[:3] \
                        if script == "load_shared.py" else self.run_as(a, script)
                    self.assert_failed(status, out, err, place, "refusing")
                self.unlink_segment()
                after = os.lstat(place)
                self.assertEqual((after.st_mode, after.st_uid, after.st_mtime_ns),
                                 (before.st_mode, before.st_uid, before.st_mtime_ns))
                self.assertFalse(self.segment_exists())
                (shutil.rmtree if name.endswith("directory") and "symlink" not in name or
                 name.endswith("all") else os.unlink)(place)

    def as_python(self, user, code):
        """Run Python code as user, with shmcodec at hand; return its exit status."""
        return self.finish(self.start_command([*self.as_(user), self.python, "-c", code],
                                              cwd=self.scripts))[0]

    def plant(self, user, path, make):
        """make(path) as root, then give it to user, as if they had put it there."""
        make(path)
        os.lchown(path, user.pw_uid, user.pw_gid)
        self.addCleanup(lambda: os.path.lexists(path) and os.unlink(path))
        return os.lstat(path)

    def test_planted_key_files_and_semaphore_links_are_refused_and_kept(self):
        a, b = self.users
        system_v = self.segment_kind(sysv=True)
        target = os.path.join(self.tmpdir, "another-programs-file")
        open(target, "w").close()
        plants = {  # where, how, which loader
            "a's regular key file": (system_v.key_file.path, lambda p: open(p, "w").close(),
                                     "--sysv"),
            "a's key file symlink": (system_v.key_file.path, lambda p: os.symlink(target, p),
                                     "--sysv"),
            "a's key file FIFO": (system_v.key_file.path, lambda p: os.mkfifo(p, 0o644), "--sysv"),
            "a's lock key file": (system_v.lock_key_file.path, lambda p: open(p, "w").close(),
                                  "--sysv"),
            "a's semaphore symlink": (f"/dev/shm/sem.{self.key}",
                                      lambda p: os.symlink(target, p), None),
        }
        for name, (path, make, sysv) in plants.items():
            with self.subTest(name):
                before = self.plant(a, path, make)
                for who in ("root", b.pw_name):
                    args = [arg for arg in (sysv, "mine") if arg]
                    status, out, err = self.run_script(*args, script=LOADER) if who == "root" \
                        else self.run_as(b, "load_shared.py", *args)
                    self.assertEqual((status, out), (1, b""), who)
                    self.assert_one_line(err, path, f"belongs to user {a.pw_name}")
                    after = os.lstat(path)
                    self.assertEqual((after.st_mode, after.st_uid, after.st_ino, after.st_mtime_ns),
                                     (before.st_mode, before.st_uid, before.st_ino,
                                      before.st_mtime_ns))
                    self.assert_nothing_left_but(path)
                os.unlink(path)

    def assert_nothing_left_but(self, planted):
        self.assertFalse(self.segment_exists())
        self.assertEqual(self.system_v_left(), set())
        self.assertEqual([name for name in os.listdir(self.tmpdir) if name.startswith("qipc_")
                          and os.path.join(self.tmpdir, name) != planted], [])

    def test_a_swapped_key_file_never_turns_the_loader_against_another_program(self):
        a, b = self.users
        other_key = self.key + "-other"
        other = shmcodec_in(self.tmpdir, lambda: shmcodec.SystemV(other_key))
        theirs = other.make(16)  # another program's segment, which it holds
        self.addCleanup(lambda: (theirs.close(), other.remove()))
        theirs.buf[:14] = shmcodec.encode_qstring("other")
        loader = self.as_user(b, "load_shared.py", "--sysv", stdin=subprocess.PIPE)
        self.load_line(loader, "first")
        own = self.segment_kind(sysv=True)
        first_shmid = own.shmid()
        # Mallory swaps b's key file for a symlink to the other program's (in a sticky
        # directory only root could; the point is what b's loader does next).
        os.unlink(own.key_file.path)
        self.plant(a, own.key_file.path, lambda p: os.symlink(other.key_file.path, p))
        loader.stdin.write(b"second\n")
        loader.stdin.close()
        status, out, err = self.finish(loader)
        self.assert_failed(status, out, err, own.key_file.path, "symlink")
        self.assertEqual(bytes(theirs.buf[:14]), shmcodec.encode_qstring("other"))
        self.assertEqual(other.users(), 1)  # still there, untouched
        self.assertNotIn(("shm", first_shmid), system_v_objects())  # b's own was removed
        self.assertTrue(os.path.islink(own.key_file.path))  # and the symlink left alone
        os.unlink(own.key_file.path)
        # The same with a regular file of Mallory's in its place: never a key of ours.
        loader = self.as_user(b, "load_shared.py", "--sysv", stdin=subprocess.PIPE)
        self.load_line(loader, "first")
        os.unlink(own.key_file.path)
        before = self.plant(a, own.key_file.path, lambda p: open(p, "w").close())
        loader.stdin.write(b"second\n")
        loader.stdin.close()
        status, out, err = self.finish(loader)
        self.assert_failed(status, out, err, own.key_file.path, f"belongs to user {a.pw_name}")
        self.assertEqual(os.lstat(own.key_file.path).st_ino, before.st_ino)
        self.assertEqual(self.system_v_left(), {("shm", other.shmid())})  # b's are gone

    def test_one_key_one_user_whichever_kind(self):
        a, b = self.users
        for first, second in (((), ("--sysv",)), (("--sysv",), ())):
            with self.subTest(first=first):
                loader = self.load_as(a, *first, "hers")
                kind = f"segment {self.segment_kind(bool(first)).label} "
                for who in ("root", b.pw_name):
                    status, out, err = self.run_script(*second, "mine", script=LOADER) \
                        if who == "root" else self.run_as(b, "load_shared.py", *second, "mine")
                    self.assertEqual((status, out), (1, b""), who)
                    self.assert_one_line(err, kind, f"belongs to user {a.pw_name}")
                self.stop(loader)
                self.assert_nothing_left()
        # Your own text is never hidden behind another user's segment of the other kind.
        loader = self.load_as(b, "--sysv", "mine")
        code = ("from multiprocessing.shared_memory import SharedMemory; "
                f"SharedMemory({self.key!r}, create=True, size=8).close()")
        self.assertEqual(self.as_python(a, code), 0)  # a's /KEY appears beside it
        self.assertEqual(self.run_as(b, "show_shared.py"), (0, b"mine\n", ""))
        loader.terminate()
        self.finish(loader)
        self.unlink_segment()

    def test_another_users_dead_loader_is_named_with_the_way_out(self):
        a, b = self.users
        for sysv, removal in (((), f"rm /dev/shm/{self.key}"), (("--sysv",), "ipcrm -m ")):
            with self.subTest(sysv=sysv):
                loader = self.load_as(a, *sysv, "hers")
                loader.kill()
                loader.wait()
                for who in ("root", b.pw_name):
                    status, out, err = self.run_script(*sysv, "mine", script=LOADER) \
                        if who == "root" else self.run_as(b, "load_shared.py", *sysv, "mine")
                    self.assertEqual((status, out), (1, b""), who)
                    self.assert_one_line(err, f"belongs to user {a.pw_name}", removal)
                    if sysv:
                        self.assertIn("nobody is attached to it (its loader is gone)", err)
                command = err.split("(root: ")[1].split("); ")[0]  # what the line tells root
                subprocess.run(command, shell=True, check=True)
                loader = self.load_as(b, *sysv, "mine")
                self.assertEqual(self.run_as(b, "show_shared.py"), (0, b"mine\n", ""))
                self.stop(loader)
                self.assert_nothing_left()

    def test_an_ordinary_user_never_robs_a_holder_and_proves_only_its_own_deaths(self):
        a, b = self.users
        loader = self.as_user(a, "load_shared.py", stdin=subprocess.PIPE)
        self.load_line(loader, "first")
        for who, options in (("a's own, made non-dumpable (as a setuid program is)",
                              ("--nondumpable",)), ("root's", ())):
            with self.subTest(f"a living Qt program of {who} inside a's lock"):
                holder = self.hold_qt_lock(*options, prefix=self.as_(a) if who.startswith("a")
                                           else (), python=self.python)
                viewer = self.as_user(a, "show_shared.py")
                said = self.wait_line(viewer, stderr=True)
                self.assertIn("held by a program that is not one of ours", said)
                self.assertTrue(self.still_running(viewer, 3), "a's viewer robbed a living holder")
                self.let_go(holder)
                self.assertEqual(self.finish(viewer)[:2], (0, b"first\n"))
        with self.subTest("a dead Qt program's lock stays taken, and a is told what to do"):
            holder = self.hold_qt_lock(prefix=self.as_(a), python=self.python)
            holder.kill()
            holder.wait()
            viewer = self.as_user(a, "show_shared.py")
            said = self.wait_line(viewer, stderr=True)
            self.assertIn(f"rm /dev/shm/sem.{self.key}", said)
            self.assertTrue(self.still_running(viewer, 3),
                            "an ordinary user took a guess for a proof")
            viewer.kill()  # what the line says: quit what uses the key, remove the lock
            self.stop(loader)
            subprocess.run([*self.as_(a), "rm", f"/dev/shm/sem.{self.key}"], check=True)
            loader = self.load_as(a, "again")
            self.assertEqual(self.run_as(a, "show_shared.py"), (0, b"again\n", ""))
            self.stop(loader)
            self.assert_nothing_left()
        with self.subTest("a's own viewer, killed inside a's lock: proven dead at once"):
            with tempfile.TemporaryFile() as source:
                source.write(b"x" * BIG)
                source.seek(0)
                loader = self.as_user(a, "load_shared.py", "-", stdin=source)
            self.assertRegex(self.wait_line(loader), "^Loaded ")
            viewer = self.viewer_stopped_inside_qt_lock(
                start=lambda: self.as_user(a, "show_shared.py", "--verbose"))
            os.kill(viewer.pid, signal.SIGKILL)
            status, out, err = self.finish(self.as_user(a, "show_shared.py"))
            self.assertEqual((status, len(out)), (0, BIG + 1))
            self.assertIn(f"left taken by show_shared.py (pid {viewer.pid}), a process of ours "
                          "that died inside it", err)
            self.stop(loader)
            self.assert_nothing_left()

    def test_a_fifo_in_the_segments_place_is_one_line_for_everyone(self):
        a, b = self.users
        self.plant(a, self.segment_path, lambda p: os.mkfifo(p, 0o644))
        for who in ("root", a.pw_name, b.pw_name):
            with self.subTest(who):
                status, out, err = self.finish(self.start(script=VIEWER), timeout=10) \
                    if who == "root" else self.run_as(a if who == a.pw_name else b,
                                                      "show_shared.py")
                self.assert_failed(status, out, err, f"/{self.key}")


class TwoUsersEachKindTests:
    """Two users take turns under one key, and never touch each other's, for each kind."""
    sysv = None

    def test_users_take_turns(self):
        a, b = self.users
        for user in (a, b, b, a):
            with self.subTest(user=user.pw_name):
                loader = self.load_as(user, *self.sysv, f"from {user.pw_name}")
                self.assertEqual(self.run_as(user, "show_shared.py"),
                                 (0, f"from {user.pw_name}\n".encode(), ""))
                loader.terminate()
                status, out, err = self.finish(loader)
                self.assertEqual(status, 0)
                self.assertEqual(len(err.splitlines()), 1, err)  # "holding ...", no more
                self.assert_nothing_left()


    def test_a_clash_names_the_other_user(self):
        for owner, other in (self.users, self.users[::-1]):
            with self.subTest(owner=owner.pw_name):
                loader = self.load_as(owner, *self.sysv, "mine")
                for script, args in (("load_shared.py", (*self.sysv, "theirs")),
                                     ("load_shared.py", (*self.sysv, "--replace", "theirs")),
                                     ("show_shared.py", ())):
                    status, out, err = self.run_as(other, script, *args)
                    self.assert_failed(status, out, err, "segment ",
                                       f"belongs to user {owner.pw_name}")
                self.assertEqual(self.run_as(owner, "show_shared.py"), (0, b"mine\n", ""))
                self.stop(loader)
                self.assert_nothing_left()


class PosixTwoUsersTest(TwoUsersEachKindTests, TwoUsersCase):
    sysv = ()


@needs_system_v
class SystemVTwoUsersTest(TwoUsersEachKindTests, TwoUsersCase):
    sysv = ("--sysv",)


class WatchTest(ProcessTestCase):
    """show_shared.py --watch, and QSharedMemory.waitForNew() for a Python program."""

    def watcher(self, *args):
        return self.start("--watch", *args, script=VIEWER)

    def test_each_text_is_shown_and_each_change_of_loader_told_once(self):
        watcher = self.watcher()
        self.assertIn("nothing loaded", self.wait_line(watcher, stderr=True))
        loader = self.start_typing(text="one")
        self.assertIn(f"a new load_shared.py (pid {loader.pid})",
                      self.wait_line(watcher, stderr=True))
        self.assertEqual(self.wait_line(watcher), "one\n")
        for text in ("two", "three"):
            self.load_line(loader, text)
            self.assertEqual(self.wait_line(watcher), text + "\n")
        loader.stdin.close()
        self.finish(loader)
        self.assertIn(f"load_shared.py (pid {loader.pid}) quit; nothing loaded",
                      self.wait_line(watcher, stderr=True))
        second = self.start_loader("again")
        self.assertIn(f"a new load_shared.py (pid {second.pid})",
                      self.wait_line(watcher, stderr=True))
        self.assertEqual(self.wait_line(watcher), "again\n")
        self.stop(second)
        self.assertIn("quit", self.wait_line(watcher, stderr=True))
        time.sleep(0.5)  # nothing more is said while nothing changes
        watcher.send_signal(signal.SIGINT)
        self.assertEqual(self.finish(watcher), (0, b"", ""))
        self.assert_nothing_left()

    def test_texts_with_newlines_end_with_a_nul_with_0(self):
        watcher = self.watcher("-0")
        loader = self.start_loader("two\nlines")
        read = b""
        while not read.endswith(b"\0"):
            read += os.read(watcher.stdout.fileno(), 1)
        self.assertEqual(read, b"two\nlines\0")
        self.stop(loader)
        watcher.terminate()
        self.assertEqual(self.finish(watcher)[0], 0)

    def test_a_stopped_watcher_never_blocks_the_loader(self):
        watcher = self.watcher()
        loader = self.start_typing(text="one")
        self.assertEqual(self.wait_line(watcher), "one\n")
        stop_now(watcher.pid)  # Ctrl-Z, between two looks
        for text in ("two", "three"):
            self.load_line(loader, text)  # loaded: nobody holds a lock
        os.kill(watcher.pid, signal.SIGCONT)
        self.assertEqual(self.wait_line(watcher), "three\n")  # the text there now
        watcher.terminate()  # SIGTERM: the end of watching, at once
        self.assertEqual(self.finish(watcher)[0], 0)
        self.stop(loader)

    def test_a_text_that_cannot_be_written_out_ends_the_watch_in_one_line(self):
        loader = self.start_loader("text")
        with open("/dev/full", "wb") as full:
            watcher = self.start_command([sys.executable, VIEWER, "--key", self.key, "--watch"],
                                         stdout=full)
            status, out, err = self.finish(watcher)
        self.assertEqual(status, 1)
        self.assert_one_line(err, "cannot write the text out")
        self.stop(loader)

    def test_wait_for_new_returns_each_new_segment_or_times_out(self):
        for sysv in ((), ("--sysv",)):
            with self.subTest(sysv=sysv):
                memory = shmcodec_in(self.tmpdir, lambda: shmcodec.QSharedMemory(
                    self.key if sysv else shmcodec.QSharedMemory.platformSafeKey(self.key)))
                self.assertIsNone(memory.waitForNew("", timeout=0.3))  # nothing, still
                loader = self.start_typing(*sysv, text="one")
                last = ""
                for text in ("one", "two"):
                    new = memory.waitForNew(last, timeout=TIMEOUT)
                    self.assertNotIn(new, (None, last))
                    self.assertTrue(memory.attach(memory.ReadOnly))
                    memory.lock()
                    self.assertEqual(shmcodec.decode_qstring(memory.constData()), text)
                    memory.unlock()
                    memory.detach()
                    self.assertIsNone(memory.waitForNew(new, timeout=0.3))  # the same one
                    if text == "one":
                        self.load_line(loader, "two")
                    last = new
                loader.stdin.close()
                self.assertEqual(self.finish(loader)[0], 0)
                self.assertEqual(memory.waitForNew(last, timeout=TIMEOUT), "")  # gone


class VerboseTest(ProcessTestCase):
    """--verbose tells each step of the dance as it happens; a wait is never silent."""

    # The logbook says "writing" for as long as the loader may hold Qt's lock, so that the
    # next loader knows whether a dead one left it taken.
    def test_without_verbose_nothing_is_told(self):
        loader = self.start_loader("Hello")
        self.assert_shows("Hello")  # stderr empty
        loader.terminate()
        status, out, err = self.finish(loader)
        self.assertEqual(err, f"holding /{self.key} until Ctrl-C, SIGTERM or SIGHUP\n")

class HexViewTest(ProcessTestCase):
    """show_shared.py --hex shows what is in the segment, also when it is corrupt."""

    def test_row_limits(self):
        self.write_segment(shmcodec.encode_qstring("x" * 200))  # 400 bytes: 25 rows
        for option, rows, more in (("--hex", 16, "9 more rows"), ("--hex=2", 2, "23 more rows"),
                                   ("--hex=all", 25, None)):
            with self.subTest(option):
                status, out, err = self.show(option)
                self.assertEqual(status, 0)
                lines = out.decode().splitlines()
                row_lines = [line for line in lines if line[:1] == "0"]
                self.assertEqual(len(row_lines), rows)
                self.assertEqual(row_lines[0], "00000004  " + "0078 " * 7 + "0078  xxxxxxxx")
                if more:
                    self.assertIn(more, lines[-1])
                    self.assertIn("--hex=all", lines[-1])
                else:
                    self.assertNotIn("more rows", out.decode())
        status, out, err = self.show("--hex=x")
        self.assertEqual((status, out), (2, b""))

    def test_rows_are_whole_in_the_large_form_and_a_last_partial_row_counts(self):
        # Qt 6.7's large form: the text starts at offset 12, and so do the rows.
        self.write_segment(bytes.fromhex("fffffffe" "0000000000000050")
                           + "x".encode("utf-16-be") * 40)
        lines = self.show("--hex=2")[1].decode().splitlines()
        whole_row = " ".join(["0078"] * 8) + "  " + "x" * 8  # 16 bytes, 8 characters
        self.assertEqual([line for line in lines if line[:1] == "0"],
                         ["0000000c  " + whole_row, "0000001c  " + whole_row])
        self.assertEqual(lines[-1], "... 3 more rows (--hex=all shows them)")  # 80 bytes: 5 rows
        self.unlink_segment()
        self.write_segment(shmcodec.encode_qstring("x" * 201))  # 402 bytes: 25 rows and 2 bytes
        self.assertEqual(self.show("--hex=2")[1].decode().splitlines()[-1],
                         "... 24 more rows (--hex=all shows them)")

    def test_null_large_form_and_slack(self):
        self.write_segment(bytes.fromhex("ffffffff"))
        self.assertIn("null QString", self.show("--hex")[1].decode())
        self.unlink_segment()
        self.write_segment(bytes.fromhex("fffffffe" "0000000000000004" "d83dde00") + b"\0\0")
        out = self.show("--hex")[1].decode()
        self.assertIn("large-size form: 4 bytes = 2 UTF-16 code units", out)
        self.assertIn("0000000c  d83d de00", out)
        self.assertIn("2 bytes after the text", out)

    def test_counts_are_whole_numbers_and_a_null_large_form_is_null(self):
        self.write_segment(shmcodec.count_prefix(2469134) + b"\0x" * 1234567)
        self.assertIn(" = 2469134 bytes = 1234567 UTF-16 code units",
                      self.show("--hex=1")[1].decode())
        self.unlink_segment()
        self.write_segment(bytes.fromhex("fffffffe" "ffffffffffffffff"))  # Qt reads it as null
        status, out, err = self.show("--hex")
        self.assertEqual((status, err), (0, ""))
        self.assertIn("a null QString", out.decode())
        self.assertNotIn("-1 bytes", out.decode())
        for value in ("²", "-1", "1.5", ""):
            with self.subTest(hex=value):
                status, out, err = self.show(f"--hex={value}")
                self.assertEqual((status, out), (2, b""))
                self.assert_one_line(err, "--hex")

    def test_corrupt_segment_shows_bytes_and_what_is_wrong(self):
        data = bytes.fromhex("0000000700410042")
        self.write_segment(data)
        status, out, err = self.show("--hex")
        self.assertEqual(status, 1)
        self.assertIn("00000000  0000 0007 0041 0042", out.decode())
        self.assert_one_line(err, "odd byte count 7")
        with open(self.segment_path, "rb") as segment:
            self.assertEqual(segment.read(), data)

    def test_stale_segment(self):
        loader = self.start_loader("stale")
        loader.kill()
        loader.wait()
        status, out, err = self.show("--hex")
        self.assertEqual(status, 0)
        self.assertIn(f"(pid {loader.pid}), which loaded this text, is gone", err)


class SystemVTest(ProcessTestCase):
    """load_shared.py --sysv: Qt's System V segment for a legacy key, as the article's
    programs make it; show_shared.py finds it with no option."""

    def setUp(self):
        super().setUp()
        if not shmcodec.SYSTEM_V_HERE:
            self.skipTest("System V segments are used on 64-bit Linux only")

    def system_v(self):
        return self.segment_kind(sysv=True)

    def test_key_files_are_qts(self):
        # Read off Qt 5.15 and Qt 6.12 (../shared/reference/qt-facts.md).
        digest = "359614dc2e9ec6b4d6d9e8847d0c47fef28f14df"
        for tmpdir, where in ((None, "/tmp"), ("/var/tmp/", "/var/tmp")):
            with self.subTest(TMPDIR=tmpdir):
                names = shmcodec_in(tmpdir, lambda: (
                    shmcodec.qt_key_file("sharedmemory", "MySharedMemory"),
                    shmcodec.qt_key_file("systemsem", "MySharedMemory")))
                self.assertEqual(names, (f"{where}/qipc_sharedmemory_MySharedMemory{digest}",
                                         f"{where}/qipc_systemsem_MySharedMemory{digest}"))
        self.assertRegex(shmcodec.qt_key_file("sharedmemory", "a-b_1"),
                         r"/qipc_sharedmemory_ab[0-9a-f]{40}$")  # letters only, then the sha1

    def test_a_key_file_is_removed_only_while_it_is_the_one_we_made(self):
        # Another program of ours (a Qt program, say) removed the loader's key file and
        # made its own under the name: the loader's clean exit leaves that one alone.
        loader = self.start_loader("--sysv", "ours")
        path = self.system_v().key_file.path
        kept = open(path)  # open: its inode is not reused for the new file
        self.addCleanup(kept.close)
        os.unlink(path)
        with open(path, "w"):
            pass
        self.addCleanup(lambda: os.path.exists(path) and os.unlink(path))
        self.stop(loader)
        self.assertTrue(os.path.exists(path), "a key file that we did not make was removed")

    def test_one_loader_per_key_whatever_the_kind(self):
        first = self.start_loader("first")
        status, out, err = self.run_script("--sysv", "second", script=LOADER)
        self.assertEqual(status, 1)
        self.assert_one_line(err, "another load_shared.py", f"pid {first.pid}")
        first.terminate()
        self.finish(first)
        first = self.start_loader("--sysv", "first")
        status, out, err = self.run_script("second", script=LOADER)
        self.assertEqual(status, 1)
        self.assert_one_line(err, "another load_shared.py", f"pid {first.pid}")

    def test_segment_in_use_is_refused_unless_replace(self):
        system_v = self.system_v()
        theirs = system_v.make(64)  # held by this test process, as by a live Qt program
        self.addCleanup(theirs.close)
        theirs.buf[:16] = shmcodec.encode_qstring("theirs")
        self.assert_shows("theirs")
        status, out, err = self.run_script("--sysv", "mine", script=LOADER)
        self.assert_failed(status, out, err,
                           f"{self.key} (System V) is held by 1 attached process ", "--replace")
        loader = self.start_loader("--sysv", "--replace", "mine")
        self.assertIn("taking over", loader.stderr.readline().decode())
        self.assert_shows("mine")
        self.assertEqual(bytes(theirs.buf[:16]), shmcodec.encode_qstring("theirs"))  # untouched
        self.stop(loader)
        theirs.close()  # the last one out: now the kernel frees it
        self.assert_nothing_left()

    def test_a_qt_posix_segment_beside_our_system_v_loader(self):
        loader = self.start_loader("--sysv", "ours")
        self.write_segment(bytes.fromhex(QT_BYTES["hello"]))  # a Qt 6 program's, and its lock
        self.make_qt_posix_lock()
        self.assert_shows("hello")  # /KEY comes first; our loader's logbook is not about it
        self.stop(loader)

# A stand-in for a Qt program's QSharedMemory::lock() and unlock(), in shapes that a real Qt
# program cannot be made to take on demand. Qt's POSIX lock is sem_open, sem_wait and
# sem_post on /KEY; its System V lock, semop(-1 or +1, SEM_UNDO) on the set under Qt's key
# file. This does the same through ctypes, and runs as its own process, as Qt would.
LOCK_PEER = r'''"""A stand-in for a Qt program in lock(): see test_roundtrip.py, LOCK_PEER.

usage: python -c LOCK_PEER posix|sysv KEY hold [--on-line] [--nondumpable] [--main-exits]
                                                 [--second-thread] [--marker=FILE]
                                                 [--lock-again]
       python -c LOCK_PEER posix KEY ping-pong SECONDS MARKER
  hold             lock(), say "inside", wait for a line on stdin, unlock(), say "out"
  --on-line        wait for a line on stdin before lock()
  --nondumpable    first prctl(PR_SET_DUMPABLE, 0), as a setuid program is
  --main-exits     do it in a second thread, and end the main thread (pthread_exit)
  --second-thread  once inside, a second thread waits for the lock too, and says "second
                   inside" when it gets in (never while the first is inside)
  --lock-again     once inside, lock() again, as a second QSharedMemory of the same key
                   would: its only thread then sleeps on the semaphore, for ever
  --marker=FILE    while inside, hold a flock on FILE (as MARKED_INSIDE makes our scripts
                   do); say "VIOLATION" first if another holds it
  ping-pong        for SECONDS, lock() and unlock() again and again; say "VIOLATION" if
                   another process is inside at the same time (MARKER: a file that each
                   locks while inside), then "rounds N"
"""
import ctypes
import fcntl
import os
import sys
import threading
import time

libc = ctypes.CDLL(None, use_errno=True)
libc.sem_open.restype = ctypes.c_void_p
kind, key, action, *options = sys.argv[1:]
if kind == "posix":
    handle = ctypes.c_void_p(libc.sem_open(f"/{key}".encode(), 0))
    if not handle.value:
        sys.exit(f"sem_open /{key}: {os.strerror(ctypes.get_errno())}")
    lock, unlock = (lambda: libc.sem_wait(handle)), (lambda: libc.sem_post(handle))
else:
    import shmcodec  # only for the name of Qt's key file
    ipc_key = libc.ftok(shmcodec.qt_key_file("systemsem", key).encode(), ord("Q"))
    semid = libc.semget(ipc_key, 1, 0)
    if semid == -1:
        sys.exit(f"semget: {os.strerror(ctypes.get_errno())}")

    class Sembuf(ctypes.Structure):
        _fields_ = [("num", ctypes.c_ushort), ("op", ctypes.c_short), ("flags", ctypes.c_short)]

    lock = lambda: libc.semop(semid, ctypes.byref(Sembuf(0, -1, 0x1000)), 1)  # SEM_UNDO
    unlock = lambda: libc.semop(semid, ctypes.byref(Sembuf(0, 1, 0x1000)), 1)


def hold():
    if "--on-line" in options:
        sys.stdin.readline()
    lock()
    marker = next((option.split("=", 1)[1] for option in options
                   if option.startswith("--marker=")), None)
    if marker:
        marker = os.open(marker, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(marker, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            print("VIOLATION", flush=True)
    print("inside", flush=True)
    if "--lock-again" in options:
        lock()
    if "--second-thread" in options:
        second = threading.Thread(target=lambda: (lock(), print("second inside", flush=True),
                                                  unlock()))
        second.start()
    sys.stdin.readline()
    print("out", flush=True)
    if marker:
        os.close(marker)
    unlock()
    if "--second-thread" in options:
        second.join()


if "--nondumpable" in options:
    libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE
if action == "hold" and "--main-exits" in options:
    threading.Thread(target=hold).start()
    libc.pthread_exit(None)
elif action == "hold":
    hold()
elif action == "ping-pong":
    marker = os.open(options[1], os.O_RDWR | os.O_CREAT, 0o600)
    deadline, rounds = time.monotonic() + float(options[0]), 0
    while time.monotonic() < deadline:
        lock()
        try:
            fcntl.lockf(marker, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.lockf(marker, fcntl.LOCK_UN)
        except OSError:
            print("VIOLATION", flush=True)
        unlock()
        rounds += 1
    print(f"rounds {rounds}", flush=True)
'''


# One of our scripts, run with a moment forced: PATCH (Python code, after `import
# shmcodec`) replaces a function of shmcodec by one that pauses, or breaks something, at
# the moment the test needs; then the script runs as it would (runpy).
FORCED = r'''
import runpy
import sys

patch, sys.argv = sys.argv[1], sys.argv[2:]
import shmcodec  # noqa: E402  (it names the program after sys.argv[0])

exec(patch)
runpy.run_path(sys.argv[0], run_name="__main__")
'''

# A PATCH for FORCED: Qt's System V key file for the lock of $KEY vanishes at the worst
# moment, as when its maker quits: after our try to make it (O_EXCL) found it there, and
# before we look at it (lstat).
VANISH_AT_THE_WORST_MOMENT = r'''
import os

opened, looked_at = os.open, os.lstat
key_file = shmcodec.qt_key_file("systemsem", os.environ["KEY"])
found_there = []


def os_open(path, flags, *args, **kwargs):
    try:
        return opened(path, flags, *args, **kwargs)
    except FileExistsError:
        found_there.append(path == key_file)
        raise


def os_lstat(path, *args, **kwargs):
    if path == key_file and found_there.pop() if found_there else False:
        os.unlink(path)
    return looked_at(path, *args, **kwargs)


os.open, os.lstat = os_open, os_lstat
'''

# A PATCH for FORCED: while inside Qt's POSIX lock, our script holds a flock on the file
# $MARKER (say "VIOLATION" on stderr if another holds it), and says "inside" on stderr.
MARKED_INSIDE = r'''
import fcntl
import os
import time

lock, unlock = shmcodec.QSharedMemory.lock, shmcodec.QSharedMemory.unlock


def marked_lock(self):
    if not lock(self):
        return False
    self.marker = os.open(os.environ["MARKER"], os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(self.marker, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.write(2, b"VIOLATION\n")
    os.write(2, b"inside\n")
    time.sleep(float(os.environ.get("SLEEP_INSIDE", 0)))  # so that a kill then is inside
    return True


def marked_unlock(self):
    if getattr(self, "marker", None) is not None:
        os.close(self.marker)
        self.marker = None
    return unlock(self)


shmcodec.QSharedMemory.lock, shmcodec.QSharedMemory.unlock = marked_lock, marked_unlock
'''

# A PATCH for FORCED: a fail point that only the tests set. $STEP is "CLASS.METHOD N WORDS":
# the Nth call of shmcodec's CLASS.METHOD whose arguments' repr holds WORDS (which may be
# empty) is followed at once by a SIGKILL of the process ($THEN=die), or fails with EFBIG
# instead of running ($THEN=fail), as a full disk or a file size limit would make it fail.
STEP_THEN = r'''
import errno
import os
import signal

where, nth, *words = os.environ["STEP"].split(" ", 2)
owner, name = where.split(".")
step, calls = getattr(getattr(shmcodec, owner), name), []


def step_then(*args, **kwargs):
    if " ".join(words) in repr(args):
        calls.append(1)
    if len(calls) == int(nth) and os.environ["THEN"] == "fail":
        calls.append(1)
        raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
    result = step(*args, **kwargs)
    if len(calls) == int(nth) and result is not False:
        os.kill(os.getpid(), signal.SIGKILL)
    return result


setattr(getattr(shmcodec, owner), name, step_then)
'''


# A Qt program for the tests, doing what the article's two programs do, in Qt 5 (PyQt5) or
# Qt 6 (PySide6). It runs in a subprocess, under a Python that has the binding.
QT_PEER = r'''"""A Qt program for the tests, doing what the article's programs do.

usage: python - BINDING legacy|safe KEY write TEXT | read | lock | lock-two-threads | encode |
                                         decode | soak SECONDS MARKER [two-threads]
"""
import json
import sys

binding, key_kind, key, action = sys.argv[1:5]
if binding == "PyQt5":
    from PyQt5.QtCore import QByteArray, QDataStream, QIODevice, QSharedMemory
else:
    from PySide6.QtCore import QByteArray, QDataStream, QIODevice, QSharedMemory


def qdatastream_bytes(text):
    data = QByteArray()
    QDataStream(data, QIODevice.WriteOnly).writeQString(text)
    return data


def qdatastream_text(data):
    buffer = QByteArray(data)  # kept in a name: the stream reads from it
    return QDataStream(buffer, QIODevice.ReadOnly).readQString()


if action == "encode":  # texts (JSON) in, QDataStream bytes (hex) out
    print(json.dumps([bytes(qdatastream_bytes(text)).hex() for text in json.load(sys.stdin)]))
    sys.exit()
if action == "decode":  # hex in, texts out
    print(json.dumps([qdatastream_text(bytes.fromhex(h)) for h in json.load(sys.stdin)]))
    sys.exit()

if key_kind == "legacy":
    memory = QSharedMemory()
    memory.setKey(key)  # the article: sharedMem.setKey("MySharedMemory")
else:
    memory = QSharedMemory(QSharedMemory.platformSafeKey(key))

if action == "write":  # SharedMemoryLoad: create, lock, memcpy, unlock; hold until EOF
    data = qdatastream_bytes(sys.argv[5])
    if not memory.create(data.size()):
        sys.exit(memory.errorString())
    memory.lock()
    to = memory.data()
    if binding == "PyQt5":
        to.setsize(memory.size())
    to[:data.size()] = bytes(data)
    memory.unlock()
    print("ready", flush=True)
    sys.stdin.read()
elif action == "read":  # ShowSharedMem: attach, lock, constData, unlock, detach
    if not memory.attach():
        sys.exit(memory.errorString())
    memory.lock()
    start = memory.constData()
    data = start.asstring(memory.size()) if binding == "PyQt5" else bytes(start[:memory.size()])
    memory.unlock()
    memory.detach()
    print(ascii(qdatastream_text(data)), flush=True)
elif action == "lock":  # attach and hold lock() until a line comes on stdin
    if not memory.attach():
        sys.exit(memory.errorString())
    if not memory.lock():
        sys.exit(memory.errorString())
    print("locked", flush=True)
    sys.stdin.readline()
    memory.unlock()
    memory.detach()
elif action in ("lock-two-threads", "soak"):
    # A second thread of this Qt program waits for the same lock, through ctypes: a binding
    # keeps its global lock inside lock(), which would freeze a second thread in lock().
    import ctypes
    import fcntl
    import os
    import random
    import threading
    import time

    libc = ctypes.CDLL(None, use_errno=True)
    libc.sem_open.restype = ctypes.c_void_p
    semaphore = ctypes.c_void_p(libc.sem_open(f"/{key}".encode(), 0))
    if not memory.attach():
        sys.exit(memory.errorString())
    if action == "lock-two-threads":
        memory.lock()
        print("locked", flush=True)
        second = threading.Thread(target=lambda: (libc.sem_wait(semaphore),
                                                  print("second inside", flush=True),
                                                  libc.sem_post(semaphore)))
        second.start()
        sys.stdin.readline()
        memory.unlock()
        second.join()
        sys.exit()
    # soak: lock(), and say "inside" while alone inside (a flock on MARKER), else
    # "VIOLATION"; with two-threads, a second thread takes turns with the first.
    deadline, two_threads = time.monotonic() + float(sys.argv[5]), "two-threads" in sys.argv

    def inside(lock, unlock):
        marker = os.open(sys.argv[6], os.O_RDWR | os.O_CREAT, 0o600)  # each its own flock
        lock()
        try:
            fcntl.flock(marker, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            print("VIOLATION", flush=True)
        print("inside", flush=True)
        time.sleep(random.uniform(0, 0.05))
        os.close(marker)
        unlock()
        time.sleep(random.uniform(0, 0.05))

    turn = threading.Event()

    def second_thread():
        while time.monotonic() < deadline:
            turn.wait()
            turn.clear()
            inside(lambda: libc.sem_wait(semaphore), lambda: libc.sem_post(semaphore))
            turn.set()
            time.sleep(0.01)
    if two_threads:
        threading.Thread(target=second_thread, daemon=True).start()
    while time.monotonic() < deadline:
        inside(memory.lock, memory.unlock)
        if two_threads:  # the other thread's turn: it waits in sem_wait while we are inside
            turn.set()
            time.sleep(0.01)
            while turn.is_set() and time.monotonic() < deadline:  # (at the deadline, the
                time.sleep(0.005)  # other thread may have ended: then nobody takes it)
            turn.wait(max(0, deadline - time.monotonic()))
            turn.clear()
del memory  # Qt's destructor: detach, and remove the semaphore if this process made it
'''


def python_with(binding, variable):
    """A Python that can import binding: $variable (as .ci/run sets it), or this one."""
    python = os.environ.get(variable)
    if python:
        return python
    return sys.executable if importlib.util.find_spec(binding) else None


class QtPeerTests:
    """Our scripts and real Qt programs, both ways, with Qt's lock shared.

    Skipped where no Python with the binding is found, unless QT_TESTS_REQUIRED is set
    (as in CI): then that is a failure, so that CI never passes without Qt.
    """
    binding = python = None
    key_kinds = ("legacy",)  # "legacy": the article's setKey(); "safe": platformSafeKey()

    def setUp(self):
        super().setUp()
        if not self.python:
            if os.environ.get("QT_TESTS_REQUIRED"):
                self.fail(f"QT_TESTS_REQUIRED is set, but there is no Python with {self.binding}")
            self.skipTest(f"no Python with {self.binding}; see README: Proof against real Qt")

    def qt(self, key_kind, action, *args, stdin=subprocess.DEVNULL):
        """Start the Qt peer in the background."""
        return self.start_command([self.python, "-c", QT_PEER, self.binding, key_kind, self.key,
                                   action, *args], stdin=stdin)

    def qt_reads(self, key_kind):
        """What a Qt reader (ShowSharedMem) prints: ascii(text), or its error."""
        status, out, err = self.finish(self.qt(key_kind, "read"))
        self.assertEqual(status, 0, err)
        return out.decode()

    def load(self, key_kind, *args, **kwargs):
        """Start load_shared.py for the kind of key, and wait until it has loaded."""
        sysv = ("--sysv",) if key_kind == "legacy" else ()
        if args:
            return self.start_loader(*sysv, *args, **kwargs)
        return self.start_typing(*sysv)

    def kind(self, key_kind):
        return self.segment_kind(sysv=key_kind == "legacy")

    def test_qt_writes_we_show(self):
        for key_kind in self.key_kinds:
            for text in ("hello from Qt", "Grüße 😀", "two\nlines", ""):
                with self.subTest(key_kind=key_kind, text=text):
                    writer = self.qt(key_kind, "write", text, stdin=subprocess.PIPE)
                    self.assertEqual(self.wait_line(writer), "ready\n")
                    self.assert_shows(text)
                    writer.stdin.close()
                    self.assertEqual(self.finish(writer)[0], 0)
                    if key_kind == "safe":  # Qt 6 never removes a POSIX segment (qt-facts.md)
                        self.unlink_segment()
                    self.assert_nothing_left()

    def test_a_watcher_sees_each_qt_text(self):
        for key_kind in self.key_kinds:
            with self.subTest(key_kind=key_kind):
                watcher = self.start("--watch", script=VIEWER)
                for text in ("from Qt", "again from Qt"):
                    writer = self.qt(key_kind, "write", text, stdin=subprocess.PIPE)
                    self.assertEqual(self.wait_line(writer), "ready\n")
                    self.assertEqual(self.wait_line(watcher), text + "\n")
                    writer.stdin.close()
                    self.assertEqual(self.finish(writer)[0], 0)
                    if key_kind == "safe":  # Qt 6 never removes a POSIX segment
                        self.unlink_segment()
                watcher.terminate()
                self.assertEqual(self.finish(watcher)[0], 0)
                self.assert_nothing_left()

    def test_we_load_qt_reads(self):
        for key_kind in self.key_kinds:
            for text in ("hello from Python", "Grüße 😀", "two\nlines", ""):
                with self.subTest(key_kind=key_kind, text=text):
                    loader = self.load(key_kind, text)
                    self.assertEqual(self.qt_reads(key_kind), ascii(text) + "\n")
                    self.stop(loader)
                    self.assert_nothing_left()

    def test_qt_lock_makes_our_viewer_and_loader_wait(self):
        for key_kind in self.key_kinds:
            with self.subTest(key_kind=key_kind):
                loader = self.load(key_kind)
                holder = self.qt(key_kind, "lock", stdin=subprocess.PIPE)
                self.assertEqual(self.wait_line(holder), "locked\n")
                viewer = self.start(script=VIEWER)
                self.assertTrue(self.still_running(viewer), "the viewer did not wait")
                said = self.wait_line(viewer, stderr=True)  # after a second: a wait is said
                self.assertIn(f"waiting for Qt's lock on {self.kind(key_kind).label}", said)
                if key_kind == "legacy":  # System V tells who changed the semaphore last
                    self.assertIn(f"(pid {holder.pid})", said)
                self.type_line(loader, "second")
                self.assertTrue(self.still_running(loader), "the loader did not wait")
                self.assertIn(f"held by show_shared.py (pid {viewer.pid})",
                              self.wait_line(loader, stderr=True))
                self.type_line(holder, "unlock")
                self.assertEqual(self.finish(viewer)[:2], (0, b"first\n"))
                self.assertRegex(self.wait_line(loader), "^Loaded ")
                self.assert_shows("second")
                self.assertEqual(self.finish(holder)[0], 0)
                loader.stdin.close()
                self.assertEqual(self.finish(loader)[0], 0)
                self.assert_nothing_left()

    def test_our_lock_makes_qt_wait(self):
        for key_kind in self.key_kinds:
            with self.subTest(key_kind=key_kind):
                loader = self.load(key_kind, "ours")
                ours = self.hold_qt_lock_as_ours(sysv=key_kind == "legacy")
                reader = self.qt(key_kind, "read")
                self.assertTrue(self.still_running(reader), "Qt did not wait for our lock")
                self.let_go(ours)
                self.assertEqual(self.finish(reader)[:2], (0, b"'ours'\n"))
                self.stop(loader)
                self.assert_nothing_left()

    def test_killed_qt_loader_leaves_an_orphan_we_replace(self):
        writer = self.qt("legacy", "write", "orphan", stdin=subprocess.PIPE)
        self.assertEqual(self.wait_line(writer), "ready\n")
        writer.kill()
        writer.wait()
        self.assertEqual(self.kind("legacy").users(), 0)
        self.assert_shows("orphan")  # the text is still there, and readable
        loader = self.load("legacy", "replaced")
        self.assertIn("nobody is attached", loader.stderr.readline().decode())
        self.assertEqual(self.qt_reads("legacy"), "'replaced'\n")
        self.stop(loader, signal.SIGINT)
        self.assert_nothing_left()

    def test_codec_bytes_are_qdatastream_bytes(self):
        rng = random.Random(5)
        texts = [None, "", "\ud800", "a\udfffb"] + [
            "".join(chr(rng.choice([rng.randrange(0x20, 0x80), rng.randrange(0xE000, 0x10000),
                                    rng.randrange(0x100, 0xD800),
                                    rng.randrange(0x10000, 0x110000)]))
                    for _ in range(rng.randrange(1, 30)))
            for _ in range(300)]
        qt_bytes = self.qt_json("encode", texts)
        for text, hex_bytes in zip(texts, qt_bytes, strict=True):
            self.assertEqual(shmcodec.encode_qstring(text).hex(), hex_bytes, ascii(text))
        # Qt reads our bytes back; a binding cannot hand a lone surrogate back to Python.
        whole = [text for text in texts if not any("\ud800" <= c <= "\udfff" for c in text or "")]
        read = self.qt_json("decode", [shmcodec.encode_qstring(text).hex() for text in whole])
        self.assertEqual(read, [text or "" for text in whole])  # a null QString reads as ""

    def qt_json(self, action, items):
        result = subprocess.run([self.python, "-c", QT_PEER, self.binding, "-", "-", action],
                                input=json.dumps(items).encode(), capture_output=True,
                                timeout=TIMEOUT)
        self.assertEqual(result.returncode, 0, result.stderr)
        return json.loads(result.stdout)


def qt_posix_segment(key, size):
    """A POSIX segment /key made as a Qt program makes it (shm_open(O_CREAT|O_EXCL) +
    ftruncate), mapped for writing (.buf, .close()); the test removes it."""
    return shmcodec.Posix(key).make(size)


def shmcodec_in(tmpdir, call):
    """call(), with TMPDIR as the scripts under test see it (Qt's key files live there)."""
    saved = os.environ.get("TMPDIR")
    try:
        os.environ.pop("TMPDIR", None) if tmpdir is None else os.environ.update(TMPDIR=tmpdir)
        return call()
    finally:
        os.environ.pop("TMPDIR", None) if saved is None else os.environ.update(TMPDIR=saved)


def readme_block(language, starts=""):
    """The first ```language block of README.md whose text starts with starts."""
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as readme:
        blocks = [block.split("```", 1)[0] for block in
                  readme.read().split(f"```{language}\n")[1:]]
    return next(block for block in blocks if block.startswith(starts))


# The README's article.py on PySide6's QSharedMemory: the very same code, with PySide6's
# import in place of ours, and QDataStream in place of the codec.
OUR_IMPORT = "from shmcodec import QSharedMemory, decode_qstring, encode_qstring\n"
PYSIDE6_IMPORT = """from PySide6.QtCore import QByteArray, QDataStream, QIODevice, QSharedMemory


def encode_qstring(text):
    data = QByteArray()
    QDataStream(data, QIODevice.WriteOnly).writeQString(text)
    return bytes(data)


def decode_qstring(data):
    buffer = QByteArray(bytes(data))  # kept in a name: the stream reads from it
    return QDataStream(buffer, QIODevice.ReadOnly).readQString()
"""
ARTICLE_KEY = 'sharedMem = QSharedMemory()\nsharedMem.setKey("MySharedMemory")\n'


class ArticleInPythonTest(ProcessTestCase):
    """article.py, the README's one-page program: the article's calls on our QSharedMemory,
    and the same code on PySide6's. Both ways with the scripts and real Qt 5 and Qt 6
    programs, for the article's plain key ("legacy") and platformSafeKey ("safe")."""

    def article_py(self, key_kind, binding=None):
        """The command that runs article.py for our key, on ours or on binding's."""
        source = readme_block("python", "# article.py")
        self.assertIn(OUR_IMPORT, source)
        self.assertIn(ARTICLE_KEY, source)
        key = f'"{self.key}"' if key_kind == "legacy" else \
            f'QSharedMemory.platformSafeKey("{self.key}")'
        source = source.replace(ARTICLE_KEY, f"sharedMem = QSharedMemory({key})\n")
        python = sys.executable
        if binding:
            source = source.replace(OUR_IMPORT, PYSIDE6_IMPORT)
            python = python_with(binding, "QT6_PYTHON")
            if not python:
                if os.environ.get("QT_TESTS_REQUIRED"):
                    self.fail("QT_TESTS_REQUIRED is set, but there is no Python with PySide6")
                self.skipTest("no Python with PySide6")
        path = os.path.join(self.tmpdir, f"article-{key_kind}-{binding or 'ours'}.py")
        with open(path, "w", encoding="utf-8") as listing:
            listing.write(source)
        self.env["PYTHONPATH"] = HERE  # "save it in this folder": it imports shmcodec
        return [python, path]

    def article(self, command, *args, stdin=subprocess.DEVNULL):
        return self.start_command([*command, *args], stdin=stdin)

    def load_with(self, command, text):
        loader = self.article(command, "load", text, stdin=subprocess.PIPE)
        self.assertEqual(self.wait_line(loader), "Loaded; press Enter to quit\n")
        return loader

    def let_go_of(self, loader):
        loader.stdin.write(b"\n")
        loader.stdin.close()
        self.assertEqual(self.finish(loader)[0], 0)

    def test_with_the_scripts_both_ways(self):
        for key_kind, sysv in (("legacy", ("--sysv",)), ("safe", ())):
            with self.subTest(key_kind):
                ours = self.article_py(key_kind)
                status, out, err = self.finish(self.article(ours, "show"))
                self.assertEqual((status, out, err), (1, b"", "Enter a text first\n"))
                loader = self.load_with(ours, "Grüße from article.py 😀")
                self.assert_shows("Grüße from article.py 😀")
                status, out, err = self.finish(self.article(ours, "load", "a second"))
                self.assertEqual((status, out), (1, b""))  # one line, never a traceback
                self.assert_one_line(err, "Unable to create shared memory segment",
                                     "exists already")
                self.let_go_of(loader)
                self.assert_nothing_left()
                loader = self.start_loader(*sysv, "Hello from load_shared.py")
                status, out, err = self.finish(self.article(ours, "show"))
                self.assertEqual((status, out.decode(), err),
                                 (0, "Hello from load_shared.py\n", ""))
                self.stop(loader)
                self.assert_nothing_left()

    def test_with_qt_both_ways(self):
        # Each writer's text is read by each reader: ours, the same code on PySide6, and the
        # tests' Qt 6 (PySide6) and Qt 5 (PyQt5, plain key only) programs.
        for key_kind in ("legacy", "safe"):
            with self.subTest(key_kind):
                ours, theirs = self.article_py(key_kind), self.article_py(key_kind, "PySide6")
                peers = [theirs, [python_with("PySide6", "QT6_PYTHON"), "-c", QT_PEER,
                                  "PySide6", key_kind, self.key]]
                if key_kind == "legacy" and python_with("PyQt5", "QT5_PYTHON"):
                    peers.append([python_with("PyQt5", "QT5_PYTHON"), "-c", QT_PEER, "PyQt5",
                                  key_kind, self.key])
                for peer in peers:
                    loader = self.load_with(ours, "from ours 😀")
                    status, out, err = self.finish(self.article(peer, "show" if peer is theirs
                                                                else "read"))
                    self.assertEqual(out.decode(), "from ours 😀\n" if peer is theirs else
                                     ascii("from ours 😀") + "\n", err)
                    self.let_go_of(loader)
                    if peer is theirs:
                        writer = self.load_with(peer, "from Qt 😀")
                    else:
                        writer = self.article(peer, "write", "from Qt 😀", stdin=subprocess.PIPE)
                        self.assertEqual(self.wait_line(writer), "ready\n")
                    self.assertEqual(self.finish(self.article(ours, "show"))[:2],
                                     (0, "from Qt 😀\n".encode()))
                    writer.stdin.close()
                    self.assertEqual(self.finish(writer)[0], 0)
                    if key_kind == "safe":  # Qt 6 never removes a POSIX segment
                        self.unlink_segment()
                    self.assert_nothing_left()


class ArticleTest(ProcessTestCase):
    """The article's own calls, as C++ (article.cpp in the README), built against Debian's
    Qt 5 and Qt 6, and our scripts, both ways. Skipped without g++, pkg-config and the Qt
    development packages, unless QT_TESTS_REQUIRED is set."""

    @classmethod
    def setUpClass(cls):
        cls.builds = tempfile.mkdtemp(prefix="test_roundtrip-article-")
        source = os.path.join(cls.builds, "article.cpp")
        # The article's key, made the test's own: a demo may be running on this machine.
        cls.key = f"test_roundtrip-{os.getpid()}-article"
        with open(source, "w", encoding="utf-8") as cpp:
            cpp.write(readme_block("cpp").replace('"MySharedMemory"', f'"{cls.key}"'))
        cls.programs = {}
        for qt in ("Qt5Core", "Qt6Core"):
            flags = subprocess.run(["pkg-config", "--cflags", "--libs", qt], capture_output=True,
                                   text=True) if shutil.which("pkg-config") else None
            if flags and flags.returncode == 0 and shutil.which("g++"):
                cls.programs[qt] = os.path.join(cls.builds, qt)
                subprocess.run(["g++", "-fPIC", source, "-o", cls.programs[qt],
                                *flags.stdout.split()], check=True, timeout=600)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.builds)

    def setUp(self):
        super().setUp()
        self.key = type(self).key

    def article(self, qt, *args, stdin=subprocess.DEVNULL):
        if qt not in self.programs:
            if os.environ.get("QT_TESTS_REQUIRED"):
                self.fail(f"QT_TESTS_REQUIRED is set, but article.cpp cannot be built with {qt}")
            self.skipTest(f"needs g++, pkg-config and {qt} (Debian: qtbase5-dev, qt6-base-dev)")
        return self.start_command([self.programs[qt], *args], stdin=stdin)

    def both_ways(self, qt):
        status, out, err = self.finish(self.article(qt, "show"))
        self.assertEqual((status, out), (1, b"Enter a text first\n"))
        loader = self.article(qt, "load", "Hello from the article 😀", stdin=subprocess.PIPE)
        self.assertEqual(self.wait_line(loader), "Loaded; press Enter to quit\n")
        self.assert_shows("Hello from the article 😀")
        loader.stdin.write(b"\n")
        loader.stdin.close()
        self.assertEqual(self.finish(loader)[0], 0)
        self.assert_nothing_left()
        ours = self.start_loader("--sysv", "Hello from Python 😀")
        status, out, err = self.finish(self.article(qt, "show"))
        self.assertEqual((status, out.decode()), (0, "Hello from Python 😀\n"))
        self.stop(ours)
        self.assert_nothing_left()
        # and the README's article.py, the same calls in Python, both ways
        python = ArticleInPythonTest.article_py(self, "legacy")
        loader = self.start_command([*python, "load", "from article.py"], stdin=subprocess.PIPE)
        self.assertEqual(self.wait_line(loader), "Loaded; press Enter to quit\n")
        self.assertEqual(self.finish(self.article(qt, "show"))[:2], (0, b"from article.py\n"))
        loader.stdin.close()
        self.assertEqual(self.finish(loader)[0], 0)
        loader = self.article(qt, "load", "from article.cpp", stdin=subprocess.PIPE)
        self.assertEqual(self.wait_line(loader), "Loaded; press Enter to quit\n")
        self.assertEqual(self.finish(self.start_command([*python, "show"]))[:2],
                         (0, b"from article.cpp\n"))
        loader.stdin.close()
        self.assertEqual(self.finish(loader)[0], 0)
        self.assert_nothing_left()

    def test_qt5(self):
        self.both_ways("Qt5Core")

    def test_qt6(self):
        self.both_ways("Qt6Core")


class Qt5Test(QtPeerTests, ProcessTestCase):
    """Against Qt 5.15 (PyQt5), which knows only the legacy key: System V on Linux."""
    binding, python = "PyQt5", python_with("PyQt5", "QT5_PYTHON")


class Qt6Test(QtPeerTests, ProcessTestCase):
    """Against Qt 6 (PySide6): the article's legacy key, and platformSafeKey."""
    binding, python = "PySide6", python_with("PySide6", "QT6_PYTHON")
    key_kinds = ("legacy", "safe")

    def test_a_qt_reader_killed_inside_lock_blocks_the_key_as_in_qt(self):
        # A named POSIX semaphore has no undo, and nobody can prove that a Qt program died:
        # its lock stays taken, and our waiters say so, with the way out.
        loader = self.load("safe")
        holder = self.qt("safe", "lock", stdin=subprocess.PIPE)
        self.assertEqual(self.wait_line(holder), "locked\n")
        holder.kill()
        holder.wait()
        viewer = self.start(script=VIEWER)
        said = self.wait_line(viewer, stderr=True)
        self.assertIn("held by a program that is not one of ours", said)
        self.assertIn(f"rm /dev/shm/sem.{self.key}", said)
        self.assertTrue(self.still_running(viewer, 2), "a guess was taken for a proof")
        self.assertEqual(self.semaphore_value(), 0)
        viewer.kill()  # the way out: quit every program that uses the key, remove the lock
        viewer.wait()
        self.assertIn("leaving Qt's lock", self.stop(loader)[1])
        os.unlink(f"/dev/shm/sem.{self.key}")
        loader = self.load("safe", "second")
        self.assertEqual(self.qt_reads("safe"), "'second'\n")
        self.stop(loader)
        self.assert_nothing_left()

    def test_a_qt_program_with_two_threads_keeps_its_lock(self):
        # Its main thread inside lock(), a second thread asleep in line for the same lock:
        # the process waits only if every thread of it does. None of our judges may take
        # it for a mere waiter.
        def hold():
            holder = self.qt("safe", "lock-two-threads", stdin=subprocess.PIPE)
            self.assertEqual(self.wait_line(holder), "locked\n")

            def let_go(holder):  # (its exit waits: Qt's detach() takes lock() first)
                holder.stdin.write(b"\n")
                holder.stdin.flush()
                self.assertEqual(self.wait_line(holder), "second inside\n")  # only now
            return holder, let_go
        self.assert_every_judge_keeps(hold)

    def test_soak_nobody_is_ever_inside_with_another(self):
        # For a while, parties take Qt's lock again and again, each saying "inside" only
        # while it holds a flock on a marker file, which every other party inside takes too:
        # our viewers and our loader's writes, single-threaded Qt programs, a Qt program with
        # two threads. Our viewers are SIGKILLed, inside or about to be: the kernel proves
        # each death. Nobody is ever inside with another; after each death, somebody is
        # inside again within about 3 s.
        seconds, rng = 24, random.Random(6)
        started = time.monotonic()
        marker = os.path.join(self.tmpdir, "inside")
        marked = dict(self.env, MARKER=marker)
        loader = self.start_forced(MARKED_INSIDE, LOADER, env=marked, stdin=subprocess.PIPE)
        self.type_line(loader, "x" * (2 << 20))  # a viewer is inside for a while, reading it
        self.assertRegex(self.wait_line(loader), "^Loaded ")
        parties = {}  # process -> (kind, the stream on which it says "inside")

        def start(kind):
            left = str(seconds - (time.monotonic() - started))
            if kind == "viewer":
                party = self.start_forced(MARKED_INSIDE, VIEWER, env=dict(  # a kill when it
                    marked, SLEEP_INSIDE="1"), stdout=subprocess.DEVNULL)  # says so: inside
                parties[party] = kind, party.stderr
            else:
                party = self.qt("safe", "soak", left, marker, *(["two-threads"] if
                                                                 kind == "two threads" else []))
                parties[party] = kind, party.stdout
            os.set_blocking(parties[party][1].fileno(), False)
        for kind in ("viewer", "viewer", "qt", "qt", "two threads"):
            start(kind)
        violations, gaps, died_at, last_kill, last_write = [], [], None, 0, time.monotonic()
        os.set_blocking(loader.stdout.fileno(), False)
        os.set_blocking(loader.stderr.fileno(), False)
        with self.one_at_a_time():
            while time.monotonic() - started < seconds:
                now = time.monotonic()
                if last_write and now - last_write > 2:  # its next write enters the lock too
                    self.type_line(loader, "x" * (2 << 20))
                    last_write = None
                streams = {stream: party for party, (_, stream) in parties.items()}
                streams.update({loader.stderr: loader, loader.stdout: loader})
                ready, _, _ = select.select(list(streams), [], [], 0.1)
                for stream in ready:
                    party, said = streams[stream], stream.read() or b""
                    if stream is loader.stdout and b"Loaded" in said:
                        last_write = time.monotonic()
                    violations += [party.args[:5]] * said.count(b"VIOLATION")
                    if b"inside" not in said:
                        continue
                    if died_at is not None:
                        gaps.append(time.monotonic() - died_at)
                        died_at = None
                    kind = parties.get(party, ("loader",))[0]
                    if kind == "viewer" and now - last_kill > 3 and rng.random() < 0.3:
                        party.kill()  # inside, or a moment after it came out
                        died_at = last_kill = time.monotonic()
                for party, (kind, _) in list(parties.items()):
                    if party.poll() is not None:  # ended, or killed: another takes its place
                        del parties[party]
                        if kind != "two threads" and time.monotonic() - started < seconds - 3:
                            start(kind)
            for party, (kind, _) in parties.items():  # a Qt program killed inside would block
                if kind == "viewer":  # the key for good (test_a_qt_reader_killed_inside...)
                    party.kill()
                self.finish(party)
        loader.stdin.close()
        status, out, err = self.finish(loader)
        self.assertEqual(status, 0, err)
        self.assertEqual(violations, [])
        print(f"\nsoak: {len(gaps)} deaths, longest wait after one {max(gaps, default=0):.1f} s",
              file=sys.stderr)
        self.assertGreaterEqual(len(gaps), 3, "too few deaths to tell")
        self.assertLess(max(gaps), 3 + 2)  # about 3 s, on a busy machine

    def test_loader_killed_holding_qt_lock_blocks_qt_only_until_the_next_run(self):
        self.kill_while_writing()
        reader = self.qt("safe", "read")  # waits on the semaphore the dead loader held
        self.assertTrue(self.still_running(reader), "Qt did not wait")
        second = self.start_loader("next")
        self.finish(reader)  # let go: it reads "next", or finds no segment yet
        self.stop(second)
        self.assert_nothing_left()


def system_v_objects():
    """{(table, id): pids} of the System V segments ("shm") and semaphore sets ("sem") on
    this machine (Linux). pids: a segment's creator and last user, a set's last user."""
    found = {}
    with open("/proc/sysvipc/shm") as listing:
        for line in list(listing)[1:]:  # key shmid perms size cpid lpid ...
            fields = line.split()
            found["shm", int(fields[1])] = {int(fields[4]), int(fields[5])}
    with open("/proc/sysvipc/sem") as listing:
        for line in list(listing)[1:]:  # key semid ...; GETPID: who last set or changed it
            semid = int(line.split()[1])
            found["sem", semid] = {libc.semctl(semid, 0, GETPID, 0)}
    return found


def remove_system_v(table, ident):
    if table == "shm":
        libc.shmctl(ident, shmcodec.IPC_RMID, None)
    else:
        libc.semctl(ident, 0, shmcodec.IPC_RMID, 0)


def open_lines(path):
    with open(path) as lines:
        return list(lines)


def holds_a_lock(pid):
    """True if pid holds an fcntl lock (Linux: /proc/locks)."""
    with open("/proc/locks") as locks:  # "1: POSIX  ADVISORY  READ 4242 00:2b:1234 0 0"
        return any(fields[1] == "POSIX" and fields[4] == str(pid)
                   for fields in (line.split() for line in locks))


def stat_fields(pid):
    """The fields of /proc/PID/stat after the command's name (Linux): state, parent, ..."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()


def stop_now(pid):
    """SIGSTOP pid, and return once it is stopped (Linux: state T in /proc/PID/stat). Only
    then is it out of any wait it was in: a System V semaphore set free a moment after a
    SIGSTOP could still be taken by it, in the kernel, on its way to stopping."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if stat_fields(pid)[0] in "Tt":
            return
        time.sleep(0.001)
    raise AssertionError(f"process {pid} did not stop")


def children(pid, descendants=False):
    """The pids of pid's child processes (Linux); descendants: their children too, and on."""
    parents = {}
    for entry in os.listdir("/proc"):
        try:
            parents[int(entry)] = int(stat_fields(entry)[1])
        except (OSError, IndexError, ValueError):
            continue
    found, wanted = [], [pid]
    while wanted:
        parent = wanted.pop()
        its_children = [child for child, its_parent in parents.items() if its_parent == parent]
        found += its_children
        if descendants:
            wanted += its_children
    return found


def wait_gone(pid):
    """Wait until pid, which is not our child, has ended (gone, or a zombie)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            if stat_fields(pid)[0] in "ZX":
                return
        except FileNotFoundError:
            return
        time.sleep(0.001)


def tearDownModule():
    """The last net: a process of this run's tests that outlived its test (none should) is
    named on stderr and killed, and what was made under this run's keys is removed. Only
    this run's: the machine is shared, and another run of the suite may be going on."""
    ours, survivors = f"TEST_ROUNDTRIP={os.getpid()} ".encode(), []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/environ", "rb") as environ:
                test = [v for v in environ.read().split(b"\0") if v.startswith(ours)]
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read().replace(b"\0", b" ")[:120].decode(errors="replace")
        except OSError:
            continue
        if test and int(entry) != os.getpid():
            print(f"\ntest_roundtrip: {test[0].split(b' ', 1)[1].decode()} left pid {entry} "
                  f"running: {command}", file=sys.stderr)
            survivors.append(int(entry))
    for pid in survivors:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_gone(pid)
    prefix = f"test_roundtrip-{os.getpid()}-"
    for name in os.listdir("/dev/shm"):
        if name.startswith((prefix, "sem." + prefix)):
            print(f"test_roundtrip: left behind: /dev/shm/{name}", file=sys.stderr)
            os.unlink(f"/dev/shm/{name}")


if __name__ == "__main__":
    unittest.main()
