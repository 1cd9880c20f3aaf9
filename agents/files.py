"""Writing the files of a run without following what someone planted there.

A run directory may come from someone else, so a symlink in it must not
make a run write elsewhere. `replace_with_saved` writes a complete new
file under a fresh temporary name (created exclusively, so never through
a link) and renames it over the target, which replaces a symlink there
rather than following it; `replace_file` does the same for a writer of an
open file, `replace_directory` for a directory; `open_for_append` refuses
a symlink.
"""

import os
import shutil
import tempfile


def replace_with_saved(path: str, save, suffix: str = "") -> None:
    """Writes the file at `path` through `save(name)` (a writer that takes
    a file name, such as Matplotlib's `savefig`): into a new temporary file
    beside it (named with `suffix`), moved over `path` once `save` returns.
    An error leaves `path` as it was and no temporary file behind."""
    directory, name = os.path.split(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(
        prefix=f".{name}.", suffix=suffix, dir=directory
    )
    os.close(handle)
    try:
        save(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.lexists(temporary):
            os.remove(temporary)
        raise


def replace_file(path: str, write) -> None:
    """`replace_with_saved` for a writer of an open text file,
    `write(file)`."""

    def save(name):
        handle = os.open(name, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
        with os.fdopen(handle, "w", newline="") as file:
            write(file)

    replace_with_saved(path, save)


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
