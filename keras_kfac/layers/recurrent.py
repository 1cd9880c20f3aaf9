"""`LSTM` and `SimpleRNN` that tap their factors (Martens, Ba & Johnson
2018, "Kronecker-factored curvature approximations for recurrent neural
networks", in its simplest form: independence across time steps).

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

How they are tapped: the input side `x_t W + b` is computed for all steps
before the loop, and the identity with a custom gradient on it receives
`∂L/∂z_t` for every step at once (the loop only adds `h_{t-1} U` to it).
The loop also emits `h_{t-1}` beside each output, so `A` is computed from
the whole sequence after it. This works for the rolled loop
(`unroll=False`) and the unrolled one, `go_backwards`, masks, dropout on
the inputs, and stateful layers. Recurrent dropout is not supported (it
multiplies `h_{t-1}` by a mask that the Keras LSTM itself ignores).
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
    """What `LSTM` and `SimpleRNN` share: the block over the cell's
    kernel, recurrent kernel and bias, and a loop that taps it."""

    block_type = RecurrentKroneckerBlock
    gates = 1

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

    @property
    def kfac_variables(self):
        return (self.cell.kernel, self.cell.recurrent_kernel, self.cell.bias)

    def kfac_dimensions(self):
        input_dim = int(self.cell.kernel.shape[0])
        return (
            input_dim + self.units + bool(self.use_bias),
            self.gates * self.units,
        )

    def build(self, sequences_shape, initial_state_shape=None):
        keras.layers.RNN.build(self, sequences_shape, initial_state_shape)
        self._build_statistics()

    def _recurrence(self, z, states):
        """`(output, new_states)` of one step from its pre-activation."""
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
            z_x = z_x + self.cell.bias
        rows = {"x": x, "mask": mask}
        z_x = self._tap(rows, z_x)
        recurrent_kernel = self.cell.recurrent_kernel

        def step(z_x_t, states):
            h_previous = states[0]
            z = z_x_t + ops.matmul(h_previous, recurrent_kernel)
            output, new_states = self._recurrence(z, states)
            emitted = ops.concatenate(
                [output, ops.stop_gradient(h_previous)], axis=-1
            )
            return emitted, new_states

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
        h_previous = outputs[..., self.units :]
        # The loop's outputs are in the order it ran the steps.
        rows["h"] = h_previous[:, ::-1] if self.go_backwards else h_previous
        return last[..., : self.units], outputs[..., : self.units], states

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
class LSTM(_Recurrent, keras.layers.LSTM):
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
class SimpleRNN(_Recurrent, keras.layers.SimpleRNN):
    """`keras.layers.SimpleRNN` that records its K-FAC factors when
    training.

    Same arguments and weights as `keras.layers.SimpleRNN`; one block over
    `[kernel; recurrent_kernel; bias]` (`keras_kfac.layers.recurrent`).
    Recurrent dropout is not supported.
    """

    def _recurrence(self, z, states):
        output = z if self.activation is None else self.activation(z)
        return output, [output]
