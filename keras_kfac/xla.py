"""Whether the graph being traced will be compiled by XLA.

Two things depend on it: XLA cannot compile a host callback
(`tf.py_function`, which the skipped-updates warning needs) nor a shape
known only when the step runs (an embedding block's touched rows).
"""

import tensorflow as tf


def in_xla_context() -> bool:
    """Whether the graph being traced now will be compiled by XLA
    (`jit_compile=True`).

    TensorFlow has no public test for this; if its private one moves, the
    answer is `True`, which only costs what XLA cannot compile (the
    warning's callback, the touched-rows shortcut).
    """
    try:
        from tensorflow.python.ops import control_flow_util
    except ImportError:
        return True
    return control_flow_util.GraphOrParentsInXlaContext(
        tf.compat.v1.get_default_graph()
    )
