"""The curvature estimate of one optimizer: its K-FAC blocks and their state.

`KroneckerFactoredCurvature` finds the blocks among the variables an
optimizer trains (one per `keras_kfac` layer whose kernel and bias it
trains), creates each block's state through the optimizer, and does, over
all blocks, what an update needs of the curvature (Martens & Grosse 2015):

1. fold each layer's latest batch factors into the running ones,
   `A ← ε A + (1 - ε) A_batch`, `G ← ε G + (1 - ε) G_batch`,
   `ε = min(stats_decay, k / (k + 1))` after `k` earlier batches
   (`update_factors`);
2. refresh what the damping mode derives from them (`update_inverses`,
   on the optimizer's schedule `update_inverses_when_due`);
3. precondition, `Δ = F̂⁻¹ ∇` per block (`precondition`);
4. measure `vᵀ F̂ v` of a step (`quadratic_form`).
"""

import warnings

import numpy as np
import tensorflow as tf

from keras_kfac import linalg
from keras_kfac.blocks import BlockState, Eigenbases, KroneckerBlock
from keras_kfac.statistics import kfac_layers_of

# A batch's `(A, G, fresh)`: `fresh` says whether the layer recorded them
# since the last update.
BatchFactors = tuple[tf.Tensor, tf.Tensor, tf.Tensor]


def find_blocks(var_list) -> list[KroneckerBlock]:
    """One block per `keras_kfac` layer (or stage of one) whose
    `kfac_variables` (kernel, bias, ...) are all in `var_list`; warns about
    a layer with a variable outside it, and when there is no block at all.

    Blocks may share a variable, each preconditioning a part of it (a
    GRU's bias, one row per block): a block whose shared variable is also
    another's left out is left out too, so that the variable is either
    wholly preconditioned or wholly first-order."""
    index = {id(v): i for i, v in enumerate(var_list)}
    blocks, seen, left_out = [], set(), set()
    # A variable's layers in the order of their kernels, as the layers of
    # unshared variables are: the blocks' state is saved by position.
    layers = [
        layer
        for variable in var_list
        for layer in sorted(
            kfac_layers_of(variable),
            key=lambda l: index.get(id(l.kfac_kernel), len(index)),
        )
    ]
    for layer in layers:
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        variables = layer.kfac_variables
        indices = [None if v is None else index.get(id(v)) for v in variables]
        if any(v is not None and i is None for v, i in zip(variables, indices)):
            left_out.update(i for i in indices if i is not None)
            warnings.warn(
                f"Layer {layer.name!r} has a kernel or bias that is not "
                "trained by this optimizer; its variables get first-order "
                "updates.",
                stacklevel=3,
            )
            continue
        blocks.append(layer.block_type(layer, *indices))
    while shares := [b for b in blocks if left_out & set(b.variable_indices)]:
        for block in shares:
            blocks.remove(block)
            left_out.update(i for i in block.variable_indices if i is not None)
            warnings.warn(
                f"{block.layer.name!r} shares a variable with a layer whose "
                "variables get first-order updates; so do its own.",
                stacklevel=3,
            )
    if not blocks:
        warnings.warn(
            "KFAC found no keras_kfac.layers (dense, attention, "
            "convolution, embedding, recurrent or normalization) among the "
            f"{len(var_list)} variables it trains, so every update is "
            "first-order (momentum SGD). Build the model from "
            "keras_kfac.layers or call keras_kfac.convert(model).",
            stacklevel=3,
        )
    return blocks


class KroneckerFactoredCurvature:
    """The blocks of one optimizer's variables, each with its state.

    Args:
        blocks: From `find_blocks`.
        states: Each block's `BlockState` (`KroneckerBlock.create_state`).
        stats_decay: `ε`, the decay of the running factors.
        damping_mode: `"eigen"` or `"factored"` (`keras_kfac.linalg`).
        assign: The optimizer's `assign(variable, value)`.
        assign_add: The optimizer's `assign_add(variable, value)`. Every
            change of the state goes through these two.
    """

    def __init__(
        self,
        blocks: list[KroneckerBlock],
        states: list[BlockState],
        stats_decay: float,
        damping_mode: str,
        assign,
        assign_add,
    ):
        self.blocks = blocks
        self.states = states
        self.stats_decay = stats_decay
        self.damping_mode = damping_mode
        self._assign = assign
        self._assign_add = assign_add
        self.layer_ids = {id(block.layer) for block in blocks}
        self.block_of_kernel = {b.kernel_index: b for b in blocks}

    def batch_factors(self) -> list[BatchFactors]:
        """`(A, G, fresh)` of every block's latest batch, `G` as the layer
        recorded it (loss scale included)."""
        return [
            (
                tf.convert_to_tensor(block.layer.statistics.A),
                tf.convert_to_tensor(block.layer.statistics.G),
                tf.convert_to_tensor(block.layer.statistics.fresh) > 0.0,
            )
            for block in self.blocks
        ]

    def update_factors(
        self, batches: list[BatchFactors], scale_sq: tf.Tensor, ok: tf.Tensor
    ) -> None:
        """Folds every fresh batch `A`, `G / scale²` into the running
        factors if `ok`; a block whose statistics are stale keeps its
        factors. Marks every layer's statistics as read.

        One `tf.cond` for all the blocks, skipped when none is fresh (the
        steps between statistics updates): a cond per block traced two
        branch functions each into the step."""

        def fold():
            for state, (A_batch, G_batch, fresh) in zip(self.states, batches):
                decay = linalg.warm_start_decay(self.stats_decay, state.updates)
                for running, batch in (
                    (state.A, A_batch),
                    (state.G, G_batch / scale_sq),
                ):
                    old = tf.convert_to_tensor(running)
                    new = linalg.running_average(old, batch, decay)
                    self._assign(running, tf.where(fresh, new, old))
                self._assign_add(state.updates, tf.cast(fresh, tf.float32))
            return tf.constant(True)

        if batches:
            fresh = tf.reduce_any(tf.stack([f for _, _, f in batches]))
            tf.cond(tf.logical_and(fresh, ok), fold, lambda: tf.constant(False))
        for block in self.blocks:
            block.layer.statistics.fresh.assign(0.0)

    def update_inverses(self, damping) -> tf.Tensor:
        """Refreshes every block's eigenbases or inverses from its running
        factors, with `λ = damping` (a tensor or variable); a block whose
        refresh is not finite keeps its previous ones. Returns the number
        of those blocks (an int32 scalar)."""
        damping = tf.convert_to_tensor(damping)
        failed = tf.constant(0)
        for block, state in zip(self.blocks, self.states):
            new, ok = block.refresh(state, damping, self.damping_mode)
            failed += 1 - tf.cast(ok, tf.int32)
            for variable, value in zip(state.derived, new):
                if variable is not None:
                    old = tf.convert_to_tensor(variable)
                    self._assign(variable, tf.where(ok, value, old))
        return failed

    def update_inverses_when_due(
        self, warm, interval: int, inputs_finite, damping
    ) -> tf.Tensor:
        """`update_inverses` on the first warm update (`warm`, the updates
        since the cold steps, is 0) and every `interval` after it, when
        the update's inputs are finite; returns the number of blocks whose
        refresh was not finite (0 when none was due)."""
        due = tf.logical_and(
            tf.logical_and(inputs_finite, warm >= 0),
            tf.math.floormod(warm, interval) == 0,
        )
        return tf.cond(
            due, lambda: self.update_inverses(damping), lambda: tf.constant(0)
        )

    def precondition(self, grad_of: dict, damping) -> dict:
        """`{index: Δ}` for every variable of a block whose kernel is in
        `grad_of` (`{index: ∇}`), with `λ = damping` (a tensor or
        variable); another of its variables without a gradient (a bias)
        counts as zero. A variable shared by blocks gets the sum of their
        steps (each zero outside its block's part)."""
        damping = tf.convert_to_tensor(damping)
        directions = {}
        for block, state in zip(self.blocks, self.states):
            if block.kernel_index not in grad_of:
                continue
            V = block.gradient_matrix(*_block_gradients(block, grad_of))
            X = block.precondition(state, V, damping, self.damping_mode)
            for index, step in zip(block.variable_indices, block.split(X)):
                if index is not None and index in grad_of:
                    if index in directions:
                        step = directions[index] + step
                    directions[index] = step
        return directions

    def quadratic_form(self, vector_of: dict, cold: tf.Tensor) -> tf.Tensor:
        """`vᵀ F̂ v` for the vector `{index: v}` over all the variables:
        each block's `KroneckerBlock.quadratic_form` (`‖v‖²` instead while
        `cold`), and `‖v‖²` for variables outside the blocks."""
        outside = dict(vector_of)
        terms = []
        for block, state in zip(self.blocks, self.states):
            V = block.gradient_matrix(*_block_gradients(block, vector_of))
            for index in block.variable_indices:
                outside.pop(index, None)
            terms.append(
                tf.where(
                    cold,
                    tf.reduce_sum(tf.square(V)),
                    block.quadratic_form(state, V, self.damping_mode),
                )
            )
        terms += [tf.reduce_sum(tf.square(v)) for v in outside.values()]
        return tf.add_n(terms) if terms else tf.constant(0.0)

    def factor_statistics(self) -> dict[str, float]:
        """The running factors' spectra now, per block, for a log.

        `<layer>/A_mean` and `<layer>/G_mean` are the mean eigenvalues of
        `A` and `G` (trace over size; the mean over a block's channels
        where it has one factor per channel); in the `"eigen"` mode
        `<layer>/A_max`, `A_min`, `G_max` and `G_min` are the extreme
        eigenvalues of the latest refresh, which set how far `λ` damps
        the block (`D = λ_A λ_Gᵀ + λ`). A second block of the same layer
        (a stage) gets `#2` after the name. Eager reads: called between
        updates, it changes nothing.
        """
        statistics, seen = {}, {}
        for block, state in zip(self.blocks, self.states):
            name = block.layer.name
            seen[name] = seen.get(name, 0) + 1
            if seen[name] > 1:
                name = f"{name}#{seen[name]}"
            for key, factor in (("A", state.A), ("G", state.G)):
                statistics[f"{name}/{key}_mean"] = _mean_eigenvalue(factor)
            if isinstance(state.derived, Eigenbases):
                for key, eigenvalues in (
                    ("A", state.derived.eigenvalues_A),
                    ("G", state.derived.eigenvalues_G),
                ):
                    values = np.asarray(eigenvalues)
                    statistics[f"{name}/{key}_max"] = float(values.max())
                    statistics[f"{name}/{key}_min"] = float(values.min())
        return statistics

    def backward_scale_sq(
        self, grads, indices, loss_scale_factor: float | None
    ) -> tf.Tensor:
        """The square of the loss scale of the backward pass, measured.

        The layers recorded `‖∇W‖²` of the pass as it was scaled (a dynamic
        or fixed loss scale); the gradients `grads` of the variables at
        `indices` arrive unscaled, but for Keras' fixed
        `loss_scale_factor`. The ratio, taken before any clipping, is the
        factor by which `G` is too large.
        """
        recorded, received = [], []
        for g, index in zip(grads, indices):
            block = self.block_of_kernel.get(index)
            if g is None or block is None:
                continue
            recorded.append(
                tf.convert_to_tensor(block.layer.statistics.kernel_grad_sq)
            )
            g = tf.cast(g, tf.float32)
            if loss_scale_factor is not None:
                g = g / loss_scale_factor
            received.append(tf.reduce_sum(tf.square(g)))
        if not recorded:
            return tf.constant(1.0)
        received = tf.add_n(received)
        context = tf.distribute.get_replica_context()
        if context is not None:
            # The recorded values are replica means; match them.
            received = context.all_reduce(tf.distribute.ReduceOp.MEAN, received)
        recorded = tf.add_n(recorded)
        return tf.where(
            tf.logical_and(received > 0.0, recorded > 0.0),
            tf.math.divide_no_nan(recorded, received),
            tf.ones_like(received),
        )


def _block_gradients(block: KroneckerBlock, grad_of: dict) -> list:
    """The gradients of `block`'s variables from `{index: ∇}`, in its
    `variable_indices` order: `None` for an absent variable, zeros for a
    present one without a gradient."""
    grads = []
    for index, variable in zip(
        block.variable_indices, block.layer.kfac_variables
    ):
        grad = None if index is None else grad_of.get(index)
        if index is not None and grad is None:
            grad = tf.zeros(tuple(variable.shape), tf.float32)
        grads.append(grad)
    return grads


def _mean_eigenvalue(factor) -> float:
    """`tr(M) / dim M` of a factor held as a matrix, a stack of matrices
    (averaged) or the vector of its diagonal."""
    values = np.asarray(factor, dtype=np.float64)
    if values.ndim == 1:
        return float(values.mean())
    return float(np.trace(values, axis1=-2, axis2=-1).mean() / values.shape[-1])
