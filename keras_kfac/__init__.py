"""K-FAC natural-gradient optimization for Keras 3 (TensorFlow backend).

model = keras.Sequential([keras.Input((64,)),
                          keras_kfac.layers.Dense(128, activation="tanh"),
                          keras_kfac.layers.Dense(10)])
model.compile(optimizer=keras_kfac.KFAC(), loss=...)
model.fit(x, y)
"""

from keras_kfac import layers
from keras_kfac.callbacks import KFACLogs
from keras_kfac.convert import convert
from keras_kfac.fisher import TrueFisherModel, fisher_then_loss_gradients
from keras_kfac.optimizer import KFAC
from keras_kfac.statistics import collecting_statistics

__all__ = [
    "KFAC",
    "KFACLogs",
    "TrueFisherModel",
    "collecting_statistics",
    "convert",
    "fisher_then_loss_gradients",
    "layers",
]
__version__ = "0.1.0"
