"""TensorFlow's start-up notices are held back; every other line on file
descriptor 2 still reaches the user."""

import os
import subprocess
import sys

import pytest

from agents.quiet import held_back

NOTICES = [
    "WARNING: All log messages before absl::InitializeLog() is called are "
    "written to STDERR",
    "I0000 00:00:1795342621.018639   18356 port.cc:153] oneDNN custom "
    "operations are on. You may see slightly different numerical results.",
    "I0000 00:00:1795342621.018967   18356 cudart_stub.cc:31] Could not find "
    "cuda drivers on your machine, GPU will not be used.",
    "E0000 00:00:1795344512.608660   27635 cuda_platform.cc:52] failed call "
    "to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR "
    "(303)",
    "I0000 00:00:1795342576.299595   18099 cpu_feature_guard.cc:227] This "
    "TensorFlow binary is optimized to use available CPU instructions in "
    "performance-critical operations.",
    "To enable the following instructions: AVX2 FMA, in other operations, "
    "rebuild TensorFlow with the appropriate compiler flags.",
    "E0000 00:00:1795344512.929034   27635 util.cc:131] oneDNN supports "
    "DT_INT64 only on platforms with AVX-512. Falling back to the default "
    "Eigen-based implementation if present.",
]
OTHERS = [
    "E0000 00:00:1795344512.929034   27635 some_kernel.cc:12] a real error",
    "UserWarning: something the user should read",
]


def test_only_the_known_notices_are_held_back(capfd):
    with held_back():
        for line in NOTICES[:3] + OTHERS[:1] + NOTICES[3:] + OTHERS[1:]:
            os.write(2, (line + "\n").encode())
    captured = capfd.readouterr()
    assert captured.err.splitlines() == OTHERS


def test_an_error_inside_still_restores_the_descriptor(capfd):
    try:
        with held_back():
            os.write(2, b"kept\n")
            raise RuntimeError("inside")
    except RuntimeError:
        pass
    os.write(2, b"after\n")
    assert capfd.readouterr().err.splitlines() == ["kept", "after"]


@pytest.mark.slow
def test_importing_tensorflow_prints_none_of_its_notices():
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "from agents.quiet import import_tensorflow; import_tensorflow()",
        ],
        capture_output=True,
        text=True,
        env={
            k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"
        },
    )
    assert child.returncode == 0, child.stderr
    for marker in ("InitializeLog", "oneDNN custom", "cuda drivers", "cuInit"):
        assert marker not in child.stderr
