"""`KFACLogs`: K-FAC's own numbers in `fit`'s logs, hence in `History` and
the `TensorBoard` callback."""

import keras
import numpy as np

from keras_kfac.optimizer import KFAC


class KFACLogs(keras.callbacks.Callback):
    """Adds the state of the model's `keras_kfac.KFAC` to the logs of every
    batch and epoch:

    - `kfac_step_size`: `η` of the latest update, `clip_coefficient · η_max`
      (`η_max` the learning rate, at the current step of a schedule);
    - `kfac_clip_coefficient`: `η / η_max` (1 when the KL clip did not bind);
    - `kfac_damping`: `λ`;
    - `kfac_skipped_steps`: updates skipped so far because a gradient,
      statistic or update was not finite.

    Put it before `keras.callbacks.TensorBoard` in `callbacks=[...]`: Keras
    calls callbacks in order, so TensorBoard then writes these too.

    Raises:
        ValueError: At the start of training, when the model's optimizer
            is not a `keras_kfac.KFAC`.
    """

    def on_train_begin(self, logs=None):
        optimizer = getattr(self.model, "optimizer", None)
        if not isinstance(optimizer, KFAC):
            raise ValueError(
                "KFACLogs reports a keras_kfac.KFAC; the model was compiled "
                f"with {type(optimizer).__name__}."
            )

    def _add(self, logs) -> None:
        if logs is None:
            return
        optimizer = self.model.optimizer
        if not optimizer.built:
            return
        clip = float(np.asarray(optimizer.clip_coefficient))
        logs["kfac_step_size"] = clip * float(
            np.asarray(optimizer.learning_rate)
        )
        logs["kfac_clip_coefficient"] = clip
        logs["kfac_damping"] = float(optimizer.damping)
        logs["kfac_skipped_steps"] = float(np.asarray(optimizer.skipped_steps))

    def on_train_batch_end(self, batch, logs=None):
        self._add(logs)

    def on_epoch_end(self, epoch, logs=None):
        self._add(logs)
