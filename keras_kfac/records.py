"""What each update of `keras_kfac.KFAC` leaves behind: the coefficients it
applied and the counters of applied, skipped and failed work.

`StepCoefficients` is how one update combines the previous velocity and
the direction, `v ← μ v + c Δ`; `UpdateRecords` keeps the applied update's
coefficients and the counters in the optimizer's variables and reads them
back.
"""

from typing import NamedTuple

import tensorflow as tf


class StepCoefficients(NamedTuple):
    """How one update combines the previous velocity and the direction:
    `v ← momentum · v + direction_scale · Δ`.

    Attributes:
        step_size: `η` (KL-clipped) or `α` (adaptive).
        momentum: `μ`.
        direction_scale: `(1 - μ) η` (KL-clipped) or `α` (adaptive).
        clip: `η / η_max` (KL-clipped) or the factor the trust region
            scaled the update by (adaptive).
        predicted_change: `M₀` of the update (adaptive only).
    """

    step_size: tf.Tensor
    momentum: tf.Tensor
    direction_scale: tf.Tensor
    clip: tf.Tensor
    predicted_change: tf.Tensor | None = None


class UpdateRecords:
    """The counters (`update_count`, `skipped_steps`, `failed_refreshes`)
    and the coefficients of the latest applied update (`step_size`,
    `momentum_coefficient`, `current_damping`) of `KFAC`.

    Reads the optimizer's `_update_count`, `_skipped_steps`,
    `_clip_coefficient`, `_step_size`, `_momentum_coefficient` and
    `_current_damping` variables and its `_warn` (the failed refreshes).
    """

    @property
    def skipped_steps(self):
        """Updates skipped because something was not finite."""
        return self._skipped_steps

    @property
    def failed_refreshes(self) -> int:
        """Block refreshes (eigendecompositions or inverses) whose result
        was not finite, so the block kept its previous ones, since this
        optimizer was built in this process (not counted under
        `jit_compile=True`)."""
        return self._warn.failed_refreshes

    @property
    def update_count(self):
        """Updates applied (the iteration counter of the K-FAC schedule)."""
        return self._update_count

    @property
    def step_size(self):
        """`η` of the last applied update (`α` with `adaptive`)."""
        return self._step_size

    @property
    def momentum_coefficient(self):
        """`μ` of the last applied update (chosen each update with
        `adaptive`; the `momentum` argument otherwise)."""
        return self._momentum_coefficient

    @property
    def current_damping(self):
        """`λ` now: `damping`, or where `adaptive` has taken it."""
        return self._current_damping

    def _record(self, ok, coefficients: StepCoefficients) -> None:
        """Counts the update as applied or skipped and keeps, for an
        applied one, its coefficients."""
        self.assign_add(self._update_count, tf.cast(ok, tf.int64))
        self.assign_add(self._skipped_steps, 1 - tf.cast(ok, tf.int64))
        for state, value in (
            (self._clip_coefficient, coefficients.clip),
            (self._step_size, coefficients.step_size),
            (self._momentum_coefficient, coefficients.momentum),
        ):
            self.assign(state, tf.where(ok, value, tf.convert_to_tensor(state)))
