"""`KFACLogs`: K-FAC's own numbers in `fit`'s logs, hence in `History` and
the `TensorBoard` callback."""

import keras
import numpy as np

from keras_kfac.fisher import kfac_optimizer_of


class KFACLogs(keras.callbacks.Callback):
    """Adds the state of the model's `keras_kfac.KFAC` to the logs of every
    batch and epoch:

    - `kfac_step_size`: `η` of the latest update, `clip_coefficient · η_max`
      (`η_max` the learning rate); with `adaptive=True`, `α`;
    - `kfac_clip_coefficient`: `η / η_max` (1 when the KL clip did not bind;
      always 1 with `adaptive=True`);
    - `kfac_momentum`: `μ` of the latest update;
    - `kfac_damping`: `λ` now (adapted with `adaptive=True`);
    - `kfac_reduction_ratio`, `kfac_rejected_steps`: with `adaptive=True`,
      `ρ` of the latest update (with a finite one) and the updates undone
      so far;
    - `kfac_skipped_steps`: updates skipped so far because a gradient,
      statistic or update was not finite;
    - `kfac_failed_refreshes`: block refreshes so far whose result was not
      finite (the block kept its previous eigenbases or inverses).

    Put it before `keras.callbacks.TensorBoard` in `callbacks=[...]`: Keras
    calls callbacks in order, so TensorBoard then writes these too.

    Raises:
        ValueError: At the start of training, when the model's optimizer
            is not a `keras_kfac.KFAC` (or the `LossScaleOptimizer` Keras
            wraps one in under `mixed_float16`).
    """

    def on_train_begin(self, logs=None):
        optimizer = getattr(self.model, "optimizer", None)
        if kfac_optimizer_of(optimizer) is None:
            raise ValueError(
                "KFACLogs reports a keras_kfac.KFAC; the model was compiled "
                f"with {type(optimizer).__name__}."
            )

    def _add(self, logs) -> None:
        if logs is None:
            return
        optimizer = kfac_optimizer_of(self.model.optimizer)
        if not optimizer.built:
            return

        def value(variable):
            return float(np.asarray(variable))

        logs["kfac_step_size"] = value(optimizer.step_size)
        logs["kfac_clip_coefficient"] = value(optimizer.clip_coefficient)
        logs["kfac_momentum"] = value(optimizer.momentum_coefficient)
        logs["kfac_damping"] = value(optimizer.current_damping)
        if optimizer.adaptive:
            logs["kfac_reduction_ratio"] = value(optimizer.reduction_ratio)
            logs["kfac_rejected_steps"] = value(optimizer.rejected_steps)
        logs["kfac_skipped_steps"] = value(optimizer.skipped_steps)
        logs["kfac_failed_refreshes"] = float(optimizer.failed_refreshes)

    def on_train_batch_end(self, batch, logs=None):
        self._add(logs)

    def on_epoch_end(self, epoch, logs=None):
        self._add(logs)
