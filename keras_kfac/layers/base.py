"""`KFACLayer`, the mixin that taps a layer's Kronecker factors.

The layer records its batch `A` from its input in the forward pass and its
batch `G` from the gradient reaching its pre-activation `s`, through an
identity on `s` with a custom gradient, and `‖∇W‖²` through an identity on
its kernel (`keras_kfac.curvature` has the formulas,
`keras_kfac.statistics` decides when they are recorded).
"""

import tensorflow as tf

from keras_kfac import blocks, curvature, statistics


class KFACLayer:
    """Mixin for layers with a kernel whose last axis is the output axis.

    `block_type` is the optimizer's `keras_kfac.blocks` block for the
    layer, and `kfac_kernel`, `kfac_bias` the variables it preconditions;
    `kfac_variables` lists them in the order the block takes their indices
    (a recurrent layer's block takes three).
    """

    block_type = blocks.KroneckerBlock

    @property
    def kfac_kernel(self):
        return self.kernel

    @property
    def kfac_bias(self):
        return self.bias

    @property
    def kfac_variables(self) -> tuple:
        """The block's variables, kernel first, `None` for an absent one;
        `block_type(layer, *their indices)` makes the block."""
        return (self.kfac_kernel, self.kfac_bias)

    def build(self, input_shape):
        super().build(input_shape)
        self._build_statistics()

    def kfac_dimensions(self) -> tuple[int, int]:
        """`(dim A, dim G)` of the layer's block."""
        return self.block_type.dimensions(
            tuple(self.kfac_kernel.shape), self.kfac_bias is not None
        )

    def _build_statistics(self) -> None:
        A_shape, G_shape = self.block_type.factor_shapes(
            *self.kfac_dimensions()
        )
        self.statistics = statistics.FactorStatistics(
            A_shape, G_shape, self.name
        )
        statistics.register_layer(self)

    def _input_factor(self, x: tf.Tensor) -> tf.Tensor:
        """The batch `A` from the layer input `x`."""
        raise NotImplementedError

    def _output_factor(self, x, ds, replicas: int) -> tf.Tensor:
        """The batch `G` from the gradient `ds` at the output."""
        return curvature.output_factor(
            ds, tf.shape(x)[0], replicas, self._channels_axis()
        )

    def _channels_axis(self) -> int:
        return -1

    def _kernel_for(self, kernel, training) -> tf.Tensor:
        """`kernel`, watched by `_watch_kernel` when training."""
        return self._watch_kernel(kernel) if training else kernel

    def _watch_kernel(self, kernel: tf.Tensor) -> tf.Tensor:
        """Identity on the kernel that records `‖∇W‖²` of every backward
        pass an optimizer may read (the loss pass too, whose gradient it
        receives)."""
        if not statistics.inserts_taps():
            return kernel
        recorded = self.statistics

        @tf.custom_gradient
        def identity(k):
            def grad(dk):
                if statistics.records_kernel_gradient(self):
                    # An embedding's gradient is sparse, with repeated rows.
                    dense = tf.convert_to_tensor(dk)
                    recorded.kernel_grad_sq.assign(
                        tf.reduce_sum(tf.square(tf.cast(dense, tf.float32)))
                    )
                return dk

            return tf.identity(k), grad

        return identity(tf.convert_to_tensor(kernel))

    def _tap(self, x: tf.Tensor, s: tf.Tensor) -> tf.Tensor:
        """Identity on `s` whose gradient records the batch `A` and `G`."""
        if not statistics.inserts_taps():
            return s
        recorded = self.statistics

        @tf.custom_gradient
        def identity(pre_activation):
            def grad(ds):
                def record():
                    context = tf.distribute.get_replica_context()
                    replicas = context.num_replicas_in_sync if context else 1
                    recorded.A.assign(self._input_factor(x))
                    recorded.G.assign(self._output_factor(x, ds, replicas))
                    recorded.fresh.assign(1.0)
                    return tf.constant(True)

                if statistics.is_collecting_statistics(self):
                    due = statistics.statistics_due(self)
                    if due is None:
                        record()
                    else:  # the readers' schedule: only on some steps
                        tf.cond(due, record, lambda: tf.constant(False))
                return ds

            return tf.identity(pre_activation), grad

        return identity(s)

    def _finish(self, x, s, training) -> tf.Tensor:
        if training:
            s = self._tap(x, s)
        if self.activation is not None:
            return self.activation(s)
        return s
