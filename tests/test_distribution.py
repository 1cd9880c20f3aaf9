"""MirroredStrategy over two logical CPUs matches one device.

TensorFlow fixes its logical devices at start-up, so the comparison runs in a
fresh interpreter.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

SCRIPT = textwrap.dedent(
    """
    import json
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    import keras_kfac

    def run(strategy):
        keras.utils.set_random_seed(0)
        rng = np.random.default_rng(0)
        x = rng.normal(size=(64, 6, 6, 1)).astype("float32")
        y = rng.normal(size=(64, 2)).astype("float32")
        with strategy.scope():
            model = keras.Sequential([
                keras.Input((6, 6, 1)),
                keras_kfac.layers.Conv2D(3, 3, activation="tanh"),
                keras.layers.Flatten(),
                keras_kfac.layers.Dense(8, activation="tanh"),
                keras_kfac.layers.Dense(2)])
            model.compile(optimizer=keras_kfac.KFAC(
                learning_rate=0.1, kl_clip=1e-2, momentum=0.9, stats_decay=0.9,
                inverse_update_freq=2, cold_steps=1), loss="mse")
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        factors = [np.asarray(f["G"]).tolist() for f in model.optimizer._factors]
        return [w.tolist() for w in model.get_weights()], factors

    replicas = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert replicas.num_replicas_in_sync == 2
    single = tf.distribute.OneDeviceStrategy("/cpu:0")
    print("RESULT" + json.dumps({"mirrored": run(replicas), "single": run(single)}))
    """
)


def test_mirrored_strategy_matches_single_device():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT"))
    result = json.loads(line[len("RESULT") :])
    (w_m, f_m), (w_s, f_s) = result["mirrored"], result["single"]
    for a, b in zip(f_m, f_s):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    for a, b in zip(w_m, w_s):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
