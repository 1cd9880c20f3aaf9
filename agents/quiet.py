"""TensorFlow without its known, harmless start-up notices.

TensorFlow's C++ runtime writes to file descriptor 2 while it loads,
before any log level applies: that logging is not initialized yet
(`TF_CPP_MIN_LOG_LEVEL` does not reach those lines), that oneDNN is on,
that no CUDA driver was found (twice: at load and at device set-up),
which CPU instructions the build could use; and, at the first int64
operation, that oneDNN leaves those to Eigen. `held_back()` captures
descriptor 2 and writes back every line but those (`HARMLESS`): any other
message, a warning or a traceback, still reaches the user.
"""

import contextlib
import os
import re
import sys
import tempfile

# The notices of a CPU-only TensorFlow; nothing else is held back.
HARMLESS = tuple(
    re.compile(pattern)
    for pattern in (
        r"^WARNING: All log messages before absl::InitializeLog\(\) is "
        r"called are written to STDERR$",
        r"\] oneDNN custom operations are on\.",
        r"cudart_stub\.cc:\d+\] Could not find cuda drivers",
        r"cuda_platform\.cc:\d+\] failed call to cuInit: .*\(303\)$",
        r"cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized",
        r"^To enable the following instructions: .*, in other operations, "
        r"rebuild TensorFlow with the appropriate compiler flags\.$",
        r"util\.cc:\d+\] oneDNN supports DT_INT64 only on platforms with "
        r"AVX-512\. Falling back",
    )
)


@contextlib.contextmanager
def held_back():
    """Captures file descriptor 2 for the block; afterwards writes back
    to `sys.stderr` every captured line that is not `HARMLESS`."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 (closed): nothing to hold back
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", errors="replace")
            kept = [
                line
                for line in text.splitlines()
                if not any(pattern.search(line) for pattern in HARMLESS)
            ]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)


def import_tensorflow():
    """`import tensorflow` and its device set-up, `held_back()`; returns
    the module."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with held_back():
        import tensorflow

        tensorflow.config.list_logical_devices()
    return tensorflow
