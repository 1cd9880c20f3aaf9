"""`LSTM`, `GRU` and `SimpleRNN` that tap their factors (Martens, Ba &
Johnson 2018, "Kronecker-factored curvature approximations for recurrent
neural networks", in its simplest form: independence across time steps).

At step `t` the gates' pre-activation is `z_t = x_t W + h_{t-1} U + b`
(an LSTM's four gates side by side, a SimpleRNN's one): a single linear
map of `a_t = [x_t; h_{t-1}; 1]` by `[W; U; b]`, applied at every step of
the sequence. So the layer has one block `A ⊗ G` over its three variables,
`V = [∇W; ∇U; ∇b]`, and the sharing over the `T` steps is approximated as
for the other weight-shared layers by expand (`keras_kfac.curvature`,
Eschenhagen et al. 2023): `A = E_{n,t}[a_t a_tᵀ]` over the unmasked
(example, step) rows, `G = (1/n) Σ_{n,t} g_t g_tᵀ` with `g_t = n · ∂L/∂z_t`
(a masked step has `∂L/∂z_t = 0`). For `T = 1` it is the Dense block of
`a = [x; h_0; 1]`, exact for one example.

A GRU (`reset_after=True`, Keras' default) has two linear maps per step,
`x_t W + b_in = [x_z, x_r, x_h]` and `h_{t-1} U + b_rec = [r_z, r_r,
r_h]`, with `z = σ(x_z + r_z)`, `r = σ(x_r + r_r)`, `h̃ = tanh(x_h + r ⊙
r_h)`, `h_t = z ⊙ h_{t-1} + (1 - z) ⊙ h̃`: the reset gate multiplies the
second after the product, so their output gradients differ and each has
its own block, the input block `[W; b_in]` over `[x_t; 1]` and the
recurrent block `[U; b_rec]` over `[h_{t-1}; 1]` (the layer's
`recurrent_stage`). The recurrent block's `g^rec_t = ∂L/∂(h_{t-1} U +
b_rec)` is exactly `g^in_t = ∂L/∂(x_t W + b_in)` on the `z` and `r` thirds
and `r_t ⊙ g^in_t` on the candidate's, so both come from the tap on the
input side and the loop's `r_t`. Keras keeps `b_in` and `b_rec` as the
rows of one `(2, 3u)` bias variable, which the two blocks share
(`BiasRowKroneckerBlock`; the estimator adds their steps of it).
`reset_after=False` (the reset gate applied before the product, a
different recurrent input for the candidate) is not supported.

How they are tapped: the input side `x_t W + b` is computed for all steps
before the loop, and the identity with a custom gradient on it receives
`∂L/∂z_t` for every step at once (the loop only adds the recurrent side to
it). The loop also emits `h_{t-1}` (and a GRU's `r_t`) beside each output,
so `A` is computed from the whole sequence after it. This works for the
rolled loop (`unroll=False`) and the unrolled one, `go_backwards`, masks,
dropout on the inputs, and stateful layers. Recurrent dropout is not
supported (it multiplies `h_{t-1}` by a mask that the Keras LSTM itself
ignores, and a GRU's by one per gate).
"""

import keras
import tensorflow as tf
from keras import ops
from keras.src import backend as keras_backend

from keras_kfac import blocks, curvature
from keras_kfac.layers.base import KFACLayer


class RecurrentKroneckerBlock(blocks.KroneckerBlock):
    """The block `A ⊗ G` of a recurrent layer's `[W; U; b]`.

    `V` stacks the kernel gradient `(d_in, k·u)`, the recurrent kernel's
    `(u, k·u)` and the bias' as a row: shape `(d_in + u + 1, k·u)` for `k`
    gates of `u` units.

    Args:
        layer: The `keras_kfac` recurrent layer.
        kernel_index, recurrent_index, bias_index: Positions of its
            kernel, recurrent kernel and bias (`None` without a bias) in
            the optimizer's variables.
    """

    def __init__(self, layer, kernel_index, recurrent_index, bias_index):
        super().__init__(layer, kernel_index, bias_index)
        self.recurrent_index = recurrent_index
        self.input_dim = self.kernel_shape[0]
        self.recurrent_shape = tuple(layer.cell.recurrent_kernel.shape)

    @property
    def variable_indices(self):
        return (self.kernel_index, self.recurrent_index, self.bias_index)

    def gradient_matrix(self, kernel_grad, recurrent_grad, bias_grad=None):
        """`V = [∇W; ∇U; ∇b]`, float32."""
        parts = [kernel_grad, recurrent_grad]
        if bias_grad is not None:
            parts.append(bias_grad[None, :])
        return tf.concat([tf.cast(p, tf.float32) for p in parts], axis=0)

    def split(self, X):
        """Inverse of `gradient_matrix`: `(kernel, recurrent, bias)`
        steps."""
        rows = self.input_dim + self.recurrent_shape[0]
        bias = None if self.bias_index is None else X[rows]
        return X[: self.input_dim], X[self.input_dim : rows], bias


class _Recurrent(KFACLayer):
    """What the recurrent layers share: a training loop that taps the
    input side `x_t W + b` before it and emits `h_{t-1}` (and what else
    `emitted_rows` names, `units` wide each) beside each output."""

    emitted_rows = ("h",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.recurrent_dropout:
            raise ValueError(
                f"keras_kfac.layers.{type(self).__name__} does not support "
                "recurrent dropout. Received: "
                f"recurrent_dropout={self.recurrent_dropout}"
            )

    @property
    def kfac_kernel(self):
        return self.cell.kernel

    @property
    def kfac_bias(self):
        return self.cell.bias

    def build(self, sequences_shape, initial_state_shape=None):
        keras.layers.RNN.build(self, sequences_shape, initial_state_shape)
        self._build_statistics()

    def _input_bias(self):
        return self.cell.bias

    def _tap_input_side(self, rows, z_x):
        """`z_x` through the identities that receive `∂L/∂z_x`."""
        return self._tap(rows, z_x)

    def _step_function(self):
        """`step(z_x_t, states) -> (output, new_states, emitted)`, with
        `emitted` the tensors of `emitted_rows`."""
        raise NotImplementedError

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if not training:
            return super().inner_loop(
                sequences, initial_state, mask, training=training
            )
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        x = sequences
        dropout_mask = self.cell.get_dropout_mask(sequences[:, 0, :])
        if self.dropout and dropout_mask is not None:
            x = x * dropout_mask[:, None, :]
        z_x = tf.tensordot(x, self._watch_kernel(self.cell.kernel), axes=1)
        if self.use_bias:
            z_x = z_x + self._input_bias()
        rows = {"x": x, "mask": mask}
        z_x = self._tap_input_side(rows, z_x)
        cell_step = self._step_function()

        def step(z_x_t, states):
            output, new_states, emitted = cell_step(z_x_t, states)
            emitted = [ops.stop_gradient(e) for e in emitted]
            return ops.concatenate([output, *emitted], axis=-1), new_states

        last, outputs, states = keras_backend.rnn(
            step,
            z_x,
            list(initial_state),
            go_backwards=self.go_backwards,
            mask=mask,
            unroll=self.unroll,
            input_length=sequences.shape[1],
            zero_output_for_mask=self.zero_output_for_mask,
            return_all_outputs=True,
        )
        units = self.units
        for k, name in enumerate(self.emitted_rows, 1):
            emitted = outputs[..., k * units : (k + 1) * units]
            # The loop's outputs are in the order it ran the steps.
            rows[name] = emitted[:, ::-1] if self.go_backwards else emitted
        return last[..., :units], outputs[..., :units], states


class _OneBlockRecurrent(_Recurrent):
    """`LSTM` and `SimpleRNN`: one block over the cell's kernel,
    recurrent kernel and bias, `z_t = z_x_t + h_{t-1} U`."""

    block_type = RecurrentKroneckerBlock
    gates = 1

    @property
    def kfac_variables(self):
        return (self.cell.kernel, self.cell.recurrent_kernel, self.cell.bias)

    def kfac_dimensions(self):
        input_dim = int(self.cell.kernel.shape[0])
        return (
            input_dim + self.units + bool(self.use_bias),
            self.gates * self.units,
        )

    def _recurrence(self, z, states):
        """`(output, new_states)` of one step from its pre-activation."""
        raise NotImplementedError

    def _step_function(self):
        recurrent_kernel = self.cell.recurrent_kernel

        def step(z_x_t, states):
            h_previous = states[0]
            z = z_x_t + ops.matmul(h_previous, recurrent_kernel)
            output, new_states = self._recurrence(z, states)
            return output, new_states, [h_previous]

        return step

    def _input_factor(self, rows) -> tf.Tensor:
        """`A` over the unmasked (example, step) rows `[x_t; h_{t-1}; 1]`;
        the recurrent loop has filled in `rows["h"]` by the backward
        pass."""
        a = tf.concat(
            [tf.cast(rows["x"], tf.float32), tf.cast(rows["h"], tf.float32)],
            axis=-1,
        )
        return masked_input_factor(a, rows["mask"], self.use_bias)

    def _output_factor(self, rows, ds, replicas):
        """`G` from `∂L/∂z_t` of every step, `(batch, T, k·u)`."""
        return curvature.output_factor(ds, tf.shape(ds)[0], replicas, -1)


def masked_input_factor(a, mask, use_bias: bool) -> tf.Tensor:
    """`A = Σ m a aᵀ / Σ m` over the rows of `a` (shape `(batch, T, d)`),
    `m` the mask (`(batch, T)`, all ones for `None`), with the homogeneous
    coordinate appended if `use_bias`."""
    if use_bias:
        a = tf.concat([a, tf.ones_like(a[..., :1])], axis=-1)
    a = tf.reshape(a, (-1, tf.shape(a)[-1]))
    if mask is None:
        weights = tf.ones_like(a[:, 0])
    else:
        weights = tf.reshape(tf.cast(mask, tf.float32), (-1,))
    weighted = a * weights[:, None]
    return tf.math.divide_no_nan(
        tf.matmul(weighted, a, transpose_a=True), tf.reduce_sum(weights)
    )


@keras.saving.register_keras_serializable(package="keras_kfac")
class LSTM(_OneBlockRecurrent, keras.layers.LSTM):
    """`keras.layers.LSTM` that records its K-FAC factors when training.

    Same arguments and weights as `keras.layers.LSTM`; one block over
    `[kernel; recurrent_kernel; bias]` (`keras_kfac.layers.recurrent`).
    Training runs the step loop on every device (not cuDNN's fused
    kernel, whose steps cannot be tapped); inference runs as Keras does.
    Recurrent dropout is not supported.
    """

    gates = 4

    def _recurrence(self, z, states):
        c, o = self.cell._compute_carry_and_output_fused(
            ops.split(z, 4, axis=-1), states[1]
        )
        h = o * self.cell.activation(c)
        return h, [h, c]


@keras.saving.register_keras_serializable(package="keras_kfac")
class SimpleRNN(_OneBlockRecurrent, keras.layers.SimpleRNN):
    """`keras.layers.SimpleRNN` that records its K-FAC factors when
    training.

    Same arguments and weights as `keras.layers.SimpleRNN`; one block over
    `[kernel; recurrent_kernel; bias]` (`keras_kfac.layers.recurrent`).
    Recurrent dropout is not supported.
    """

    def _recurrence(self, z, states):
        output = z if self.activation is None else self.activation(z)
        return output, [output]


class BiasRowKroneckerBlock(blocks.KroneckerBlock):
    """The block `A ⊗ G` of a kernel and one row of a bias variable that
    it shares with another block: a GRU's bias `(2, 3u)` holds the input
    block's bias in row 0 and the recurrent block's in row 1 (the layer's
    `kfac_bias_row`). `V = [∇W; ∇b[row]]`; its step of the bias is the
    whole variable, zero outside the row, and the estimator adds up the
    steps the blocks take of a shared variable."""

    def gradient_matrix(self, kernel_grad, bias_grad=None):
        if bias_grad is not None:
            bias_grad = bias_grad[self.layer.kfac_bias_row]
        return super().gradient_matrix(kernel_grad, bias_grad)

    def split(self, X):
        kernel, bias = super().split(X)
        if bias is None:
            return kernel, None
        shape = tuple(self.layer.kfac_bias.shape)
        placed = tf.tensor_scatter_nd_update(
            tf.zeros(shape, bias.dtype), [[self.layer.kfac_bias_row]], [bias]
        )
        return kernel, placed


class GRURecurrentStage(KFACLayer):
    """The recurrent half of a `keras_kfac.layers.GRU`, seen by the
    optimizer as a layer of its own: its block is the recurrent kernel's
    and the bias' row 1, `A` from `[h_{t-1}; 1]` and `G` from
    `g^rec_t = [g_z; g_r; r_t ⊙ g_h]` (`g^in_t = [g_z; g_r; g_h]` the
    gradient at the input side). Not a Keras layer: it owns no weights,
    and the GRU builds it."""

    block_type = BiasRowKroneckerBlock
    kfac_bias_row = 1

    def __init__(self, layer):
        self.layer = layer
        self.name = f"{layer.name}_recurrent"
        self.kfac_kind = f"{type(layer).__name__} recurrent"
        self.use_bias = layer.use_bias
        self._build_statistics()

    @property
    def built(self) -> bool:
        return self.layer.built

    @property
    def kfac_kernel(self):
        return self.layer.cell.recurrent_kernel

    @property
    def kfac_bias(self):
        return self.layer.cell.bias

    def _input_factor(self, rows) -> tf.Tensor:
        h = tf.cast(rows["h"], tf.float32)
        return masked_input_factor(h, rows["mask"], self.use_bias)

    def _output_factor(self, rows, ds, replicas):
        """`G` from `g^rec_t`: `∂L/∂(h_{t-1} U + b_rec)` equals `∂L/∂z_x`
        on the update and reset thirds, and is `r_t ⊙` it on the
        candidate's, where `h_{t-1} U_h + b_h` enters as `r_t ⊙ (…)`."""
        ds = tf.cast(ds, tf.float32)
        gates = 2 * self.layer.units
        r = tf.cast(rows["r"], tf.float32)
        g = tf.concat([ds[..., :gates], r * ds[..., gates:]], axis=-1)
        return curvature.output_factor(g, tf.shape(ds)[0], replicas, -1)


@keras.saving.register_keras_serializable(package="keras_kfac")
class GRU(_Recurrent, keras.layers.GRU):
    """`keras.layers.GRU` that records the K-FAC factors of its two blocks
    when training.

    Same arguments and weights as `keras.layers.GRU`. The input block is
    `[kernel; bias[0]]` over `[x_t; 1]`, the recurrent block
    (`recurrent_stage`) `[recurrent_kernel; bias[1]]` over `[h_{t-1}; 1]`
    (`keras_kfac.layers.recurrent`). Training runs the step loop on every
    device (not cuDNN's fused kernel); inference runs as Keras does.
    Recurrent dropout, `reset_after=False`, and `implementation=1` with
    dropout are not supported.
    """

    block_type = BiasRowKroneckerBlock
    kfac_bias_row = 0
    emitted_rows = ("h", "r")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.reset_after:
            raise ValueError(
                "keras_kfac.layers.GRU supports only reset_after=True (its "
                "candidate's recurrent input r ⊙ h_{t-1} differs from the "
                "gates'). Received: reset_after=False"
            )
        if self.cell.implementation == 1 and self.dropout:
            raise ValueError(
                "keras_kfac.layers.GRU needs one dropout mask for all gates "
                "(implementation=2). Received: implementation=1, "
                f"dropout={self.dropout}"
            )

    def build(self, sequences_shape, initial_state_shape=None):
        super().build(sequences_shape, initial_state_shape)
        self.recurrent_stage = GRURecurrentStage(self)

    def _input_bias(self):
        return self.cell.bias[0]

    def _tap_input_side(self, rows, z_x):
        # Both blocks' `G` come from `∂L/∂z_x`.
        return self.recurrent_stage._tap(rows, self._tap(rows, z_x))

    def _step_function(self):
        cell = self.cell
        stage = self.recurrent_stage
        recurrent_kernel = stage._watch_kernel(cell.recurrent_kernel)
        recurrent_bias = cell.bias[1] if self.use_bias else None

        def step(z_x_t, states):
            h_previous = states[0]
            inner = ops.matmul(h_previous, recurrent_kernel)
            if recurrent_bias is not None:
                inner = inner + recurrent_bias
            x_z, x_r, x_h = ops.split(z_x_t, 3, axis=-1)
            r_z, r_r, r_h = ops.split(inner, 3, axis=-1)
            z = cell.recurrent_activation(x_z + r_z)
            r = cell.recurrent_activation(x_r + r_r)
            candidate = cell.activation(x_h + r * r_h)
            h = z * h_previous + (1 - z) * candidate
            return h, [h], [h_previous, r]

        return step

    def _input_factor(self, rows) -> tf.Tensor:
        x = tf.cast(rows["x"], tf.float32)
        return masked_input_factor(x, rows["mask"], self.use_bias)

    def _output_factor(self, rows, ds, replicas):
        return curvature.output_factor(ds, tf.shape(ds)[0], replicas, -1)
