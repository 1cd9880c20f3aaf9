"""`KFACLayer`, the mixin that taps a layer's Kronecker factors.

The layer records its batch `A` from its input in the forward pass and its
batch `G` from the gradient reaching its pre-activation `s`, through an
identity on `s` with a custom gradient, and `‖∇W‖²` through an identity on
its kernel (`keras_kfac.curvature` has the formulas,
`keras_kfac.statistics` decides when they are recorded).

A layer called several times in one forward pass (its weights shared
between inputs, as in a siamese pair or `keras.layers.TimeDistributed`)
records all its calls, each call's positions taken as more positions of
the same examples (K-FAC-expand over the calls): `A` is the mean of the
calls' `A`, `G` the sum of their `G`, and `‖∇W‖²` the squared norm of the
summed kernel gradient.
"""

import weakref

import tensorflow as tf

from keras_kfac import blocks, curvature, statistics


class _CrossReplica:
    """The key of the calls made in a strategy's cross-replica context."""


_CROSS_REPLICA = _CrossReplica()


class CallsInBackwardPass:
    """Numbers the calls of one layer in the order a backward pass reaches
    them.

    A call belongs to the forward pass it was made in: the calls made
    before a gradient reached any of them. A backward pass is a run of
    gradients reaching distinct calls of one forward pass; reaching a call
    again (the loss pass after the Fisher pass) or a call of a newer
    forward pass starts the next. `reach` returns `j`, 1 for the first
    call a pass reaches; `carried` holds what a pass passes from one call
    to the next. In a traced function this runs while the step is traced,
    and TensorFlow then runs the calls' updates of one variable in that
    order.
    """

    def __init__(self):
        self._forward = 0
        self._forward_reached = False
        self._pass_forward = None
        self._pass_calls = set()
        self.carried = None

    def call(self) -> tuple:
        """A new call's identity, `(forward pass, token)`."""
        if self._forward_reached:
            self._forward += 1
            self._forward_reached = False
        return self._forward, object()

    def reach(self, call: tuple) -> int:
        """`j` of `call` in the backward pass now running."""
        forward, token = call
        if forward == self._forward:
            self._forward_reached = True
        if forward != self._pass_forward or token in self._pass_calls:
            self._pass_forward, self._pass_calls = forward, set()
            self.carried = None
        self._pass_calls.add(token)
        return len(self._pass_calls)


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

    def _calls_reached(self, name: str) -> CallsInBackwardPass:
        """The layer's `CallsInBackwardPass` named `name` for the replica
        now running, made on first use. Each replica of a
        `tf.distribute` strategy has its own: the replicas' calls are not
        calls of one forward pass, and their steps are traced interleaved
        (at every cross-replica update)."""
        by_replica = self.__dict__.setdefault(name, weakref.WeakKeyDictionary())
        replica = tf.distribute.get_replica_context() or _CROSS_REPLICA
        if replica not in by_replica:
            by_replica[replica] = CallsInBackwardPass()
        return by_replica[replica]

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
        order = self._calls_reached("_kernel_watches_reached")
        call = order.call()

        @tf.custom_gradient
        def identity(k):
            def grad(dk):
                if statistics.records_kernel_gradient(self):
                    # An embedding's gradient is sparse, with repeated rows.
                    dense = tf.cast(tf.convert_to_tensor(dk), tf.float32)
                    if order.reach(call) > 1:  # the calls' gradients add
                        dense = order.carried + dense
                    order.carried = dense
                    recorded.kernel_grad_sq.assign(
                        tf.reduce_sum(tf.square(dense))
                    )
                return dk

            return tf.identity(k), grad

        return identity(tf.convert_to_tensor(kernel))

    def _tap(self, x: tf.Tensor, s: tf.Tensor) -> tf.Tensor:
        """Identity on `s` whose gradient records the batch `A` and `G`."""
        if not statistics.inserts_taps():
            return s
        recorded = self.statistics
        order = self._calls_reached("_taps_reached")
        call = order.call()

        @tf.custom_gradient
        def identity(pre_activation):
            def grad(ds):
                def record():
                    context = tf.distribute.get_replica_context()
                    replicas = context.num_replicas_in_sync if context else 1
                    A = self._input_factor(x)
                    G = self._output_factor(x, ds, replicas)
                    if j == 1:
                        recorded.A.assign(A)
                        recorded.G.assign(G)
                    else:  # the j-th call of the pass: A's mean, G's sum
                        before = tf.convert_to_tensor(recorded.A)
                        recorded.A.assign(before + (A - before) / j)
                        recorded.G.assign_add(G)
                    recorded.fresh.assign(1.0)
                    return tf.constant(True)

                if statistics.is_collecting_statistics(self):
                    j = order.reach(call)
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
