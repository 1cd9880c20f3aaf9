import functools
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from reference import numpy_patches

import keras_kfac
from keras_kfac import layers

# These tests read the layers' statistics themselves, with no optimizer to
# ask for them: recording is switched on explicitly (conftest.py).
pytestmark = pytest.mark.usefixtures("recording_statistics")


def test_batch_size_one_dense_block_equals_exact_fisher(rng):
    """With one example, A ⊗ G is the exact (empirical) Fisher block of
    [W; b]."""
    layer = layers.Dense(3)
    x = tf.constant(rng.normal(size=(1, 4)).astype("float32"))
    y = tf.constant(rng.normal(size=(1, 3)).astype("float32"))
    layer.build((None, 4))
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(layer(x, training=True) - y))
    dW, db = tape.gradient(loss, [layer.kernel, layer.bias])
    theta_grad = np.concatenate([dW.numpy(), db.numpy()[None]], axis=0).ravel()
    exact = np.outer(theta_grad, theta_grad)
    kron = np.kron(layer.statistics.A.numpy(), layer.statistics.G.numpy())
    np.testing.assert_allclose(kron, exact, rtol=1e-5, atol=1e-7)
    assert layer.statistics.fresh.numpy() == 1.0


def test_statistics_are_not_weights():
    layer = layers.Dense(3)
    layer.build((None, 4))
    assert [w.name for w in layer.weights] == ["kernel", "bias"]


def test_collection_switch_and_inference_leave_statistics_alone(rng):
    layer = layers.Dense(2)
    x = tf.constant(rng.normal(size=(5, 3)).astype("float32"))
    layer.build((None, 3))

    @tf.function
    def fisher_then_loss():
        with tf.GradientTape(persistent=True) as tape:
            out = layer(x, training=True)
            fisher_loss = tf.reduce_sum(out)
            loss = tf.reduce_sum(tf.square(out))
        with keras_kfac.collecting_statistics(True):
            tape.gradient(fisher_loss, layer.trainable_weights)
        with keras_kfac.collecting_statistics(False):
            return tape.gradient(loss, layer.trainable_weights)

    fisher_then_loss()
    # G from sum(out): ∂L/∂s = 1, g = n · 1, G = (1/n) Σ g gᵀ = n² · ones.
    np.testing.assert_allclose(
        layer.statistics.G.numpy(), 25.0 * np.ones((2, 2)), rtol=1e-6
    )
    layer.statistics.fresh.assign(0.0)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x, training=False))
    tape.gradient(loss, layer.trainable_weights)
    assert layer.statistics.fresh.numpy() == 0.0


def test_an_untapped_forward_pass_records_nothing_and_differentiates_alike(
    rng,
):
    # The adaptive step's extra passes: the same outputs and gradients as
    # a tapped pass, and no factor or kernel-gradient norm written.
    layer = layers.Dense(2)
    x = tf.constant(rng.normal(size=(5, 3)).astype("float32"))
    layer.build((None, 3))

    def gradients():
        with tf.GradientTape() as tape:
            out = layer(x, training=True)
            loss = tf.reduce_sum(tf.square(out))
        with keras_kfac.collecting_statistics(True):
            return out, tape.gradient(loss, layer.trainable_weights)

    tapped_out, tapped = gradients()
    layer.statistics.fresh.assign(0.0)
    layer.statistics.kernel_grad_sq.assign(-1.0)
    with keras_kfac.statistics.untapped_forward():
        untapped_out, untapped = gradients()
    assert layer.statistics.fresh.numpy() == 0.0
    assert layer.statistics.kernel_grad_sq.numpy() == -1.0
    np.testing.assert_array_equal(untapped_out, tapped_out)
    for a, b in zip(untapped, tapped):
        np.testing.assert_array_equal(a, b)


def test_a_factors_only_pass_records_the_factors_and_no_gradient_norm(rng):
    # The Fisher pass of `fisher_then_loss_gradients`: its gradient is
    # never applied, so its ‖∇W‖² must not be written.
    layer = layers.Dense(2)
    x = tf.constant(rng.normal(size=(5, 3)).astype("float32"))
    layer.build((None, 3))
    layer.statistics.kernel_grad_sq.assign(-1.0)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x, training=True))
    with (
        keras_kfac.collecting_statistics(True),
        keras_kfac.statistics.factors_only(),
    ):
        tape.gradient(loss, layer.trainable_weights)
    assert layer.statistics.kernel_grad_sq.numpy() == -1.0
    # sum(out): ∂L/∂s = 1, g = n · 1, G = n² · ones; A = [x 1]ᵀ[x 1] / n.
    np.testing.assert_allclose(
        layer.statistics.G.numpy(), 25.0 * np.ones((2, 2))
    )
    rows = np.concatenate([x.numpy(), np.ones((5, 1), "float32")], axis=1)
    np.testing.assert_allclose(
        layer.statistics.A.numpy(), rows.T @ rows / 5, rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(
    "padding,strides,dilation,use_bias",
    [
        ("valid", 1, 1, True),
        ("same", 1, 1, True),
        ("same", 2, 1, False),
        ("valid", 2, 1, True),
        ("same", 1, 2, True),
        ("valid", 1, 2, False),
    ],
)
def test_conv2d_factors_match_patch_formulas(
    rng, padding, strides, dilation, use_bias
):
    layer = layers.Conv2D(
        3,
        (3, 2),
        strides=strides,
        dilation_rate=dilation,
        padding=padding,
        use_bias=use_bias,
    )
    x = rng.normal(size=(2, 7, 6, 2)).astype("float32")
    layer.build(x.shape)
    with tf.GradientTape(persistent=True) as tape:
        s = layer(x, training=True)
        loss = tf.reduce_mean(tf.square(s))
    ds = tape.gradient(loss, s).numpy().reshape(-1, 3)
    a, T = numpy_patches(x, (3, 2), (strides,) * 2, (dilation,) * 2, padding)
    # The patch layout is the kernel layout: ∇W = Σ_t a_t dsᵀ.
    dW = tape.gradient(loss, layer.kernel).numpy()
    np.testing.assert_allclose(
        dW.reshape(-1, 3), a.T @ ds, rtol=1e-4, atol=1e-6
    )
    if use_bias:
        a = np.concatenate([a, np.ones((len(a), 1))], axis=1)
    np.testing.assert_allclose(
        layer.statistics.A.numpy(), a.T @ a / len(a), rtol=1e-4, atol=1e-6
    )
    n = 2
    np.testing.assert_allclose(
        layer.statistics.G.numpy(), n * ds.T @ ds, rtol=1e-4, atol=1e-9
    )
    assert len(a) == n * T


def test_dense_on_sequences_treats_positions_as_rows(rng):
    layer = layers.Dense(2)
    x = rng.normal(size=(3, 4, 5)).astype("float32")
    layer.build(x.shape)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(layer(x, training=True)))
    tape.gradient(loss, layer.trainable_weights)
    a = np.concatenate([x.reshape(-1, 5), np.ones((12, 1))], axis=1)
    np.testing.assert_allclose(
        layer.statistics.A.numpy(), a.T @ a / 12, rtol=1e-5, atol=1e-6
    )


def test_dense_on_sequences_sums_g_over_positions(rng):
    """One example whose positions share one input and whose loss reads
    only the last position: the gradient of `[W; b]` is `a g_Tᵀ`, so the
    exact Fisher block is `a aᵀ ⊗ g_T g_Tᵀ`. `A` averages the positions'
    (equal) inputs and `G` sums their gradients (all but the last zero);
    averaging `G` over the positions instead would be `T` times too small.
    """
    layer = layers.Dense(2)
    x = np.repeat(rng.normal(size=(1, 1, 3)), 4, axis=1).astype("float32")
    layer.build(x.shape)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.sin(layer(x, training=True)[:, -1]))
    dW, db = tape.gradient(loss, [layer.kernel, layer.bias])
    g = np.concatenate([dW.numpy(), db.numpy()[None]], axis=0).ravel()
    kron = np.kron(layer.statistics.A.numpy(), layer.statistics.G.numpy())
    np.testing.assert_allclose(kron, np.outer(g, g), rtol=1e-5, atol=1e-7)


def test_layers_match_keras_outputs_and_serialize(rng):
    x = rng.normal(size=(2, 5, 5, 3)).astype("float32")
    plain = keras.Sequential(
        [
            keras.Input((5, 5, 3)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(2, activation="tanh"),
        ]
    )
    ours = keras_kfac.convert(plain)
    assert [type(l) for l in ours.layers] == [
        layers.Conv2D,
        keras.layers.Flatten,
        layers.Dense,
    ]
    np.testing.assert_allclose(ours(x), plain(x), rtol=1e-6)
    np.testing.assert_allclose(ours(x, training=True), plain(x), rtol=1e-6)
    clone = keras.Sequential.from_config(ours.get_config())
    assert type(clone.layers[0]) is layers.Conv2D


def assert_every_update_is_a_dense_block(model):
    optimizer = keras_kfac.KFAC()
    optimizer.build(model.trainable_variables)
    updates = [update for _, _, update in optimizer.summary_rows()]
    assert all(update.startswith("K-FAC Dense") for update in updates)


def test_convert_reaches_into_nested_models(rng):
    inner = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(5, activation="tanh")],
        name="inner",
    )
    inputs = keras.Input((4,))
    plain = keras.Model(inputs, keras.layers.Dense(2)(inner(inputs)))
    ours = keras_kfac.convert(plain)
    nested = [l for l in ours.layers if isinstance(l, keras.Model)]
    assert [type(l) for l in nested[0].layers] == [layers.Dense]
    assert type(ours.layers[-1]) is layers.Dense
    x = rng.normal(size=(3, 4)).astype("float32")
    np.testing.assert_allclose(ours(x), plain(x), rtol=1e-6)
    assert_every_update_is_a_dense_block(ours)


def test_convert_turns_the_layer_inside_time_distributed(rng):
    inputs = keras.Input((6, 4))
    hidden = keras.layers.TimeDistributed(keras.layers.Dense(5))(inputs)
    plain = keras.Model(inputs, keras.layers.Dense(2)(hidden))
    ours = keras_kfac.convert(plain)
    wrapper = ours.layers[1]
    assert type(wrapper) is keras.layers.TimeDistributed
    assert type(wrapper.layer) is layers.Dense
    x = rng.normal(size=(3, 6, 4)).astype("float32")
    np.testing.assert_allclose(ours(x), plain(x), rtol=1e-6)
    assert_every_update_is_a_dense_block(ours)


def test_grouped_conv_is_rejected_and_left_to_keras_by_convert(rng):
    with pytest.raises(ValueError, match="groups=2"):
        layers.Conv2D(4, 3, groups=2)
    inputs = keras.Input((6, 6, 4))
    hidden = keras.layers.Conv2D(4, 3, groups=2)(inputs)
    hidden = keras.layers.Conv1D(4, 2, groups=4)(
        keras.layers.Reshape((16, 4))(hidden)
    )
    plain = keras.Model(inputs, keras.layers.Conv1D(2, 2)(hidden))
    ours = keras_kfac.convert(plain)
    kinds = [type(l) for l in ours.layers if "conv" in l.name]
    assert kinds == [keras.layers.Conv2D, keras.layers.Conv1D, layers.Conv1D]
    x = rng.normal(size=(2, 6, 6, 4)).astype("float32")
    np.testing.assert_allclose(ours(x), plain(x), rtol=1e-6)


def test_convert_rejects_bad_input():
    with pytest.raises(TypeError, match="str"):
        keras_kfac.convert("model")
    with pytest.raises(ValueError, match="built"):
        keras_kfac.convert(keras.Sequential([keras.layers.Dense(2)]))


@functools.cache
def plain_channels_first_conv2d_error() -> str | None:
    """TensorFlow's error for plain Keras NCHW Conv2D here, or `None`.

    TensorFlow's CPU Conv2D kernels take NCHW only through oneDNN, which it
    turns on by default only on x86 CPUs with AVX-512 VNNI/BF16 or AMX;
    elsewhere (an AMD EPYC without AVX-512, or `TF_ENABLE_ONEDNN_OPTS=0`)
    plain `keras.layers.Conv2D(data_format="channels_first")` fails, and so
    does ours, which calls the same op. Probed once, forward and backward.
    """
    layer = keras.layers.Conv2D(1, 1, data_format="channels_first")
    x = tf.ones((1, 1, 2, 2))
    try:
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x))
        tape.gradient(loss, layer.trainable_weights)
    except tf.errors.UnimplementedError as error:
        # Keep TensorFlow's own sentence, without Keras' frame and colours.
        text = re.sub(r"\x1b\[[0-9;]*m", "", error.message)
        op_error = re.search(r"\}\}\s*(.*?\[Op:\w+\])", text, re.DOTALL)
        return " ".join((op_error.group(1) if op_error else text).split())
    return None


def test_conv2d_channels_first_matches_channels_last_factors(rng):
    error = plain_channels_first_conv2d_error()
    if error is not None:
        pytest.skip(
            "plain keras.layers.Conv2D(data_format='channels_first') fails "
            f"on this CPU too: {error}"
        )
    x = rng.normal(size=(2, 7, 6, 2)).astype("float32")
    stats = []
    for data_format, inputs in (
        ("channels_last", x),
        ("channels_first", np.transpose(x, (0, 3, 1, 2))),
    ):
        layer = layers.Conv2D(
            3,
            (3, 2),
            padding="same",
            data_format=data_format,
            kernel_initializer="ones",
        )
        layer.build(inputs.shape)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(layer(inputs, training=True)))
        tape.gradient(loss, layer.trainable_weights)
        stats.append((layer.statistics.A.numpy(), layer.statistics.G.numpy()))
    a, _ = numpy_patches(x, (3, 2), (1, 1), (1, 1), "same")
    a = np.concatenate([a, np.ones((len(a), 1))], axis=1)
    np.testing.assert_allclose(
        stats[1][0], a.T @ a / len(a), rtol=1e-5, atol=1e-6
    )
    for first, last in zip(stats[1], stats[0]):
        np.testing.assert_allclose(first, last, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "padding, stride, dilation",
    [("valid", 1, 1), ("same", 2, 1), ("causal", 1, 2), ("causal", 2, 1)],
)
def test_conv1d_factors_match_window_formulas(rng, padding, stride, dilation):
    k, n, length, c_in = 3, 2, 9, 2
    layer = layers.Conv1D(
        4, k, strides=stride, dilation_rate=dilation, padding=padding
    )
    x = rng.normal(size=(n, length, c_in)).astype("float32")
    layer.build(x.shape)
    with tf.GradientTape(persistent=True) as tape:
        s = layer(x, training=True)
        loss = tf.reduce_mean(tf.square(s))
    np.testing.assert_allclose(
        s, keras.layers.Conv1D.call(layer, x), rtol=1e-5, atol=1e-6
    )
    ds = tape.gradient(loss, s).numpy().reshape(-1, 4)
    # Windows by hand: a one-row image, causal = left padding then valid.
    if padding == "causal":
        x_padded = np.pad(x, ((0, 0), (dilation * (k - 1), 0), (0, 0)))
        a, T = numpy_patches(
            x_padded[:, None], (1, k), (1, stride), (1, dilation), "valid"
        )
    else:
        a, T = numpy_patches(
            x[:, None], (1, k), (1, stride), (1, dilation), padding
        )
    dW = tape.gradient(loss, layer.kernel).numpy()
    np.testing.assert_allclose(
        dW.reshape(-1, 4), a.T @ ds, rtol=1e-4, atol=1e-6
    )
    a = np.concatenate([a, np.ones((len(a), 1))], axis=1)
    np.testing.assert_allclose(
        layer.statistics.A.numpy(), a.T @ a / len(a), rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(
        layer.statistics.G.numpy(), n * ds.T @ ds, rtol=1e-4, atol=1e-9
    )


def test_convert_turns_conv1d_into_ours(rng):
    plain = keras.Sequential(
        [keras.Input((8, 2)), keras.layers.Conv1D(3, 2, padding="causal")]
    )
    ours = keras_kfac.convert(plain)
    assert type(ours.layers[0]) is layers.Conv1D
    x = rng.normal(size=(2, 8, 2)).astype("float32")
    np.testing.assert_allclose(ours(x), plain(x), rtol=1e-6)
    optimizer = keras_kfac.KFAC()
    optimizer.build(ours.trainable_variables)
    assert [u for _, _, u in optimizer.summary_rows()] == [
        "K-FAC Conv1D block 1 (A 5x5, G 3x3)",
        "K-FAC Conv1D block 1",
    ]
    with pytest.raises(ValueError, match="groups=2"):
        layers.Conv1D(4, 3, groups=2)


@pytest.mark.parametrize(
    "padding,strides,use_bias",
    [("valid", 1, True), ("same", 1, True), ("same", 2, False)],
)
def test_conv3d_factors_match_patch_formulas(rng, padding, strides, use_bias):
    # The patch rows' layout is the kernel's exactly when ∇W = Σ_t a_t dsᵀ.
    layer = layers.Conv3D(
        3, (2, 3, 2), strides=strides, padding=padding, use_bias=use_bias
    )
    x = rng.normal(size=(2, 4, 5, 4, 2)).astype("float32")
    layer.build(x.shape)
    with tf.GradientTape(persistent=True) as tape:
        s = layer(x, training=True)
        loss = tf.reduce_mean(tf.square(s))
    ds = tape.gradient(loss, s).numpy().reshape(-1, 3)
    a = layer._input_rows(tf.constant(x)).numpy().astype(np.float64)
    assert a.shape == (len(ds), 2 * 3 * 2 * 2)
    dW = tape.gradient(loss, layer.kernel).numpy()
    np.testing.assert_allclose(
        dW.reshape(-1, 3), a.T @ ds, rtol=1e-4, atol=1e-6
    )
    if use_bias:
        a = np.concatenate([a, np.ones((len(a), 1))], axis=1)
    np.testing.assert_allclose(
        layer.statistics.A.numpy(), a.T @ a / len(a), rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(
        layer.statistics.G.numpy(), 2 * ds.T @ ds, rtol=1e-4, atol=1e-9
    )


def test_conv3d_patches_are_the_input_at_one_position(rng):
    # A kernel the size of the input: one patch, the input itself, flattened
    # as (depth, rows, columns, channels).
    layer = layers.Conv3D(2, (2, 3, 2))
    x = rng.normal(size=(1, 2, 3, 2, 3)).astype("float32")
    layer.build(x.shape)
    np.testing.assert_array_equal(
        layer._input_rows(tf.constant(x)).numpy(), x.reshape(1, -1)
    )


def test_dilated_conv3d_is_refused_and_left_to_keras_by_convert():
    with pytest.raises(ValueError, match=r"dilation_rate=\(2, 1, 1\)"):
        layers.Conv3D(2, 3, dilation_rate=(2, 1, 1))
    model = keras.Sequential(
        [
            keras.Input((6, 6, 6, 1)),
            keras.layers.Conv3D(2, 2, dilation_rate=2),
            keras.layers.Conv3D(2, 2),
        ]
    )
    converted = keras_kfac.convert(model)
    assert [type(layer) for layer in converted.layers] == [
        keras.layers.Conv3D,
        layers.Conv3D,
    ]
