"""
Settings and errors for every script, nanoGPT's idea tidied up. A script keeps its settings as plain module
globals with a comment each, then calls

    settings = configurator.configure(globals(), sys.argv[1:])

which executes an optional config file (a path ending in .py) over those globals, then applies `--key=value`
overrides, parsed as Python literals (`--lr=3e-4`, `--compile=False`, `--betas=(0.9,0.95)`); a setting whose
default is a string takes the text as given (`--init_from=out/run1`). An unknown key, a value whose type differs
from the default's, a malformed argument or a config file that does not run stops with one line naming it.

Bad input anywhere (a missing file, a wrong setting, a tokenizer that does not fit) raises InputError, whose
message is that one line: a notebook can catch it, and a script's `__main__` runs under `main()`, which prints
`error: <message>` and exits with status 2. Everything else is a bug and keeps its traceback.
"""
import ast
import errno
import math
import os
import re
import sys


class InputError(ValueError):
    """Bad input a user can fix; str(e) is one line naming the problem and the fix."""


def main(fn, *args):
    """Run a script's fn(*args); an InputError becomes `error: ...` on stderr and exit status 2, Ctrl-C
    `interrupted` and status 130. Under torchrun only rank 0 prints it (every rank meets the same error), and no
    rank shows a traceback."""
    try:
        return fn(*args)
    except InputError as e:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except OSError as e:  # a full disk ends any script that writes; what was written before is whole (atomic writes)
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        if os.environ.get("RANK", "0") == "0":
            print(f"error: no space left on the device{f' writing {e.filename}' if e.filename else ''}: free some, or "
                  "write elsewhere", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C: what was written is whole (atomic writes); no traceback of where it stopped
        if os.environ.get("RANK", "0") == "0":
            print("interrupted", file=sys.stderr, flush=True)
        sys.exit(130)


def _typecheck(key, old, new, where):
    # int -> float is a widening users expect (`--lr=1` for a float default); everything else must match.
    if isinstance(old, bool) != isinstance(new, bool) and old is not None and new is not None:
        pass  # bool is an int subclass in Python; --n_layer=True must not pass as 1
    elif old is None or isinstance(new, type(old)):
        return new
    if isinstance(old, float) and isinstance(new, int) and not isinstance(new, bool):
        return float(new)
    if isinstance(old, (tuple, list)) and isinstance(new, (tuple, list)):
        return type(old)(new)
    kind = {bool: "True or False", int: "an integer", float: "a number", str: "a string",
            tuple: "a tuple, e.g. ('a',) or ('a', 'b')"}.get(type(old), f"a {type(old).__name__}")
    raise InputError(f"{where} sets {key}={new!r} ({type(new).__name__}), but {key} takes {kind} (default {old!r})")


def _is_nonfinite(text):  # "nan", "inf", "-Infinity": what float() reads and literal_eval does not
    try:
        return not math.isfinite(float(text))
    except ValueError:
        return False


def _settings(scope):
    return {k for k, v in scope.items() if not k.startswith("_") and isinstance(v, (int, float, bool, str, tuple, list, dict, type(None)))}


def read_file(path):
    """The names a config file assigns (modules, functions and _private names left out)."""
    try:
        src = open(path, encoding="utf-8").read()
    except OSError as e:
        raise InputError(f"cannot read config file {path}: {e.strerror}")
    except UnicodeDecodeError:
        raise InputError(f"config file {path} is not UTF-8 text: give a Python file of settings")
    cfg = {}
    try:
        exec(compile(src, path, "exec"), {}, cfg)
    except SyntaxError as e:
        raise InputError(f"config file {path}, line {e.lineno}: {e.msg}: fix the file")
    except Exception as e:  # the file's own code raised: name the line of the file, not of this function
        tb, line = e.__traceback__, "?"
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == path:
                line = tb.tb_lineno
            tb = tb.tb_next
        raise InputError(f"config file {path}, line {line}: {type(e).__name__}: {e}: fix the file")
    return {k: v for k, v in cfg.items() if not k.startswith("_") and not callable(v) and type(v).__name__ != "module"}


def configure(scope, argv, sources=None):
    """Apply a config file and --key=value overrides to `scope` (a script's globals()). Returns the dict of
    settings in effect, for printing and for the checkpoint. `sources`, a dict, receives for every key that was
    set where it was set: the config file's path, or the --key=value argument."""
    keys, given = _settings(scope), {}
    if "-h" in argv or "--help" in argv:  # the script's docstring and its settings block, as the file has them
        lines = [line.rstrip() for line in open(scope["__file__"], encoding="utf-8")
                 if re.match(r"[a-z_][a-z0-9_]* = ", line) and line.split(" = ")[0] in keys]
        try:
            print(f"{(scope.get('__doc__') or '').strip()}\n\nsettings, with their defaults (change them with "
                  "--key=value, or a config file of key = value lines first):\n" + "\n".join("  " + s for s in lines),
                  flush=True)
        except BrokenPipeError:  # `| head` took what it wanted: no traceback, and none when Python flushes at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    for arg in argv:
        if not arg.startswith("--"):
            if not arg.endswith(".py"):
                raise InputError(f"{arg!r} is neither a config file (*.py) nor a --key=value setting")
            for k, v in read_file(arg).items():
                if k not in keys:
                    raise InputError(f"config file {arg} sets unknown key {k!r}: check the spelling against the "
                                     f"settings at the top of {scope.get('__file__', 'the script')}")
                if k in given:  # later wins, so the file would quietly undo the setting given before it
                    raise InputError(f"config file {arg} comes after {given[k]} and sets {k} again: put the config "
                                     "file first, then the --key=value settings")
                scope[k] = _typecheck(k, scope[k], v, arg)
                if sources is not None:
                    sources[k] = arg
        else:
            if "=" not in arg:
                raise InputError(f"malformed argument {arg!r}: write --key=value")
            k, v = arg[2:].split("=", 1)
            if k not in keys:
                raise InputError(f"unknown setting {k!r} in {arg!r}: check the spelling against the settings at the "
                                 f"top of {scope.get('__file__', 'the script')}")
            if isinstance(scope[k], str):  # a string setting takes the text as given: --name=123 is "123"
                v = v[1:-1] if len(v) > 1 and v[0] == v[-1] and v[0] in "'\"" else v
                v = os.path.expanduser(v) if v.startswith("~") else v  # the shell leaves the ~ of --out=~/x alone
            else:
                try:
                    v = ast.literal_eval(v)
                except (SyntaxError, ValueError):
                    pass  # not a Python literal: keep the string (and let the type check name it)
                if isinstance(v, float) and not math.isfinite(v) or isinstance(v, str) and _is_nonfinite(v):
                    raise InputError(f"{arg}: {k} must be a finite number")
            scope[k] = _typecheck(k, scope[k], v, arg)
            given[k] = arg
            if sources is not None:
                sources[k] = arg
    return {k: scope[k] for k in sorted(keys)}


DTYPES = ("float32", "bfloat16", "float16")  # what a dtype setting may name


def check_device(dev):
    """The device a setting names, "auto" resolved (CUDA, else MPS, else the CPU); a setting that names no device, or
    one this machine does not have, is refused in one line."""
    import torch
    if not isinstance(dev, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", dev):
        raise InputError(f"device={dev!r}: use auto, cpu, cuda, cuda:N or mps")
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device={dev!r} but this machine has no CUDA GPU (torch {torch.__version__}): use "
                         f"--device=cpu or auto")
    if dev.startswith("cuda:") and int(dev[5:]) >= torch.cuda.device_count():
        raise InputError(f"device={dev!r} but this machine has {torch.cuda.device_count()} CUDA GPU(s): use cuda:0 "
                         f"up to cuda:{torch.cuda.device_count() - 1}")
    if dev == "mps" and not torch.backends.mps.is_available():
        raise InputError("device='mps' but Apple's Metal backend is not available here: use --device=cpu or auto")
    if dev == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    return dev


def torch_dtype(name, key="dtype", auto=None):
    """The torch dtype that a setting names (one of DTYPES, or "auto" where the caller says what it means); a
    torch.dtype passes through, anything else is refused in one line."""
    import torch
    if isinstance(name, torch.dtype):
        return name
    if name == "auto" and auto is not None:
        return auto
    if name not in DTYPES:
        raise InputError(f"{key}={name!r}: use {' or '.join((('auto',) if auto is not None else ()) + DTYPES)}")
    return getattr(torch, name)


def print_settings(config, file=sys.stdout):
    width = max(map(len, config), default=0)
    for k, v in config.items():
        print(f"  {k:<{width}} = {v!r}", file=file)
