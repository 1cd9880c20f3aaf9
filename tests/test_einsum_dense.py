"""`EinsumDense` and `MultiHeadAttention`: factors against the formulas of
expand and reduce (Eschenhagen et al. 2023), the block against the exact
Fisher, and the layers against Keras'."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kfac
from keras_kfac import blocks, layers

# These tests read the layers' statistics themselves, with no optimizer to
# ask for them: recording is switched on explicitly (conftest.py).
pytestmark = pytest.mark.usefixtures("recording_statistics")


def recorded_factors(layer, x, u):
    """`(A, G, s)` after the backward pass of `Σ s ⊙ u` (so `∂L/∂s = u`)."""
    with tf.GradientTape() as tape:
        s = layer(x, training=True)
        loss = tf.reduce_sum(s * u)
    tape.gradient(loss, layer.trainable_weights)
    return layer.statistics.A.numpy(), layer.statistics.G.numpy(), s


# (equation, output_shape, bias_axes, input shape): attention's query and
# output projections, and a kernel whose output axes are not in the
# output's order.
PROJECTIONS = {
    "query": ("abc,cde->abde", (None, 2, 3), "de", (4, 5, 6)),
    "output": ("abcd,cde->abe", (None, 6), "e", (4, 5, 2, 3)),
    "permuted": ("abc,ecd->abde", (None, 3, 2), "de", (4, 5, 6)),
}


@pytest.mark.parametrize("name", sorted(PROJECTIONS))
@pytest.mark.parametrize("weight_sharing", ["expand", "reduce"])
def test_factors_match_expand_and_reduce(rng, name, weight_sharing):
    equation, output_shape, bias_axes, shape = PROJECTIONS[name]
    layer = layers.EinsumDense(
        equation,
        output_shape=output_shape,
        bias_axes=bias_axes,
        weight_sharing=weight_sharing,
    )
    x = rng.normal(size=shape).astype("float32")
    layer.build(shape)
    u = rng.normal(size=layer(x).shape).astype("float32")
    A, G, _ = recorded_factors(layer, x, u)
    n = shape[0]
    d_in, d_out = layer.kfac_dimensions()
    # Rows of a: the summed axes last (they are, in these equations); rows
    # of g = n u: the kernel's output axes last, in kernel order.
    a = x.reshape(n, -1, d_in - 1)
    g = n * u
    if name == "permuted":
        g = np.swapaxes(g, -1, -2)  # output (a, b, d, e), kernel order e, d
    g = g.reshape(n, -1, d_out)
    if weight_sharing == "reduce":
        a, g = a.mean(axis=1, keepdims=True), g.sum(axis=1, keepdims=True)
    a = np.concatenate([a, np.ones(a.shape[:-1] + (1,))], axis=-1)
    a, g = a.reshape(-1, d_in), g.reshape(-1, d_out)
    np.testing.assert_allclose(A, a.T @ a / len(a), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(G, g.T @ g / n, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", sorted(PROJECTIONS))
def test_one_example_at_one_position_gives_the_exact_fisher(rng, name):
    """With one example and one position, `A ⊗ G` is the exact (empirical)
    Fisher block of the kernel and bias flattened as the block flattens
    them, and `split` undoes that flattening."""
    equation, output_shape, bias_axes, shape = PROJECTIONS[name]
    shape = (1, 1) + shape[2:]
    layer = layers.EinsumDense(
        equation, output_shape=output_shape, bias_axes=bias_axes
    )
    layer.build(shape)
    x = rng.normal(size=shape).astype("float32")
    y = rng.normal(size=layer(x).shape).astype("float32")
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(layer(x, training=True) - y))
    dK, db = tape.gradient(loss, [layer.kernel, layer.bias])
    block = blocks.PermutedKroneckerBlock(layer, 0, 1)
    V = block.gradient_matrix(dK, db).numpy()
    kron = np.kron(layer.statistics.A.numpy(), layer.statistics.G.numpy())
    np.testing.assert_allclose(
        kron, np.outer(V.ravel(), V.ravel()), rtol=1e-5, atol=1e-7
    )
    kernel, bias = block.split(tf.constant(V))
    np.testing.assert_array_equal(kernel, dK)
    np.testing.assert_array_equal(bias, db)


def test_a_matrix_equation_is_a_dense_layer(rng):
    x = rng.normal(size=(7, 5, 4)).astype("float32")
    u = rng.normal(size=(7, 5, 3)).astype("float32")
    einsum = layers.EinsumDense(
        "abc,cd->abd", output_shape=(None, 3), bias_axes="d"
    )
    dense = layers.Dense(3)
    einsum.build(x.shape)
    dense.build(x.shape)
    dense.set_weights(einsum.get_weights())
    A_einsum, G_einsum, s_einsum = recorded_factors(einsum, x, u)
    A_dense, G_dense, s_dense = recorded_factors(dense, x, u)
    np.testing.assert_allclose(s_einsum, s_dense, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(A_einsum, A_dense, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(G_einsum, G_dense, rtol=1e-6, atol=1e-5)


def test_a_bias_on_some_output_axes_trains_first_order(rng):
    layer = layers.EinsumDense(
        "abc,cde->abde", output_shape=(2, 3, 4), bias_axes="e"
    )
    layer.build((None, 2, 5))
    assert layer.kfac_bias is None
    assert layer.kfac_dimensions() == (5, 12)


@pytest.mark.parametrize(
    "equation, shape, match",
    [
        ("abc,bcd->abd", (None, 4, 5), "summed with the input"),
        ("abc,cd->ad", (None, 4, 5), "kept in the output"),
        ("ab,ac->bc", (None, 4), "batch"),
        ("ab->b", (None, 4), "inputs,kernel->output"),
    ],
)
def test_equations_without_a_block_are_refused_with_the_equation(
    equation, shape, match
):
    layer = layers.EinsumDense(equation, output_shape=3)
    with pytest.raises(ValueError, match=match) as error:
        layer.build(shape)
    assert repr(equation) in str(error.value)


def test_bad_weight_sharing_is_refused():
    with pytest.raises(ValueError, match="weight_sharing=.*'pool'"):
        layers.EinsumDense("ab,bc->ac", output_shape=3, weight_sharing="pool")
    with pytest.raises(ValueError, match="weight_sharing=.*'pool'"):
        layers.MultiHeadAttention(2, 4, weight_sharing="pool")


def attention_model(attention):
    inputs = keras.Input((6, 8))
    outputs = attention(inputs, inputs)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling1D()(outputs))


def test_multi_head_attention_is_keras_with_tapped_projections(rng):
    x = rng.normal(size=(3, 6, 8)).astype("float32")
    keras.utils.set_random_seed(5)
    ours = attention_model(
        layers.MultiHeadAttention(2, 4, weight_sharing="reduce")
    )
    keras.utils.set_random_seed(5)
    theirs = attention_model(keras.layers.MultiHeadAttention(2, 4))
    for w_ours, w_theirs in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_array_equal(w_ours, w_theirs)
    np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-6, atol=1e-6)
    attention = ours.layers[1]
    projections = [
        attention._query_dense,
        attention._key_dense,
        attention._value_dense,
        attention._output_dense,
    ]
    assert all(isinstance(p, layers.EinsumDense) for p in projections)
    assert {p.weight_sharing for p in projections} == {"reduce"}
    restored = layers.MultiHeadAttention.from_config(attention.get_config())
    assert restored.weight_sharing == "reduce"


def test_kfac_preconditions_every_projection_and_convert_reaches_them(rng):
    x = rng.normal(size=(16, 6, 8)).astype("float32")
    y = rng.normal(size=(16, 8)).astype("float32")
    model = keras_kfac.convert(
        attention_model(keras.layers.MultiHeadAttention(2, 4))
    )
    model.compile(optimizer=keras_kfac.KFAC(), loss="mse")
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, batch_size=8, epochs=5, verbose=0)
    updates = [update for _, _, update in model.optimizer.summary_rows()]
    assert len(updates) == 8
    assert all(update.startswith("K-FAC EinsumDense") for update in updates)
    assert model.evaluate(x, y, verbose=0) < before
