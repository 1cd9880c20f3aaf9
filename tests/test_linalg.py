import numpy as np
import pytest
import tensorflow as tf

from keras_kfac import linalg


def spd(rng, n):
    M = rng.normal(size=(n, n))
    return (M @ M.T / n + 0.1 * np.eye(n)).astype("float32")


def test_symmetric_eigh_reconstructs(rng):
    A = spd(rng, 5)
    lam, Q, ok = linalg.symmetric_eigh(tf.constant(A))
    assert bool(ok)
    np.testing.assert_allclose(
        Q.numpy() @ np.diag(lam) @ Q.numpy().T, A, atol=1e-5
    )


def test_symmetric_eigh_clips_roundoff_negatives():
    lam, _, ok = linalg.symmetric_eigh(tf.constant([[1.0, 0.0], [0.0, -1e-7]]))
    assert bool(ok)
    np.testing.assert_array_equal(lam.numpy(), [0.0, 1.0])


def test_symmetric_eigh_flags_nonfinite_input():
    _, _, ok = linalg.symmetric_eigh(tf.constant([[np.nan, 0.0], [0.0, 1.0]]))
    assert not bool(ok)


def test_pi_adjustment_is_trace_ratio():
    pi = linalg.pi_adjustment(
        tf.constant([1.0, 3.0]), tf.constant([0.5, 0.5, 0.5])
    )
    # (4 / 2) / (1.5 / 3) = 4
    np.testing.assert_allclose(pi.numpy(), 2.0, rtol=1e-6)
    assert linalg.pi_adjustment(tf.zeros(2), tf.ones(2)).numpy() == 1.0


@pytest.mark.parametrize("mode", ["eigen", "factored"])
def test_kronecker_solve_equals_dense_solve(rng, mode):
    A, G = spd(rng, 4), spd(rng, 3)
    V = rng.normal(size=(4, 3)).astype("float32")
    damping = 0.05
    lam_A, Q_A, _ = linalg.symmetric_eigh(tf.constant(A))
    lam_G, Q_G, _ = linalg.symmetric_eigh(tf.constant(G))
    D = linalg.damped_eigenvalues(lam_A, lam_G, tf.constant(damping), mode)
    X = linalg.kronecker_solve(Q_A, Q_G, D, tf.constant(V)).numpy()
    if mode == "eigen":
        F = np.kron(A, G) + damping * np.eye(12)
    else:
        pi = np.sqrt((np.trace(A) / 4) / (np.trace(G) / 3))
        r = np.sqrt(damping)
        F = np.kron(A + pi * r * np.eye(4), G + r / pi * np.eye(3))
    expected = np.linalg.solve(F.astype("float64"), V.ravel()).reshape(4, 3)
    np.testing.assert_allclose(X, expected, rtol=1e-4, atol=1e-5)


def test_damped_eigenvalues_rejects_unknown_mode():
    with pytest.raises(ValueError, match="'bogus'"):
        linalg.damped_eigenvalues(tf.ones(2), tf.ones(2), 0.1, "bogus")


def test_kl_clip_learning_rate_by_hand():
    # sqrt(2 * 0.01 / 8) = 0.05 < 0.25
    eta = linalg.kl_clip_learning_rate(0.25, 0.01, tf.constant(8.0))
    np.testing.assert_allclose(eta.numpy(), 0.05, rtol=1e-6)
    # sqrt(2 * 0.01 / 0.02) = 1 > 0.25: not clipped
    eta = linalg.kl_clip_learning_rate(0.25, 0.01, tf.constant(0.02))
    np.testing.assert_allclose(eta.numpy(), 0.25)
    assert (
        linalg.kl_clip_learning_rate(0.25, None, tf.constant(8.0)).numpy()
        == 0.25
    )
    assert (
        linalg.kl_clip_learning_rate(0.25, 0.01, tf.constant(0.0)).numpy()
        == 0.25
    )


def test_warm_start_decay():
    assert [float(linalg.warm_start_decay(0.95, k)) for k in (0, 1, 3)] == [
        0.0,
        0.5,
        0.75,
    ]
    np.testing.assert_allclose(float(linalg.warm_start_decay(0.95, 1000)), 0.95)


def test_running_average():
    out = linalg.running_average(
        tf.constant(2.0), tf.constant(4.0), tf.constant(0.25)
    )
    assert float(out) == 3.5


def test_factored_inverses_invert_the_damped_factors(rng):
    A, G, damping = spd(rng, 5), spd(rng, 3), 0.04
    A_inverse, G_inverse, ok = linalg.factored_inverses(
        tf.constant(A), tf.constant(G), tf.constant(damping)
    )
    assert bool(ok)
    pi = np.sqrt((np.trace(A) / 5) / (np.trace(G) / 3))
    r = np.sqrt(damping)
    np.testing.assert_allclose(
        A_inverse.numpy() @ (A + pi * r * np.eye(5)), np.eye(5), atol=1e-5
    )
    np.testing.assert_allclose(
        G_inverse.numpy() @ (G + r / pi * np.eye(3)), np.eye(3), atol=1e-5
    )


def test_factored_inverses_flag_nonfinite_input(rng):
    A = spd(rng, 3)
    A[0, 1] = np.nan
    _, _, ok = linalg.factored_inverses(
        tf.constant(A), tf.constant(spd(rng, 2)), tf.constant(0.01)
    )
    assert not bool(ok)


@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
def test_factored_inverses_flag_an_indefinite_factor(mode):
    """A factor that roundoff made indefinite beyond the damping has no
    Cholesky factor: the result is flagged, not raised, and the caller
    keeps its previous inverses."""
    A = tf.constant([[1.0, 2.0], [2.0, 1.0]])  # eigenvalues 3 and -1
    G = tf.constant([[1.0]])

    def inverses():
        return linalg.factored_inverses(A, G, tf.constant(1e-4))

    if mode != "eager":
        inverses = tf.function(inverses, jit_compile=mode == "xla")
    _, _, ok = inverses()
    assert not bool(ok)


@pytest.mark.parametrize(
    "bad", [np.nan, np.inf, -np.inf, "inf and -inf"], ids=str
)
def test_all_finite_finds_one_bad_element_among_many(rng, bad):
    tensors = [rng.normal(size=s).astype("float32") for s in ((3, 4), (7,))]
    assert bool(linalg.all_finite([tf.constant(t) for t in tensors]))
    if bad == "inf and -inf":  # their sum is NaN, not another infinity
        tensors[0][1, 2], tensors[1][5] = np.inf, -np.inf
    else:
        tensors[1][5] = bad
    assert not bool(linalg.all_finite([tf.constant(t) for t in tensors]))


def test_all_finite_of_other_dtypes_and_of_nothing():
    assert bool(linalg.all_finite([]))
    assert bool(linalg.all_finite([tf.constant([255, 255], tf.uint8)]))
    assert not bool(linalg.all_finite([tf.constant([1.0, np.inf], tf.float16)]))
