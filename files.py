"""
Files written so that nothing is ever half there: every script's outputs go through atomic_write, which writes
a temporary sibling, flushes it to disk and renames it over the target (a rename within a folder is atomic on
POSIX and Windows), so a crash or a kill leaves the old file or the new one, never a torn one.
"""
import json
import os

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


def read_json(path, fix):
    """A JSON file one of our scripts wrote; a missing or damaged one is an InputError saying `fix`."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise InputError(f"{path} not found: {fix}")
    except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
        raise InputError(f"{path} is damaged ({type(e).__name__}: {e}): {fix}")
