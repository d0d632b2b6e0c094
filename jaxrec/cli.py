"""Command-line error handling shared by jaxrec's absl entry points.

Not tied to a paper. An entry point ends with::

    from jaxrec import cli

    if __name__ == "__main__":
        cli.run(main)          # instead of absl.app.run(main)

:func:`run` defines a ``--debug`` flag (unless the program already has one), parses the
flags as absl does and calls ``main``. A *user error* then prints one line,
``error: <message>``, on stderr and exits with status 2, without a traceback; with
``--debug`` the exception propagates and the traceback shows (absl's ``--pdb_post_mortem``
works as usual). User errors are:

- while parsing flags: every flag error, and every error raised by a config file given as
  ``--config=configs/x.py:args`` (ml_collections calls ``get_config`` during parsing; its
  ``ValueError`` for an unknown argument, a syntax error in the file, a file that does not
  exist) and by ``--config.field=value`` overrides (an unknown field, a value of the wrong
  type). absl itself would print "FATAL Flags parsing error" with the config file's
  traceback (status 1), or let a raw traceback through; here the line names the config
  file (and its line, for errors other than ``ValueError``) or the override;
- while running ``main``: the exceptions in :data:`USER_ERRORS`: ``ValueError`` (which
  covers :class:`jaxrec.data.events.DataFormatError`, naming file, line and field, and
  :class:`jaxrec.train.checkpoint.CheckpointMismatchError`), ``KeyError`` (unknown names
  in registries and configs), missing or unreadable files and directories, and
  ``FloatingPointError`` (covers ``jaxrec.train.loop.NonFiniteLossError``: training
  diverged).

Any other exception is a bug and keeps its traceback. ``KeyboardInterrupt`` prints
``interrupted`` and exits with status 130 (what a shell reports for Ctrl-C), without a
traceback unless ``--debug``. Status 1 stays with absl's ``--help`` and a ``main`` that
returns 1.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Callable, Optional, Sequence

from absl import app, flags

FLAGS = flags.FLAGS

USER_ERROR_STATUS = 2
INTERRUPT_STATUS = 130

# Exceptions from ``main`` reported as one line (see the module docstring).
USER_ERRORS = (ValueError, KeyError, FloatingPointError, FileNotFoundError,
               NotADirectoryError, IsADirectoryError, PermissionError)


def define_flags() -> None:
    """Defines ``--debug`` unless it exists (idempotent)."""
    if "debug" not in FLAGS:
        flags.DEFINE_bool("debug", False, "On a data, config or checkpoint error, raise it "
                          "with its traceback instead of printing one 'error:' line.")


def run(main: Callable[[list], Optional[int]], argv: Optional[Sequence[str]] = None) -> None:
    """``absl.app.run(main)`` with user errors reported as one ``error:`` line (status 2).

    Args:
      main: the program, ``main(argv) -> None | int``, as for ``absl.app.run``.
      argv: the command line including the program name; ``sys.argv`` when None.
    """
    define_flags()
    argv = resolve_config_args(sys.argv if argv is None else argv)
    app.run(_guarded(main), argv=argv, flags_parser=_parse_flags)


def resolve_config_args(argv: Sequence[str]) -> list:
    """``--config=NAME[:args]`` with a registered name (``sqn:smoke``) or the
    ``configs/<name>.py`` form becomes the packaged file's path, which ml_collections'
    config flag then loads (:func:`jaxrec.configs.resolve`); a real path is kept."""
    from jaxrec import configs
    out, it = [argv[0]] if argv else [], iter(list(argv)[1:])
    for a in it:
        if a == "--":
            out.append(a)
            out.extend(it)
            break
        for prefix in ("--config=", "-config="):
            if a.startswith(prefix):
                file, arg = configs.split_spec(a[len(prefix):])
                if not os.path.isfile(file):
                    fail(f"--config: no config file {file!r} and no registered config of that "
                         f"name; registered: {', '.join(configs.names())} (e.g. "
                         f"--config=sqn:smoke), or give a path to a config file")
                a = prefix + file + (f":{arg}" if ":" in a[len(prefix):] else "")
                break
        else:
            if a in ("--config", "-config"):
                value = next(it, None)
                if value is not None:
                    file, arg = configs.split_spec(value)
                    out.extend([a, file + (f":{arg}" if ":" in value else "")])
                    continue
        out.append(a)
    return out


def message(exc: BaseException) -> str:
    """The one-line text of an exception: its message with newlines folded, KeyError's
    message unquoted, and the exception's type for a bare KeyError key."""
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        key = exc.args[0]
        text = key if isinstance(key, str) and " " in key.strip() else f"KeyError: {key!r}"
    else:
        text = str(exc) or type(exc).__name__
    return _one_line(text)


def fail(text: str, status: int = USER_ERROR_STATUS) -> None:
    """Prints ``error: <text>`` (one line) on stderr and exits with ``status``."""
    sys.stdout.flush()
    sys.stderr.write(f"error: {_one_line(text)}\n")
    sys.stderr.flush()
    sys.exit(status)


def _one_line(text: str) -> str:
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _debug_requested(argv: Sequence[str]) -> bool:
    """``--debug`` as the command line says (for errors before the flag is parsed)."""
    try:
        if FLAGS["debug"].present:
            return bool(FLAGS["debug"].value)
    except KeyError:
        pass
    debug = False
    for arg in argv[1:]:
        if arg == "--":
            break
        name, _, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and name in ("debug", "nodebug"):
            debug = name == "debug" and value.lower() not in ("false", "0", "no", "f", "n")
    return debug


def _guarded(main):
    def wrapped(argv):
        try:
            return main(argv)
        except KeyboardInterrupt:
            if FLAGS.debug:
                raise
            sys.stdout.flush()
            sys.stderr.write("interrupted\n")
            sys.exit(INTERRUPT_STATUS)
        except USER_ERRORS as e:
            if FLAGS.debug:
                raise
            text = message(e)
            if type(e) in (ValueError, KeyError):
                # Not one of jaxrec's specific errors (DataFormatError, a checkpoint
                # mismatch, ...), which say all there is to say: it may come from deeper
                # code, so point at the traceback.
                text += " (rerun with --debug for the traceback)"
            fail(text)
    return wrapped


# --------------------------------------------------------------------------- flag parsing
def _parse_flags(argv):
    """absl's flags parser, with errors (and config files' errors) as one line."""
    try:
        rest = FLAGS(argv)
    except Exception as e:  # flags.Error, or whatever a config file raised while loading
        if _debug_requested(argv):
            raise
        fail(_flag_error(e))
    for name in list(FLAGS):
        problem = _unloadable_config(name)
        if problem is not None:
            if FLAGS.debug:
                getattr(FLAGS[name].value, "lock")  # raises the stored load error
            fail(problem)
    return rest


def _config_flags():
    """ml_collections' config-flag implementation module (its classes are not exported)."""
    from ml_collections.config_flags import config_flags
    return config_flags


def _chain(exc: BaseException) -> list:
    """exc, its cause (or context), that one's, ... (the last is the root cause)."""
    out = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _config_context(chain: list) -> tuple[Optional[str], Optional[str], Optional[str]]:
    """(config flag name, config file, override field) found in the frames of ``chain``.

    Read from the locals of ml_collections' config-flag parser frames (the flag being
    parsed is not part of its exceptions); (None, None, None) when absent.
    """
    cf = _config_flags()
    name = path = field = None
    for exc in chain:
        for frame, _ in traceback.walk_tb(exc.__traceback__):
            loc = frame.f_locals
            this = loc.get("self")
            if cf.is_config_flag(this):
                name = this.name
                if isinstance(loc.get("argument"), str):
                    path = loc["argument"].split(":", 1)[0]
                if isinstance(loc.get("field_path"), str):
                    field = loc["field_path"]
            elif isinstance(this, cf.ConfigFileFlagParser) and loc.get("split_path"):
                name, path = this.name, loc["split_path"][0]
    return name, path, field


def _flag_error(exc: BaseException) -> str:
    """The one-line message for an exception raised while parsing flags."""
    chain = _chain(exc)
    root = chain[-1]
    name, path, field = _config_context(chain)
    if path is not None and not os.path.isfile(path):
        return f"--{name}: config file {path!r} does not exist"
    if field is not None:
        hint = [l for l in str(root).splitlines() if l.startswith("Did you mean")]
        return (f"--{name}.{field}: the config from {path} has no field {field!r}"
                + (f" ({hint[0]})" if hint else "")
                + f"; --{name}.FIELD overrides only fields the config file defines")
    in_file = _line_in(root, path) if path is not None else None
    if in_file is not None:  # get_config (or the module) raised
        if isinstance(root, (ValueError, KeyError)):
            return f"config file {path}: {message(root)}"
        return f"config file {path}, line {in_file}: {type(root).__name__}: {message(root)}"
    if isinstance(exc, flags.Error):  # absl's own message names the flag
        return message(exc)
    where = f"config file {path}: " if path is not None else ""
    return f"{where}{type(root).__name__}: {message(root)}"


def _line_in(exc: BaseException, path: str) -> Optional[int]:
    """The last line of ``path`` in ``exc``'s traceback (or its SyntaxError location)."""
    target = os.path.abspath(path)
    if isinstance(exc, SyntaxError) and exc.filename and \
            os.path.abspath(exc.filename) == target:
        return exc.lineno
    line = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if os.path.abspath(frame.f_code.co_filename) == target:
            line = lineno
    return line


def _unloadable_config(name: str) -> Optional[str]:
    """A message if flag ``name`` is a config file flag whose file failed to load.

    ml_collections defers such an error (an ``IOError``) to the first use of the config;
    this reports it right after parsing instead.
    """
    cf = _config_flags()
    flag = FLAGS[name]
    if not cf.is_config_flag(flag):
        return None
    error_config = getattr(cf, "_ErrorConfig", None)
    if error_config is None or not isinstance(flag.value, error_config):
        return None
    path = str(cf.get_config_filename(flag)).split(":", 1)[0]
    if not os.path.isfile(path):
        return f"--{name}: config file {path!r} does not exist"
    return f"--{name}: cannot load config file {path!r}: {message(flag.value._error)}"


__all__ = ["run", "define_flags", "fail", "message", "USER_ERRORS", "USER_ERROR_STATUS",
           "INTERRUPT_STATUS"]
