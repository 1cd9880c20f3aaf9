"""Kronecker factors of one layer: batch estimates of `A` and `G`.

For a layer with kernel `W` and bias `b`, `a` is the layer input with a
homogeneous 1 appended (the bias folded in), `s` the pre-activation and
`g = n · ∂L/∂s` the per-example gradient of a mean-reduced loss over a batch
of `n` examples. The Fisher block of `[W; b]` is approximated by `A ⊗ G` with
`A = E[a aᵀ]` and `G = E[g gᵀ]` (Martens & Grosse 2015, eq. 1).

Convolutions (Grosse & Martens 2016, "A Kronecker-factored approximate Fisher
matrix for convolution layers"): `a` ranges over the `T` image patches a
filter sees and `g` over the `T` output positions. Under spatial homogeneity
and spatially uncorrelated derivatives, `F ≈ T · Ω ⊗ Γ` where `Ω` and `Γ`
average over positions. Here `A = Ω` and `G = T · Γ`, which for `T = 1` (a
Dense layer on a batch of vectors) reduces to the formulas above.

Weight sharing (Eschenhagen et al. 2023, "Kronecker-factored approximate
curvature for modern neural network architectures"): a layer that applies
its weights at `R` positions of each example (a Dense or EinsumDense on
sequences, attention's projections) has two K-FAC approximations. Expand
treats every (example, position) pair as a row, as for convolutions:
`A = E_{n,r}[a aᵀ]`, `G = (1/n) Σ_{n,r} g gᵀ`. Reduce first reduces the
positions of each example, `â = (1/R) Σ_r a`, `ĝ = Σ_r g`, then
`A = E_n[â âᵀ]`, `G = E_n[ĝ ĝᵀ]`: exact where the loss sees the positions
only through a sum (a pooled classifier), and `R` times cheaper.
A convolution takes either too, its patches being its positions.

Embeddings: `a` is the one-hot row `e_t` of each token, so `A = diag(a)`
with `a` the token frequencies over the (example, position) rows, and `g`
ranges over the positions as for a Dense layer on sequences.

Convolution variants (`keras_kfac.layers.convolution_variants`): a
transposed convolution is a convolution of its zero-upsampled input, so
`a_u` is the patch of the upsampled input at output position `u` and
`g_u` the output gradient there, as for Conv2D (BackPACK's KFAC for
`ConvTranspose` does the same); the bias is the homogeneous coordinate.
A depthwise convolution applies channel `c`'s own kernel to channel `c`'s
patches, so it gets one block `A_c ⊗ G_c` per input channel, `a_c` the
channel's patch and `g_c` its `M = depth_multiplier` outputs. The patches
of either are the layer's own operation applied to a kernel of unit
vectors (`transposed_unit_kernel`, `depthwise_unit_kernel`), which gives
them in exactly the layer's geometry.

These functions are pure; the layers in `keras_kfac.layers` call them from
their forward and backward passes and store the results; the running
averages and the algebra on them live in `keras_kfac.blocks`.
"""

import math

import tensorflow as tf


def _append_homogeneous(a: tf.Tensor) -> tf.Tensor:
    return tf.pad(a, [[0, 0], [0, 1]], constant_values=1.0)


def _width(t: tf.Tensor):
    """The size of `t`'s last axis: a Python int where the shape is
    static (fewer ops in the traced step), else a tensor."""
    return t.shape[-1] if t.shape[-1] is not None else tf.shape(t)[-1]


def input_factor(a: tf.Tensor, use_bias: bool) -> tf.Tensor:
    """`A = E[a aᵀ]` over the rows of `a`, shape `(rows, d_in)`.

    Each row is one (example, position) pair; with `use_bias` the homogeneous
    coordinate is appended, making `A` of shape `(d_in + 1, d_in + 1)`.
    """
    a = tf.cast(a, tf.float32)
    if use_bias:
        a = _append_homogeneous(a)
    rows = tf.cast(tf.shape(a)[0], tf.float32)
    return tf.matmul(a, a, transpose_a=True) / rows


def token_frequencies(ids: tf.Tensor, vocabulary: int) -> tf.Tensor:
    """The diagonal `a` of an embedding's `A = E[e_t e_tᵀ]`: how often each
    of the `vocabulary` tokens occurs among the rows (every position of
    every example), divided by the number of rows; shape `(vocabulary,)`."""
    ids = tf.reshape(tf.cast(ids, tf.int32), (-1,))
    counts = tf.math.bincount(
        ids, minlength=vocabulary, maxlength=vocabulary, dtype=tf.float32
    )
    return counts / tf.cast(tf.size(ids), tf.float32)


def dense_inputs(x: tf.Tensor) -> tf.Tensor:
    """Rows of `a` for a Dense layer: all leading axes become rows."""
    return tf.reshape(x, (-1, _width(x)))


def shared_rows(t: tf.Tensor, permutation, width: int) -> tf.Tensor:
    """Rows of `a` (or of `∂L/∂s`) for a weight-shared layer: one per
    (example, position), example-major.

    Args:
        t: The layer input (or the gradient at its output).
        permutation: Orders the axes of `t` as (batch, shared positions...,
            features...); `None` when they already are.
        width: The product of the feature sizes.
    """
    if permutation is not None:
        t = tf.transpose(t, permutation)
    return tf.reshape(t, (-1, width))


def reduce_positions(
    rows: tf.Tensor, batch_size: tf.Tensor, reduction: str
) -> tf.Tensor:
    """K-FAC-reduce's rows: each example's positions of `rows` (shape
    `(batch_size · R, width)`, example-major) reduced to one row,
    `reduction="mean"` for `â = (1/R) Σ_r a`, `"sum"` for `ĝ = Σ_r g`."""
    rows = tf.cast(rows, tf.float32)
    rows = tf.reshape(rows, (batch_size, -1, _width(rows)))
    if reduction == "mean":
        return tf.reduce_mean(rows, axis=1)
    return tf.reduce_sum(rows, axis=1)


def conv2d_patches(
    x: tf.Tensor,
    kernel_size: tuple[int, int],
    strides: tuple[int, int],
    dilation_rate: tuple[int, int],
    padding: str,
    data_format: str,
) -> tf.Tensor:
    """Rows of `a` for a Conv2D layer: one flattened patch per output position.

    The patch layout `(kh, kw, c_in)` matches the Keras kernel layout
    `(kh, kw, c_in, c_out)` reshaped to `(kh · kw · c_in, c_out)`.
    """
    if data_format == "channels_first":
        x = tf.transpose(x, (0, 2, 3, 1))
    patches = tf.image.extract_patches(
        tf.cast(x, tf.float32),
        sizes=(1, *kernel_size, 1),
        strides=(1, *strides, 1),
        rates=(1, *dilation_rate, 1),
        padding=padding.upper(),
    )
    return tf.reshape(patches, (-1, _width(patches)))


def conv3d_patches(
    x: tf.Tensor,
    kernel_size: tuple[int, int, int],
    strides: tuple[int, int, int],
    padding: str,
    data_format: str,
) -> tf.Tensor:
    """Rows of `a` for a Conv3D layer: one flattened patch per output
    position, laid out `(kd, kh, kw, c_in)` as the Keras kernel
    `(kd, kh, kw, c_in, c_out)`. (TensorFlow extracts volume patches
    without dilation.)"""
    if data_format == "channels_first":
        x = tf.transpose(x, (0, 2, 3, 4, 1))
    patches = tf.extract_volume_patches(
        tf.cast(x, tf.float32),
        ksizes=(1, *kernel_size, 1),
        strides=(1, *strides, 1),
        padding=padding.upper(),
    )
    return tf.reshape(patches, (-1, _width(patches)))


def conv1d_patches(
    x: tf.Tensor,
    kernel_size: int,
    stride: int,
    dilation_rate: int,
    padding: str,
    data_format: str,
) -> tf.Tensor:
    """Rows of `a` for a Conv1D layer: one flattened window per output
    position, laid out `(k, c_in)` as the Keras kernel `(k, c_in, c_out)`.

    The sequence is a one-row image for `conv2d_patches`; `"causal"`
    padding is the left padding of `dilation_rate · (k - 1)` steps that
    Keras applies before a `"valid"` convolution.
    """
    if data_format == "channels_first":
        x = tf.transpose(x, (0, 2, 1))
    if padding == "causal":
        x = tf.pad(x, ((0, 0), (dilation_rate * (kernel_size - 1), 0), (0, 0)))
        padding = "valid"
    return conv2d_patches(
        x[:, None],
        (1, kernel_size),
        (1, stride),
        (1, dilation_rate),
        padding,
        "channels_last",
    )


def output_factor(
    ds: tf.Tensor, batch_size: tf.Tensor, num_replicas: int, channels_axis: int
) -> tf.Tensor:
    """`G = (1/n) Σ_{i,t} g gᵀ` with `g = n · ∂L/∂s`, shape `(d_out, d_out)`.

    Args:
        ds: `∂L/∂s` of this replica's share of the loss.
        batch_size: Examples on this replica.
        num_replicas: Replicas in sync. Keras divides each replica's loss by
            the number of replicas, so the global batch `n` is
            `batch_size · num_replicas` and `g = n · ds`.
        channels_axis: The axis of `ds` holding the `d_out` outputs.
    """
    ds = tf.cast(ds, tf.float32)
    if channels_axis != -1 and channels_axis != len(ds.shape) - 1:
        ds = tf.experimental.numpy.moveaxis(ds, channels_axis, -1)
    ds = tf.reshape(ds, (-1, _width(ds)))
    n_local = tf.cast(batch_size, tf.float32)
    n_global = n_local * num_replicas
    # (1/n_local) Σ (n_global ds)(n_global ds)ᵀ; averaging that over the
    # replicas gives (1/n_global) Σ_all g gᵀ.
    return tf.matmul(ds, ds, transpose_a=True) * (n_global * n_global / n_local)


def scale_shift_factor(
    x_hat: tf.Tensor,
    ds: tf.Tensor,
    parameter_axes: list[int],
    scale: bool,
    shift: bool,
    num_replicas: int,
) -> tf.Tensor:
    """`f = E[g ⊙ g]`, the diagonal Fisher of a normalization layer's
    `[γ, β]` from per-example gradients `g = n · [Σ x̂ ⊙ ds, Σ ds]`.

    Args:
        x_hat: The normalized input `x̂`.
        ds: `∂L/∂s` at the output `s = x̂ γ + β`, this replica's share.
        parameter_axes: The axes of `x̂` that `γ` and `β` span; every
            other axis but the batch shares them and is summed in each
            example's gradient. `γ` is laid out over them row-major in
            increasing axis order, as Keras reshapes it onto the input.
        scale, shift: Whether `γ`, `β` are in the block (in that order).
        num_replicas: Replicas in sync (as in `output_factor`).
    """
    ds = tf.cast(ds, tf.float32)
    x_hat = tf.cast(x_hat, tf.float32)
    rank = len(ds.shape)
    shared = [a for a in range(1, rank) if a not in parameter_axes]
    n_local = tf.shape(ds)[0]
    parts = []
    if scale:
        parts.append(tf.reduce_sum(x_hat * ds, axis=shared))
    if shift:
        parts.append(tf.reduce_sum(ds, axis=shared))
    g = tf.concat(
        [tf.reshape(p, (n_local, -1)) for p in parts],
        axis=1,
    )
    n_local = tf.cast(n_local, tf.float32)
    n_global = n_local * num_replicas
    return tf.reduce_sum(tf.square(g), axis=0) * (n_global * n_global / n_local)


def channel_rows(t: tf.Tensor, channels_first: bool) -> tf.Tensor:
    """`t` with its channels axis (1 if `channels_first`, else the last)
    as the columns and every other axis flattened into rows."""
    if channels_first:
        t = tf.experimental.numpy.moveaxis(t, 1, -1)
    return tf.reshape(t, (-1, _width(t)))


def transposed_unit_kernel(kernel_size, c_in: int) -> tf.Tensor:
    """The unit kernel `E` of a transposed convolution, shape
    `(*kernel_size, P, c_in)` with `P = prod(kernel_size) · c_in`:
    `E[κ, p, c] = 1` where `p` is `(κ, c)` flattened row-major, so output
    channel `p` of the transposed convolution of `x` with `E` is the entry
    `(κ, c)` of the patch `a_u` for which `s_u = Σ_{κ,c} a_u[κ, c] W[κ, :, c]`.
    """
    P = math.prod(kernel_size) * c_in
    eye = tf.reshape(tf.eye(P), (*kernel_size, c_in, P))
    rank = len(kernel_size)
    return tf.transpose(eye, (*range(rank), rank + 1, rank))


def depthwise_unit_kernel(kernel_size, channels: int) -> tf.Tensor:
    """The unit kernel `E` of a depthwise convolution, shape
    `(*kernel_size, channels, K)` with `K = prod(kernel_size)`:
    `E[κ, c, m] = 1` where `m` is `κ` flattened, for every channel, so
    output channel `c · K + m` of the depthwise convolution of `x` with
    `E` is entry `m` of channel `c`'s patch."""
    K = math.prod(kernel_size)
    eye = tf.reshape(tf.eye(K), (*kernel_size, 1, K))
    return tf.tile(eye, (*[1] * len(kernel_size), channels, 1))


def channelwise_input_factor(
    a: tf.Tensor, channels: int, use_bias: bool
) -> tf.Tensor:
    """Per-channel `A_c = E[a_c a_cᵀ]` of a depthwise convolution from its
    patch rows `a`, shape `(rows, channels · K)` laid out `(c, κ)`; with
    `use_bias` each `a_c` gets the homogeneous 1. Shape
    `(channels, K (+1), K (+1))`."""
    a = tf.cast(a, tf.float32)
    rows = tf.shape(a)[0]
    a = tf.reshape(a, (rows, channels, -1))
    if use_bias:
        a = tf.concat([a, tf.ones_like(a[:, :, :1])], axis=2)
    return tf.einsum("rck,rcl->ckl", a, a) / tf.cast(rows, tf.float32)


def channelwise_output_factor(
    ds: tf.Tensor, batch_size: tf.Tensor, num_replicas: int, channels: int
) -> tf.Tensor:
    """Per-channel `G_c = (1/n) Σ_{i,t} g_c g_cᵀ` with `g = n · ∂L/∂s` and
    `g_c` the `M` outputs of input channel `c` (output channels
    `c · M … c · M + M - 1`, as TensorFlow lays out a depthwise
    convolution), shape `(channels, M, M)`, from the rows of `∂L/∂s`
    (`(rows, channels · M)`); otherwise as `output_factor`.
    """
    ds = tf.cast(ds, tf.float32)
    ds = tf.reshape(ds, (tf.shape(ds)[0], channels, -1))
    n_local = tf.cast(batch_size, tf.float32)
    n_global = n_local * num_replicas
    GG = tf.einsum("rcm,rcp->cmp", ds, ds)
    return GG * (n_global * n_global / n_local)
