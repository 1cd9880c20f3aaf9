"""Transposed, depthwise and separable convolutions: factors against patch
formulas from references that do not share the layers' code (autodiff
Jacobians, explicit loops), the per-channel block against the exact Fisher,
one K-FAC step against a dense damped solve, and the layers against Keras'.
"""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from reference import (
    EXACT,
    dense_fisher,
    factored_damped_fisher,
    flat,
    float32_solve_atol,
    numpy_patches,
    with_ones,
)

import keras_kfac
from keras_kfac import layers
from keras_kfac.channel_blocks import ChannelwiseKroneckerBlock


def keras_twin(layer):
    """The Keras layer of `layer`'s class and configuration (less the
    `weight_sharing` only ours takes)."""
    config = layer.get_config()
    config.pop("weight_sharing")
    return getattr(keras.layers, type(layer).__name__).from_config(config)


def jacobian_patches(plain, x):
    """Rows `a_u` of a transposed convolution, from autodiff: `s` is linear
    in the kernel `W` of shape `(*k, out, in)`, and `a_u[κ, c]` is
    `∂s_u[0] / ∂W[κ, 0, c]` (any output channel gives the same), laid out
    `(κ, c)` row-major."""
    with tf.GradientTape() as tape:
        s = plain(x)[..., 0]
    J = tape.jacobian(s, plain.kernel).numpy()
    J = J[..., 0, :]  # (n, *spatial, *k, in): output channel 0's weights
    rows = int(np.prod(s.shape))
    return J.reshape(rows, -1).astype(np.float64)


def recorded(layer, x, u):
    """The layer's `(A, G)` and `∇W` after the backward pass of `Σ s ⊙ u`
    (so `∂L/∂s = u`)."""
    with keras_kfac.collecting_statistics(True):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x, training=True) * u)
        dW = tape.gradient(loss, layer.kernel)
    return layer.statistics.A.numpy(), layer.statistics.G.numpy(), dW.numpy()


TRANSPOSED = {
    "2d-valid": (layers.Conv2DTranspose, {}, (2, 3, 4, 2)),
    "2d-same-stride": (
        layers.Conv2DTranspose,
        dict(strides=2, padding="same"),
        (2, 3, 4, 2),
    ),
    "2d-output-padding": (
        layers.Conv2DTranspose,
        dict(strides=(2, 3), output_padding=(1, 2), use_bias=False),
        (2, 3, 3, 2),
    ),
    "2d-dilated": (layers.Conv2DTranspose, dict(dilation_rate=2), (1, 3, 3, 2)),
    "1d-stride": (layers.Conv1DTranspose, dict(strides=2), (2, 4, 2)),
    "3d-same": (layers.Conv3DTranspose, dict(padding="same"), (1, 2, 3, 2, 2)),
}


@pytest.mark.parametrize("name", sorted(TRANSPOSED))
def test_transposed_factors_match_jacobian_patches(rng, name):
    cls, kwargs, shape = TRANSPOSED[name]
    ours = cls(3, 3 if cls is not layers.Conv3DTranspose else 2, **kwargs)
    plain = keras_twin(ours)
    x = rng.normal(size=shape).astype("float32")
    error = plain_error(plain, x)
    if error is not None:
        # Dilation: TensorFlow's CPU kernels take it only through oneDNN
        # (AVX-512 CPUs); ours runs the same op.
        pytest.skip(f"plain keras.layers.{cls.__name__} fails here: {error}")
    ours.build(shape)
    plain.set_weights(ours.get_weights())
    np.testing.assert_allclose(ours(x), plain(x), rtol=1e-6, atol=1e-6)
    u = rng.normal(size=plain(x).shape).astype("float32")
    A, G, dW = recorded(ours, x, u)
    a = jacobian_patches(plain, x)
    ds = u.reshape(-1, 3).astype(np.float64)
    # The rows' layout is the kernel's, transposed to (κ, c_in, filters):
    # ∇W = Σ_u a_u dsᵀ.
    rank = len(shape) - 2
    dW = np.moveaxis(dW, rank, rank + 1).reshape(-1, 3)
    np.testing.assert_allclose(dW, a.T @ ds, rtol=1e-4, atol=1e-5)
    if ours.use_bias:
        a = with_ones(a)
    np.testing.assert_allclose(A, a.T @ a / len(a), rtol=1e-4, atol=1e-6)
    n = shape[0]
    np.testing.assert_allclose(G, n * ds.T @ ds, rtol=1e-4, atol=1e-4)
    assert ours.kfac_dimensions() == (a.shape[1], 3)


def test_transposed_patches_by_hand_upsample_the_input(rng):
    """Conv1DTranspose, "valid", stride 2: `s_u = Σ_{t,κ: 2t + κ = u} x_t
    W[κ]`, so `a_u[κ] = x_{(u - κ)/2}` where that is a position, else 0."""
    k, stride, length = 3, 2, 4
    layer = layers.Conv1DTranspose(2, k, strides=stride, use_bias=False)
    x = rng.normal(size=(1, length, 2)).astype("float32")
    layer.build(x.shape)
    rows = layer._input_rows(tf.constant(x)).numpy()
    expected = np.zeros(((length - 1) * stride + k, k, 2))
    for u in range(len(expected)):
        for kappa in range(k):
            t, rest = divmod(u - kappa, stride)
            if rest == 0 and 0 <= t < length:
                expected[u, kappa] = x[0, t]
    np.testing.assert_array_equal(rows, expected.reshape(len(expected), -1))


DEPTHWISE = {
    "2d-valid-m2": (layers.DepthwiseConv2D, dict(depth_multiplier=2)),
    "2d-same-stride": (
        layers.DepthwiseConv2D,
        dict(padding="same", strides=2, use_bias=False),
    ),
    "2d-dilated": (layers.DepthwiseConv2D, dict(dilation_rate=2)),
    "1d-same-m3": (
        layers.DepthwiseConv1D,
        dict(padding="same", depth_multiplier=3),
    ),
}


def depthwise_patch_rows(x, kernel_size, kwargs):
    """Explicit-loop patches (`reference.numpy_patches`), a sequence as a
    one-row image."""
    strides = kwargs.get("strides", 1)
    dilation = kwargs.get("dilation_rate", 1)
    padding = kwargs.get("padding", "valid")
    if x.ndim == 3:
        return numpy_patches(
            x[:, None], (1, kernel_size), (1, strides), (1, dilation), padding
        )[0]
    return numpy_patches(
        x, (kernel_size,) * 2, (strides,) * 2, (dilation,) * 2, padding
    )[0]


@pytest.mark.parametrize("name", sorted(DEPTHWISE))
def test_depthwise_factors_are_per_channel_patch_formulas(rng, name):
    cls, kwargs = DEPTHWISE[name]
    k, C, n = 3, 2, 2
    shape = (n, 7, 6, C) if cls is layers.DepthwiseConv2D else (n, 9, C)
    layer = cls(k, **kwargs)
    x = rng.normal(size=shape).astype("float32")
    layer.build(shape)
    plain = keras_twin(layer)
    plain.build(shape)
    plain.set_weights(layer.get_weights())
    np.testing.assert_allclose(layer(x), plain(x), rtol=1e-6, atol=1e-6)
    u = rng.normal(size=plain(x).shape).astype("float32")
    A, G, dW = recorded(layer, x, u)
    M = layer.depth_multiplier
    patches = depthwise_patch_rows(x, k, kwargs).astype(np.float64)
    rows = len(patches)
    a = patches.reshape(rows, -1, C)  # (rows, κ, c): the patch layout
    ds = u.reshape(rows, C, M).astype(np.float64)  # channel c · M + m
    dim_A = a.shape[1] + layer.use_bias
    assert A.shape == (C, dim_A, dim_A) and G.shape == (C, M, M)
    for c in range(C):
        # Channel c's kernel sees only channel c: ∇W_c = Σ_t a_c dsᵀ_c.
        np.testing.assert_allclose(
            dW[..., c, :].reshape(-1, M),
            a[:, :, c].T @ ds[:, c],
            rtol=1e-4,
            atol=1e-5,
        )
        a_c = with_ones(a[:, :, c]) if layer.use_bias else a[:, :, c]
        np.testing.assert_allclose(
            A[c], a_c.T @ a_c / rows, rtol=1e-4, atol=1e-6
        )
        np.testing.assert_allclose(
            G[c], n * ds[:, c].T @ ds[:, c], rtol=1e-4, atol=1e-4
        )


def test_one_example_at_one_position_gives_the_exact_per_channel_fisher(rng):
    """With one example and one position, each channel's `A_c ⊗ G_c` is
    the exact (empirical) Fisher block of that channel's `[W_c; b_c]`, for
    a DepthwiseConv2D and for both stages of a SeparableConv2D (the
    pointwise one over the whole `[W; b]`); `split` undoes the flattening.
    The block drops the Fisher's blocks between channels."""
    x = rng.normal(size=(1, 2, 3, 3)).astype("float32")
    depthwise = layers.DepthwiseConv2D((2, 3), depth_multiplier=2)
    separable = layers.SeparableConv2D(4, (2, 3), depth_multiplier=2)
    for layer in (depthwise, separable):
        layer.build(x.shape)
        y = rng.normal(size=layer(x).shape).astype("float32")
        with keras_kfac.collecting_statistics(True):
            with tf.GradientTape() as tape:
                s = layer(x, training=True)
                loss = tf.reduce_mean(tf.square(s - y))
            grads = tape.gradient(loss, layer.trainable_weights)
        if layer is depthwise:
            stages = [(layer, grads[0], grads[1])]
        else:
            stages = [
                (layer.depthwise_stage, grads[0], None),
                (layer, grads[1], grads[2]),
            ]
        for stage, dW, db in stages:
            block = stage.block_type(stage, 0, None if db is None else 1)
            V = block.gradient_matrix(dW, db).numpy()
            A, G = stage.statistics.A.numpy(), stage.statistics.G.numpy()
            if isinstance(block, ChannelwiseKroneckerBlock):
                assert V.shape == (3, 6 + (db is not None), 2)
                pairs = list(zip(A, G, V))
            else:
                pairs = [(A, G, V)]
            for A_c, G_c, V_c in pairs:
                np.testing.assert_allclose(
                    np.kron(A_c, G_c),
                    np.outer(V_c.ravel(), V_c.ravel()),
                    rtol=1e-5,
                    atol=1e-7,
                )
            kernel, bias = block.split(tf.constant(V))
            np.testing.assert_array_equal(kernel, dW)
            if db is not None:
                np.testing.assert_array_equal(bias, db)


def _tanh_then_dense(first, input_shape):
    return keras.Sequential(
        [
            keras.Input(input_shape),
            first,
            keras.layers.Activation("tanh"),
            keras.layers.Flatten(),
            layers.Dense(2),
        ]
    )


def _flatten(kind, arrays):
    """Weight-shaped `arrays` (gradients or steps) of `_tanh_then_dense` as
    the `V` of each reference block, in order: a transposed kernel
    `(3, 3, out, in)` as rows `(κ, in)`, a depthwise kernel `(3, 3, C, M)`
    channel by channel, each channel's bias entries `c · M …` last."""
    arrays = [np.asarray(v, np.float64) for v in arrays]
    dense = np.vstack([arrays[-2], arrays[-1]])
    if kind == "transpose":
        K, b = arrays[0], arrays[1]
        return [np.vstack([np.swapaxes(K, 2, 3).reshape(-1, 2), b]), dense]
    K = arrays[0]
    C, M = K.shape[-2:]
    b = arrays[1] if kind == "depthwise" else None
    out = []
    for c in range(C):
        V = K[:, :, c].reshape(-1, M)
        out.append(V if b is None else np.vstack([V, b[c * M : c * M + M]]))
    if kind == "separable":
        out.append(np.vstack([arrays[1].reshape(C * M, -1), arrays[2]]))
    return out + [dense]


def _reference_factors(kind, weights, x, y):
    """Independent forward and backward (TensorFlow ops, no keras_kfac):
    each block's `(A, G)` for the net `_tanh_then_dense`, in `_flatten`'s
    order, float64, and the gradient; a depthwise kernel gives one block
    per channel."""
    w = [tf.constant(v) for v in weights]
    n = len(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(w)
        if kind == "transpose":
            s1 = tf.nn.conv2d_transpose(x, w[0], (n, 6, 6, 2), 2, "VALID")
        else:
            s1 = tf.nn.depthwise_conv2d(x, w[0], (1, 1, 1, 1), "SAME")
        if kind == "separable":
            t = s1
            tape.watch(t)
            s1 = tf.nn.conv2d(t, w[1], 1, "VALID")
        s1 = s1 + w[-3]
        tape.watch(s1)
        h = tf.reshape(tf.tanh(s1), (n, -1))
        s2 = h @ w[-2] + w[-1]
        tape.watch(s2)
        loss = tf.reduce_mean(tf.reduce_mean(tf.square(s2 - y), axis=-1))
    grads = tape.gradient(loss, w)

    def rows(t):
        """`∂L/∂t`, float64."""
        return tape.gradient(loss, t).numpy().astype(np.float64)

    def factors(a, ds):
        return a.T @ a / len(a), n * ds.T @ ds

    def channels(a, ds, bias):
        C = x.shape[-1]
        a = a.reshape(len(a), -1, C)
        ds = ds.reshape(len(a), C, -1)
        return [
            factors(with_ones(a[:, :, c]) if bias else a[:, :, c], ds[:, c])
            for c in range(C)
        ]

    patches = numpy_patches(
        x.astype(np.float64), (3,) * 2, (1,) * 2, (1,) * 2, "same"
    )[0]
    if kind == "transpose":
        with tf.GradientTape() as jacobian:
            jacobian.watch(w[0])
            s0 = tf.nn.conv2d_transpose(x, w[0], (n, 6, 6, 2), 2, "VALID")
            s0 = s0[..., 0]
        a = jacobian.jacobian(s0, w[0]).numpy()[..., 0, :]
        a = a.reshape(n * 36, -1).astype(np.float64)
        first = [factors(with_ones(a), rows(s1).reshape(-1, 2))]
    elif kind == "depthwise":
        first = channels(patches, rows(s1), bias=True)
    else:
        first = channels(patches, rows(t), bias=False)
        t_rows = with_ones(t.numpy().reshape(-1, 2).astype(np.float64))
        first.append(factors(t_rows, rows(s1).reshape(-1, 3)))
    h = with_ones(h.numpy().astype(np.float64))
    return first + [factors(h, rows(s2))], grads


NETS = {
    "transpose": (lambda: layers.Conv2DTranspose(2, 2, strides=2), (3, 3, 2)),
    "depthwise": (
        lambda: layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2),
        (3, 3, 2),
    ),
    "separable": (
        lambda: layers.SeparableConv2D(3, 3, padding="same"),
        (3, 3, 2),
    ),
}


@pytest.mark.parametrize("mode", ["eigen", "factored"])
@pytest.mark.parametrize("kind", sorted(NETS))
def test_one_step_equals_dense_damped_solve(rng, kind, mode):
    """One K-FAC step of a net whose first layer is a variant equals the
    damped solve with the dense block-diagonal `⊕ A ⊗ G` of the reference
    factors (one block per channel of a depthwise kernel), mapped back to
    the weights by the reference's own flattening."""
    damping, lr = 0.03, 0.1
    first, shape = NETS[kind]
    model = _tanh_then_dense(first(), shape)
    # Channels of different scales: their blocks (and π) differ.
    x = (rng.normal(size=(4, *shape)) * [1.0, 3.0]).astype("float32")
    y = rng.normal(size=(4, 2)).astype("float32")
    before = model.get_weights()
    blocks, grads = _reference_factors(kind, before, x, y)
    if mode == "eigen":
        F = dense_fisher(blocks) + damping * np.eye(
            sum(len(A) * len(G) for A, G in blocks)
        )
    else:
        F = factored_damped_fisher(blocks, damping)
    expected = -lr * np.linalg.solve(F, flat(_flatten(kind, grads)))
    model.compile(
        optimizer=keras_kfac.KFAC(
            learning_rate=lr, damping=damping, damping_mode=mode, **EXACT
        ),
        loss="mse",
    )
    model.train_on_batch(x, y)
    after = model.get_weights()
    step = flat(_flatten(kind, [a - b for a, b in zip(after, before)]))
    np.testing.assert_allclose(
        step, expected, rtol=0, atol=float32_solve_atol(F, expected)
    )


def variants_model():
    """One of each variant, in a nested model."""
    inner = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.SeparableConv2D(
                3, 3, activation="relu", name="separable2d"
            ),
            keras.layers.Conv2DTranspose(
                2, 3, strides=2, padding="same", name="transpose2d"
            ),
        ],
        name="inner",
    )
    inputs = keras.Input((6, 6, 2))
    h = keras.layers.DepthwiseConv2D(
        3, padding="same", activation="tanh", name="depthwise2d"
    )(inputs)
    h = keras.layers.GlobalAveragePooling2D()(inner(h))
    sequence = keras.layers.Reshape((2, 1))(h)
    sequence = keras.layers.Conv1DTranspose(
        2, 2, activation="tanh", name="transpose1d"
    )(sequence)
    sequence = keras.layers.DepthwiseConv1D(
        2, depth_multiplier=2, name="depthwise1d"
    )(sequence)
    sequence = keras.layers.SeparableConv1D(2, 2, name="separable1d")(sequence)
    outputs = keras.layers.Dense(1)(keras.layers.Flatten()(sequence))
    return keras.Model(inputs, outputs)


def test_convert_turns_every_variant_and_kfac_preconditions_them(rng):
    plain = variants_model()
    ours = keras_kfac.convert(plain)
    inner = ours.get_layer("inner")
    assert [type(layer) for layer in inner.layers] == [
        layers.SeparableConv2D,
        layers.Conv2DTranspose,
    ]
    kinds = {type(layer) for layer in ours.layers}
    assert {
        layers.DepthwiseConv2D,
        layers.Conv1DTranspose,
        layers.DepthwiseConv1D,
        layers.SeparableConv1D,
        layers.Dense,
    } <= kinds
    x = rng.normal(size=(8, 6, 6, 2)).astype("float32")
    np.testing.assert_allclose(ours(x), plain(x), rtol=1e-5, atol=1e-6)
    optimizer = keras_kfac.KFAC()
    optimizer.build(ours.trainable_variables)
    rows = {
        path: update
        for path, _, update in optimizer.summary_rows()
        if path.startswith(("depthwise", "inner/separable2d"))
    }
    separable = "K-FAC SeparableConv2D"
    assert rows == {
        "depthwise2d/kernel": "K-FAC DepthwiseConv2D block 1 "
        "(A 2 x 10x10, G 2 x 1x1)",
        "depthwise2d/bias": "K-FAC DepthwiseConv2D block 1",
        "inner/separable2d/depthwise_kernel": f"{separable} depthwise "
        "block 2 (A 2 x 9x9, G 2 x 1x1)",
        "inner/separable2d/pointwise_kernel": f"{separable} block 3 "
        "(A 3x3, G 3x3)",
        "inner/separable2d/bias": f"{separable} block 3",
        "depthwise1d/kernel": "K-FAC DepthwiseConv1D block 6 "
        "(A 2 x 3x3, G 2 x 2x2)",
        "depthwise1d/bias": "K-FAC DepthwiseConv1D block 6",
    }
    updates = [update for _, _, update in optimizer.summary_rows()]
    assert all(update.startswith("K-FAC") for update in updates)
    assert len(optimizer._estimator.blocks) == 9


def test_a_model_of_every_variant_trains_and_round_trips(rng, tmp_path):
    """A smoke check on top of the oracles above: the loss goes down, and
    the saved model (optimizer state included) loads as ours and resumes
    to the same numbers."""
    model = keras_kfac.convert(variants_model())
    x = rng.normal(size=(32, 6, 6, 2)).astype("float32")
    y = np.tanh(x.mean(axis=(1, 2, 3)))[:, None].astype("float32")
    model.compile(optimizer=keras_kfac.KFAC(learning_rate=0.1), loss="mse")
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    assert model.evaluate(x, y, verbose=0) < before
    path = tmp_path / "variants.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.get_layer("inner").layers[0]) is layers.SeparableConv2D
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6, atol=1e-6)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    loaded.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    for ours, theirs in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def plain_error(layer, x) -> str | None:
    """TensorFlow's error for the plain Keras `layer` on `x` here, forward
    and backward, or `None` (see test_layers.plain_channels_first_conv2d_
    error: without oneDNN, TensorFlow's CPU kernels refuse NCHW and
    dilated transposed convolutions)."""
    try:
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x))
        tape.gradient(loss, layer.trainable_weights)
    except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError) as e:
        text = re.sub(r"\x1b\[[0-9;]*m", "", e.message)
        return " ".join(text.split())[:200]
    return None


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("Conv2DTranspose", dict(filters=3, strides=2)),
        ("DepthwiseConv2D", dict(depth_multiplier=2)),
        ("SeparableConv2D", dict(filters=3)),
    ],
)
def test_channels_first_matches_channels_last_factors(rng, name, kwargs):
    plain = getattr(keras.layers, name)(
        kernel_size=3, data_format="channels_first", **kwargs
    )
    error = plain_error(plain, tf.ones((1, 2, 4, 4)))
    if error is not None:
        pytest.skip(f"plain keras.layers.{name} fails on NCHW here: {error}")
    x = rng.normal(size=(2, 5, 6, 2)).astype("float32")
    stats = []
    for data_format, inputs in (
        ("channels_last", x),
        ("channels_first", np.transpose(x, (0, 3, 1, 2))),
    ):
        layer = getattr(layers, name)(
            kernel_size=3, data_format=data_format, **kwargs
        )
        layer.build(inputs.shape)
        layer.set_weights([np.ones_like(w) for w in layer.get_weights()])
        with keras_kfac.collecting_statistics(True):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.sin(layer(inputs, training=True)))
            tape.gradient(loss, layer.trainable_weights)
        stages = [layer]
        if name == "SeparableConv2D":
            stages.append(layer.depthwise_stage)
        stats.append(
            [(s.statistics.A.numpy(), s.statistics.G.numpy()) for s in stages]
        )
    for first, last in zip(stats[1], stats[0]):
        for f, l in zip(first, last):
            np.testing.assert_allclose(f, l, rtol=1e-5, atol=1e-5)
