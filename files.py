"""
Files written so that nothing is ever half there: every script's outputs go through atomic_write, which writes
a temporary sibling, flushes it to disk and renames it over the target (a rename within a folder is atomic on
POSIX and Windows), so a crash or a kill leaves the old file or the new one, never a torn one. Output paths are
checked before the work starts (check_output), and a folder has one writer at a time (Lock).
"""
import contextlib
import json
import os
import shutil
import sys
import tempfile

from configurator import InputError


def atomic_write(path, data):
    """Write data to path atomically. data: bytes, a str (UTF-8), or a function that writes the file at the
    temporary path it is given (safetensors' save_file, say)."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    if callable(data):
        data(tmp)
    else:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)  # the bytes reach the disk before the rename makes them the file
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_json(path, obj, indent=1):
    atomic_write(path, json.dumps(obj, indent=indent) + "\n")


def read_json(path, fix, missing=None):
    """A JSON file; a damaged one is an InputError saying `fix`, a missing one saying `missing` (or `fix`)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise InputError(f"{path} not found: {missing or fix}")
    except NotADirectoryError:  # a file named where a folder was meant (--data_dir=train.bin)
        file = os.path.dirname(path)
        while os.path.dirname(file) != file and not os.path.isfile(file):  # stops at "" or the root
            file = os.path.dirname(file)
        raise InputError(f"{file} is a file, not a folder: {missing or fix}")
    except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
        raise InputError(f"{path} is damaged ({type(e).__name__}: {e}): {fix}")


def check_output(path, what, folder=False, atomic=True):
    """Refuse, before any work, an output path that cannot be written (`what` names its setting): a folder where a
    file goes or the reverse, a name longer than the file system allows, a missing folder for a file, or a place
    where nothing can be created (read-only, or not ours). Tried for real, with a temporary file, so the answer is
    the file system's (root ignores permission bits; a read-only mount does not)."""
    if not os.fspath(path):
        raise InputError(f"{what} is empty: name the {'folder' if folder else 'file'} to write")
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if folder and os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"{what}={path} is a file, not a folder: choose another path")
    if folder and (os.path.realpath(os.getcwd()) + os.sep).startswith(os.path.realpath(path).rstrip(os.sep) + os.sep):
        raise InputError(f"{what}={path} is the working directory or holds it, so what is written would mix with "
                         "what is there: name a folder of its own (out/run, say)")
    if not folder and os.path.isdir(path):
        raise InputError(f"{what}={path} is a folder, not a file: give a file name")
    if atomic and not folder and (os.path.islink(path) or os.path.exists(path) and not os.path.isfile(path)):
        raise InputError(f"{what}={path} is a {'symbolic link' if os.path.islink(path) else 'device or pipe'}, which "
                         "an atomic write would replace by a file: give the path of a regular file")
    for part in path.split(os.sep):
        if len(part.encode()) > 255:
            raise InputError(f"{what}: the name {part[:40]}... is {len(part.encode())} bytes, more than the 255 a file "
                             f"name may have: shorten it")
    if not folder and not os.path.isdir(os.path.dirname(path)):
        raise InputError(f"{what}={path}: the folder {os.path.dirname(path)} does not exist: create it first")
    here = path if folder else os.path.dirname(path)
    while not os.path.exists(here):  # the folder and its missing parents will be made inside the nearest one
        here = os.path.dirname(here)
    if not os.path.isdir(here):
        raise InputError(f"{what}={path}: {here} is a file, so nothing can be made under it: choose another path")
    try:
        tempfile.TemporaryFile(dir=here).close()
    except OSError as e:
        raise InputError(f"{what}={path}: cannot write in {here} ({e.strerror}): choose a writable path")


class Lock:
    """One writer per output folder: an exclusive flock on <folder>/.lock for the life of the process. The kernel
    releases it however the process ends (kill -9 included), so a lock is never stale; the file keeps the pid and
    command of its holder, named to a second writer."""

    def __init__(self, folder, what):
        self.path = os.path.join(folder, ".lock")
        self.f = open(self.path, "a+")
        try:
            import fcntl  # POSIX; on Windows there is no flock and no lock
        except ImportError:
            return
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.f.seek(0)
            holder = self.f.read().strip() or "another process"
            self.f.close()
            raise InputError(f"{what}={folder} is being written by {holder}: wait for it to finish, or choose another "
                             f"{what}")
        self.f.seek(0)
        self.f.truncate()
        self.f.write(f"pid {os.getpid()} ({' '.join(sys.argv)[:200]})\n")
        self.f.flush()

    def release(self):
        if not self.f.closed:
            self.f.close()  # closing the descriptor drops the flock


@contextlib.contextmanager
def sole_writer(folder, what, keep_lock=True, discard_refused=False):
    """For the life of a block: `folder` checked, created if need be, and locked for this process alone. If the
    block fails and the folder was new and holds nothing but the lock, it is removed again (a failed start leaves
    nothing behind); with discard_refused, a new folder is removed whatever it holds when the block refuses its
    input (an InputError: what it made is of no use for the input that will be given next). keep_lock=False
    removes the lock file at the end (a folder to hand on, an export)."""
    check_output(folder, what, folder=True)
    top = os.path.abspath(folder)  # the outermost folder this makes, with the ones inside it
    while not os.path.isdir(os.path.dirname(top)):
        top = os.path.dirname(top)
    made = not os.path.isdir(folder)
    os.makedirs(folder, exist_ok=True)
    lock = Lock(folder, what)
    try:
        yield
    except BaseException as e:
        if made and (discard_refused and isinstance(e, InputError)
                     or [f for _, _, names in os.walk(top) for f in names] == [".lock"]):
            lock.release()
            shutil.rmtree(top, ignore_errors=True)
        raise
    finally:
        if not keep_lock and os.path.exists(lock.path):
            os.remove(lock.path)
        lock.release()
