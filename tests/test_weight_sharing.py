"""K-FAC-reduce on every layer that shares its weights over positions
(Eschenhagen et al. 2023): exact where the loss sees the positions only
through their mean, its factors against the patch formulas on a batch, and
`convert`'s choice reaching every such layer."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from reference import numpy_patches, with_ones

import keras_kfac
from keras_kfac import layers
from keras_kfac.channel_blocks import ChannelwiseKroneckerBlock

pytestmark = pytest.mark.usefixtures("recording_statistics")

# name -> (layer factory taking weight_sharing, input shape of one example)
SHARED = {
    "dense": (lambda ws: layers.Dense(3, weight_sharing=ws), (5, 4)),
    "einsum_dense": (
        lambda ws: layers.EinsumDense(
            "abc,cde->abde", (None, 2, 3), bias_axes="de", weight_sharing=ws
        ),
        (5, 4),
    ),
    "conv1d_causal": (
        lambda ws: layers.Conv1D(3, 3, padding="causal", weight_sharing=ws),
        (7, 2),
    ),
    "conv2d_strided_same": (
        lambda ws: layers.Conv2D(
            3, (3, 2), strides=2, padding="same", weight_sharing=ws
        ),
        (6, 5, 2),
    ),
    "conv3d": (lambda ws: layers.Conv3D(2, 2, weight_sharing=ws), (3, 3, 4, 2)),
    "conv2d_transpose": (
        lambda ws: layers.Conv2DTranspose(3, 3, strides=2, weight_sharing=ws),
        (3, 4, 2),
    ),
    "depthwise_conv2d": (
        lambda ws: layers.DepthwiseConv2D(
            (2, 3), depth_multiplier=2, weight_sharing=ws
        ),
        (4, 5, 3),
    ),
    "separable_conv1d": (
        lambda ws: layers.SeparableConv1D(
            4, 3, depth_multiplier=2, weight_sharing=ws
        ),
        (7, 3),
    ),
}


def stages_and_gradients(layer, x, u):
    """`[(stage, dW, db)]` of the loss `Σ_c u_c sin(mean_t s_tc)`, which
    sees the output positions `t` only through their mean; a separable
    layer has two stages."""
    with tf.GradientTape() as tape:
        s = layer(x, training=True)
        pooled = tf.reduce_mean(tf.reshape(s, (1, -1, s.shape[-1])), axis=1)
        loss = tf.reduce_sum(u * tf.sin(pooled))
    stages = [layer]
    if isinstance(layer, layers.SeparableConv1D):
        stages.insert(0, layer.depthwise_stage)
    variables = [[st.kfac_kernel, st.kfac_bias] for st in stages]
    gradients = tape.gradient(
        loss, [v for pair in variables for v in pair if v is not None]
    )
    out = []
    for stage, (_, bias) in zip(stages, variables):
        dW = gradients.pop(0)
        db = None if bias is None else gradients.pop(0)
        out.append((stage, dW, db))
    return out


def kron_and_outer(stage, dW, db):
    """Per block (per channel for a depthwise one): `(A ⊗ G, v vᵀ)` with
    `v` the example's gradient flattened as the block flattens it."""
    block = stage.block_type(stage, 0, None if db is None else 1)
    V = block.gradient_matrix(dW, db).numpy()
    A, G = stage.statistics.A.numpy(), stage.statistics.G.numpy()
    if isinstance(block, ChannelwiseKroneckerBlock):
        pairs = zip(A, G, V)
    else:
        pairs = [(A, G, V)]
    return [(np.kron(A_c, G_c), np.outer(V_c, V_c)) for A_c, G_c, V_c in pairs]


@pytest.mark.parametrize("name", sorted(SHARED))
def test_reduce_is_the_exact_fisher_of_a_pooled_output(rng, name):
    """One example whose loss reads the mean over its output positions:
    every position's `g` is the same, the gradient is `â ĝᵀ`, and reduce's
    `A ⊗ G` is its exact (empirical) Fisher block; expand's is not."""
    build, shape = SHARED[name]
    x = rng.normal(size=(1, *shape)).astype("float32")
    for weight_sharing in ("reduce", "expand"):
        keras.utils.set_random_seed(1)
        layer = build(weight_sharing)
        layer.build(x.shape)
        u = rng.normal(size=layer(x).shape[-1:]).astype("float32")
        for stage, dW, db in stages_and_gradients(layer, x, u):
            for kron, outer in kron_and_outer(stage, dW, db):
                if weight_sharing == "reduce":
                    np.testing.assert_allclose(
                        kron, outer, rtol=1e-4, atol=1e-6 * abs(outer).max()
                    )
                else:
                    assert not np.allclose(kron, outer, rtol=0.1), stage.name


@pytest.mark.parametrize(
    "padding, strides, dilation",
    [("valid", 1, 1), ("same", 2, 1), ("same", 1, 2)],
)
def test_reduced_conv2d_factors_are_the_patch_formulas(
    rng, padding, strides, dilation
):
    """A batch of three: `A = E_n[â âᵀ]` with `â` an example's patches
    averaged (the 1 appended after), `G = E_n[ĝ ĝᵀ]` with `ĝ = n Σ_t ∂L/∂s_t`
    (`n` undoing the loss's mean over the batch)."""
    n = 3
    layer = layers.Conv2D(
        3,
        (3, 2),
        strides=strides,
        dilation_rate=dilation,
        padding=padding,
        weight_sharing="reduce",
    )
    x = rng.normal(size=(n, 7, 6, 2)).astype("float32")
    layer.build(x.shape)
    with tf.GradientTape() as tape:
        s = layer(x, training=True)
        loss = tf.reduce_mean(tf.square(s - 1.0))
    ds = tape.gradient(loss, s).numpy()
    a, T = numpy_patches(x, (3, 2), (strides,) * 2, (dilation,) * 2, padding)
    a_hat = with_ones(a.reshape(n, T, -1).mean(axis=1))
    g_hat = n * ds.reshape(n, -1, 3).sum(axis=1)
    np.testing.assert_allclose(
        layer.statistics.A.numpy(), a_hat.T @ a_hat / n, rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(
        layer.statistics.G.numpy(), g_hat.T @ g_hat / n, rtol=1e-4, atol=1e-8
    )


def test_reduce_on_vectors_is_expand(rng):
    """A Dense layer on a batch of vectors has one position per example:
    both choices record the same factors, bit for bit (the same ops)."""
    x = rng.normal(size=(6, 4)).astype("float32")
    recorded = []
    for weight_sharing in ("expand", "reduce"):
        keras.utils.set_random_seed(1)
        layer = layers.Dense(3, weight_sharing=weight_sharing)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.sin(layer(x, training=True)))
        tape.gradient(loss, layer.trainable_weights)
        recorded.append(
            (layer.statistics.A.numpy(), layer.statistics.G.numpy())
        )
    for expand, reduce in zip(*recorded):
        np.testing.assert_array_equal(reduce, expand)


def test_convert_gives_every_weight_shared_layer_the_choice(tmp_path):
    inputs = keras.Input((8, 8, 2))
    h = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    h = keras.layers.SeparableConv2D(4, 3)(h)
    h = keras.layers.DepthwiseConv2D(3)(h)
    h = keras.layers.Conv2DTranspose(2, 2, strides=2)(h)
    h = keras.layers.Reshape((-1, 2))(h)
    h = keras.layers.MultiHeadAttention(2, 4)(h, h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    inner = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
    model = keras.Model(inputs, inner(h))
    converted = keras_kfac.convert(model, weight_sharing="reduce")
    shared = [
        layer
        for layer in converted._flatten_layers()
        if hasattr(layer, "weight_sharing")
    ]
    kinds = {type(layer).__name__ for layer in shared}
    assert kinds == {
        "Conv2D",
        "SeparableConv2D",
        "DepthwiseConv2D",
        "Conv2DTranspose",
        "MultiHeadAttention",
        "EinsumDense",
        "Dense",
    }
    assert {layer.weight_sharing for layer in shared} == {"reduce"}
    assert converted.layers[2].depthwise_stage.weight_sharing == "reduce"
    assert {
        layer.weight_sharing
        for layer in keras_kfac.convert(model)._flatten_layers()
        if hasattr(layer, "weight_sharing")
    } == {"expand"}
    path = str(tmp_path / "reduced.keras")
    converted.save(path)
    restored = keras.models.load_model(path)
    assert {
        layer.weight_sharing
        for layer in restored._flatten_layers()
        if hasattr(layer, "weight_sharing")
    } == {"reduce"}


def test_the_summary_names_the_reduced_blocks():
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(3, 3),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )
    updates = []
    for weight_sharing in ("expand", "reduce"):
        converted = keras_kfac.convert(model, weight_sharing=weight_sharing)
        optimizer = keras_kfac.KFAC()
        optimizer.build(converted.trainable_variables)
        updates.append([row[2] for row in optimizer.summary_rows()])
    expand, reduce = updates
    assert reduce[0] == "K-FAC Conv2D block 1 (A 19x19, G 3x3, reduce)"
    assert expand[0] == "K-FAC Conv2D block 1 (A 19x19, G 3x3)"
    # A Dense layer on vectors takes the setting too, and says so.
    assert reduce[2].endswith(", reduce)") and not expand[2].endswith(
        ", reduce)"
    )


def test_an_unknown_weight_sharing_is_refused():
    model = keras.Sequential([keras.Input((3, 2)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="Received: weight_sharing='mean'"):
        keras_kfac.convert(model, weight_sharing="mean")
    with pytest.raises(ValueError, match="Received: weight_sharing='pool'"):
        layers.Conv2D(2, 3, weight_sharing="pool")


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_a_reduced_model_trains_through_true_fisher_model(rng, policy):
    """A pooled convolutional classifier converted with reduce, trained by
    the adaptive K-FAC (under `mixed_float16` too, where the reduced rows
    are summed in float32): the training loss falls and every factor is
    finite float32."""
    x = rng.normal(size=(64, 6, 6, 2)).astype("float32")
    y = (x[:, :3].mean(axis=(1, 2, 3)) > 0).astype("int32")
    keras.config.set_dtype_policy(policy)
    try:
        plain = keras.Sequential(
            [
                keras.Input((6, 6, 2)),
                keras.layers.Conv2D(4, 3, activation="tanh"),
                keras.layers.GlobalAveragePooling2D(),
                keras.layers.Dense(2),
            ]
        )
        model = keras_kfac.TrueFisherModel(
            keras_kfac.convert(plain, weight_sharing="reduce")
        )
        model.compile(
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        history = model.fit(x, y, batch_size=16, epochs=4, verbose=0)
    finally:
        keras.config.set_dtype_policy("float32")
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    conv = model.model.layers[0]
    assert conv.weight_sharing == "reduce"
    for factor in (conv.statistics.A, conv.statistics.G):
        assert factor.dtype == "float32"
        assert np.all(np.isfinite(factor.numpy()))
