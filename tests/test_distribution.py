"""MirroredStrategy over two logical CPUs, and MultiWorkerMirroredStrategy
over two local worker processes, match one device.

TensorFlow fixes its logical devices and its cluster at start-up, so each
comparison runs in fresh interpreters.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

# The problem both comparisons train, in the fresh interpreters: data, the
# model and its K-FAC, and what is compared after training.
PROBLEM = textwrap.dedent(
    """
    import json
    import keras
    import numpy as np
    import keras_kfac

    def data():
        keras.utils.set_random_seed(0)
        rng = np.random.default_rng(0)
        x = rng.normal(size=(64, 6, 6, 1)).astype("float32")
        y = rng.normal(size=(64, 2)).astype("float32")
        return x, y

    def model_and_optimizer():
        model = keras.Sequential([
            keras.Input((6, 6, 1)),
            keras_kfac.layers.Conv2D(3, 3, activation="tanh"),
            keras.layers.Flatten(),
            keras_kfac.layers.Dense(8, activation="tanh"),
            keras_kfac.layers.Dense(2)])
        optimizer = keras_kfac.KFAC(
            learning_rate=0.1, kl_clip=1e-2, momentum=0.9, stats_decay=0.9,
            inverse_update_freq=2, cold_steps=1)
        return model, optimizer

    def trained(model, optimizer):
        factors = [np.asarray(f.G).tolist() for f in optimizer.estimator.states]
        return [w.tolist() for w in model.get_weights()], factors
    """
)

SCRIPT = (
    textwrap.dedent(
        """
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        """
    )
    + PROBLEM
    + textwrap.dedent(
        """
        def run(strategy):
            x, y = data()
            with strategy.scope():
                model, optimizer = model_and_optimizer()
                model.compile(optimizer=optimizer, loss="mse")
            model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
            return trained(model, optimizer)

        replicas = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert replicas.num_replicas_in_sync == 2
        single = tf.distribute.OneDeviceStrategy("/cpu:0")
        print("RESULT" + json.dumps(
            {"mirrored": run(replicas), "single": run(single)}))
        """
    )
)


@pytest.mark.slow
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


# One worker of a two-worker cluster (TF_CONFIG set by the test). Keras
# 3.15's `model.fit` cannot run under MultiWorkerMirroredStrategy at all
# (its symbolic build calls `strategy.reduce` on the data batch, which the
# collective strategy rejects, whatever the optimizer), so the workers
# train in a custom loop: the replica's loss is its share of the global
# batch's mean, as Keras' own train step scales it.
WORKER = (
    textwrap.dedent(
        """
        import tensorflow as tf
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        """
    )
    + PROBLEM
    + textwrap.dedent(
        """
        def run(strategy):
            x, y = data()
            batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
            with strategy.scope():
                model, optimizer = model_and_optimizer()
                optimizer.build(model.trainable_variables)

            @tf.function
            def step(x, y):
                def replica(x, y):
                    with tf.GradientTape() as tape:
                        error = tf.square(model(x, training=True) - y)
                        loss = tf.reduce_sum(tf.reduce_mean(error, -1)) / 16.0
                    grads = tape.gradient(loss, model.trainable_variables)
                    optimizer.apply_gradients(
                        zip(grads, model.trainable_variables))
                strategy.run(replica, (x, y))

            for _ in range(2):
                for batch in strategy.experimental_distribute_dataset(batches):
                    step(*batch)
            return trained(model, optimizer)

        assert strategy.num_replicas_in_sync == 2
        result = {"workers": run(strategy)}
        result["single"] = run(tf.distribute.OneDeviceStrategy("/cpu:0"))
        print("RESULT" + json.dumps(result))
        """
    )
)


def free_localhost_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_multi_worker_mirrored_strategy_matches_single_device():
    cluster = {"worker": [f"localhost:{p}" for p in free_localhost_ports(2)]}
    workers = []
    for index in range(2):
        task = {"type": "worker", "index": index}
        env = dict(
            os.environ,
            TF_CPP_MIN_LOG_LEVEL="2",
            TF_CONFIG=json.dumps({"cluster": cluster, "task": task}),
        )
        workers.append(
            subprocess.Popen(
                [sys.executable, "-c", WORKER],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    try:
        outputs = [w.communicate(timeout=600) for w in workers]
    finally:
        for w in workers:
            w.kill()
    results = []
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-3000:]
        line = next(l for l in out.splitlines() if l.startswith("RESULT"))
        results.append(json.loads(line[len("RESULT") :]))
    # Both workers hold the same model, and it is the one-device model.
    for a, b in zip(results[0]["workers"][0], results[1]["workers"][0]):
        np.testing.assert_array_equal(a, b)
    (w_m, f_m), (w_s, f_s) = results[0]["workers"], results[0]["single"]
    for a, b in zip(f_m, f_s):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    for a, b in zip(w_m, w_s):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
