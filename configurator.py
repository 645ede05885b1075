"""
Settings for every script, nanoGPT's idea tidied up. A script keeps its settings as plain module globals
with a comment each, then calls

    configurator.configure(globals(), sys.argv[1:])

which executes an optional config file (a path ending in .py) over those globals, then applies
`--key=value` overrides, parsed as Python literals (`--lr=3e-4`, `--compile=False`, `--betas=(0.9,0.95)`);
a setting whose default is a string takes the text as given (`--init_from=out/run1`). An unknown key, a value whose
type differs from the default's, or a malformed argument stops the script with one line naming it.
"""
import ast
import sys


def _typecheck(key, old, new, where):
    # int -> float is a widening users expect (`--lr=1` for a float default); everything else must match.
    if isinstance(old, bool) != isinstance(new, bool) and old is not None and new is not None:
        pass  # bool is an int subclass in Python; --n_layer=True must not pass as 1
    elif old is None or new is None or isinstance(new, type(old)):
        return new
    if isinstance(old, float) and isinstance(new, int) and not isinstance(new, bool):
        return float(new)
    if isinstance(old, (tuple, list)) and isinstance(new, (tuple, list)):
        return type(old)(new)
    raise SystemExit(f"error: {where} sets {key}={new!r} ({type(new).__name__}), "
                     f"but {key} is a {type(old).__name__} (default {old!r}): give a {type(old).__name__}")


def _settings(scope):
    return {k for k, v in scope.items() if not k.startswith("_") and isinstance(v, (int, float, bool, str, tuple, list, dict, type(None)))}


def configure(scope, argv):
    """Apply a config file and --key=value overrides to `scope` (a script's globals()). Returns the
    dict of settings actually in effect, for printing and for the checkpoint."""
    keys = _settings(scope)
    for arg in argv:
        if not arg.startswith("--"):
            if not arg.endswith(".py"):
                raise SystemExit(f"error: {arg!r} is neither a config file (*.py) nor a --key=value setting")
            try:
                src = open(arg).read()
            except OSError as e:
                raise SystemExit(f"error: cannot read config file {arg}: {e.strerror}")
            cfg = {}
            exec(compile(src, arg, "exec"), {}, cfg)
            for k, v in cfg.items():
                if k.startswith("_") or callable(v) or type(v).__name__ == "module":
                    continue
                if k not in keys:
                    raise SystemExit(f"error: config file {arg} sets unknown key {k!r}: check the spelling "
                                     f"against the settings at the top of {scope.get('__file__', 'the script')}")
                scope[k] = _typecheck(k, scope[k], v, arg)
        else:
            if "=" not in arg:
                raise SystemExit(f"error: malformed argument {arg!r}: write --key=value")
            k, v = arg[2:].split("=", 1)
            if k not in keys:
                raise SystemExit(f"error: unknown setting {k!r} in {arg!r}: check the spelling against the "
                                 f"settings at the top of {scope.get('__file__', 'the script')}")
            if isinstance(scope[k], str):  # a string setting takes the text as given: --name=123 is "123"
                v = v[1:-1] if len(v) > 1 and v[0] == v[-1] and v[0] in "'\"" else v
            else:
                try:
                    v = ast.literal_eval(v)
                except (SyntaxError, ValueError):
                    pass  # not a Python literal: keep the string (and let the type check name it)
            scope[k] = _typecheck(k, scope[k], v, arg)
    return {k: scope[k] for k in sorted(keys)}


def print_settings(config, file=sys.stdout):
    width = max(map(len, config), default=0)
    for k, v in config.items():
        print(f"  {k:<{width}} = {v!r}", file=file)
