"""Writing the files of a run without following what someone planted there.

A run directory may come from someone else, so a symlink in it must not
make a run write elsewhere. `replace_file` writes a complete new file
under a fresh temporary name (created exclusively, so never through a
link) and renames it over the target, which replaces a symlink there
rather than following it; `replace_with_saved` does the same for a writer
that takes a file name, `replace_directory` for a directory;
`open_for_append` refuses a symlink.
"""

import os
import shutil
import tempfile


def _temporary_beside(path: str, suffix: str = "") -> tuple[int, str]:
    """`(descriptor, name)` of a new empty file beside `path`."""
    directory, name = os.path.split(os.path.abspath(path))
    return tempfile.mkstemp(prefix=f".{name}.", suffix=suffix, dir=directory)


def replace_file(path: str, write, binary: bool = False, suffix: str = ""):
    """Writes the file at `path` through `write(file)`: into a new
    temporary file beside it (named with `suffix`), moved over `path` once
    `write` returns. An error leaves `path` as it was and no temporary file
    behind."""
    handle, temporary = _temporary_beside(path, suffix)
    try:
        mode = "wb" if binary else "w"
        newline = None if binary else ""
        with os.fdopen(handle, mode, newline=newline) as file:
            write(file)
        os.replace(temporary, path)
    except BaseException:
        if os.path.lexists(temporary):
            os.remove(temporary)
        raise


def replace_with_saved(path: str, save, suffix: str = "") -> None:
    """Like `replace_file` for a writer that takes a file name
    (`save(name)`, such as Matplotlib's `savefig`)."""
    handle, temporary = _temporary_beside(path, suffix)
    os.close(handle)
    try:
        save(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.lexists(temporary):
            os.remove(temporary)
        raise


def open_for_append(path: str):
    """The text file at `path` opened to append (created if missing);
    `OSError` if `path` is a symlink."""
    handle = os.open(
        path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644
    )
    return os.fdopen(handle, "a", newline="")


def replace_directory(path: str, save) -> None:
    """Writes the directory at `path` through `save(name)` into a new
    temporary directory beside it, which replaces `path` (a directory, or
    a symlink, which is removed and not followed) once `save` returns."""
    directory, name = os.path.split(os.path.abspath(path))
    scratch = tempfile.mkdtemp(prefix=f".{name}.", dir=directory)
    try:
        saved = os.path.join(scratch, name)
        save(saved)
        if os.path.islink(path) or os.path.isfile(path):
            os.remove(path)
        else:
            shutil.rmtree(path, ignore_errors=True)
        os.replace(saved, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
