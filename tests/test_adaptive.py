"""`KFAC(adaptive=True)`: the quadratic model's step and the damping it adapts
(Martens & Grosse 2015, §6.5 and §7), against dense references."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kfac
from keras_kfac import fisher, layers, quadratic_model


def bernoulli_nll(y, logits):
    return tf.reduce_sum(
        tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logits), -1
    )


def tiny_network(inputs=4, hidden=5, outputs=3):
    return keras.Sequential(
        [
            keras.Input((inputs,)),
            layers.Dense(hidden, activation="tanh"),
            layers.Dense(outputs),
        ]
    )


def flat(tensors):
    return np.concatenate([np.asarray(t, np.float64).ravel() for t in tensors])


def dense_gauss_newton(model, x, output_hessian, state=None):
    """`Jᵀ H J` in float64 from the full Jacobian of the outputs, from the
    variables' `state` (the model's own when `None`)."""
    if state is None:
        state = [tf.convert_to_tensor(v) for v in model.non_trainable_variables]
    values = [tf.convert_to_tensor(v) for v in model.trainable_variables]
    with tf.GradientTape() as tape:
        tape.watch(values)
        outputs, _ = model.stateless_call(values, list(state), x, training=True)
    jacobians = tape.jacobian(outputs, values)
    rows = int(np.prod(outputs.shape))
    J = np.concatenate(
        [np.asarray(j, np.float64).reshape(rows, -1) for j in jacobians], 1
    )
    return J.T @ output_hessian(np.asarray(outputs, np.float64)) @ J


def bernoulli_output_hessian(batch):
    def hessian(logits):
        p = 1.0 / (1.0 + np.exp(-logits.ravel()))
        return np.diag(p * (1.0 - p)) / batch

    return hessian


def test_step_coefficients_minimize_the_damped_model(rng):
    W = rng.normal(size=(6, 2))
    C = W.T @ W
    V = rng.normal(size=(5, 2))
    D = V.T @ V
    b = rng.normal(size=2)
    w, change = quadratic_model.step_coefficients(C, D, b, 0.3)
    expected = np.linalg.solve(C + 0.3 * D, b)
    np.testing.assert_allclose(w, expected, rtol=1e-4)
    np.testing.assert_allclose(
        change, 0.5 * expected @ C @ expected - expected @ b, rtol=1e-4
    )


def test_step_coefficients_without_a_previous_update_fit_alpha_alone():
    C = np.array([[2.0, 0.0], [0.0, 0.0]])
    D = np.array([[3.0, 0.0], [0.0, 0.0]])
    b = np.array([1.5, 0.0])
    w, change = quadratic_model.step_coefficients(C, D, b, 0.5)
    alpha = 1.5 / (2.0 + 0.5 * 3.0)
    np.testing.assert_allclose(w, [alpha, 0.0], rtol=1e-6)
    np.testing.assert_allclose(
        change, 0.5 * 2.0 * alpha**2 - 1.5 * alpha, rtol=1e-6
    )


def _damped_model(C, D, b, damping):
    """`M(w) = ½ wᵀ (C + λ D) w - wᵀ b` in float64."""
    damped = np.asarray(C, np.float64) + damping * np.asarray(D, np.float64)
    return lambda w: 0.5 * w @ damped @ w - w @ np.asarray(b, np.float64)


@pytest.mark.parametrize("seed", range(10))
def test_bounded_momentum_minimizes_the_model_on_the_strip(seed):
    # The oracle: M is convex, so its minimizer on 0 <= μ <= m is the free
    # one if it lies inside, else the best point of one of the two edges,
    # each with its α solved from ∂M/∂α = 0; all three are checked.
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(6, 2))
    C = W.T @ W
    V = rng.normal(size=(5, 2))
    D = V.T @ V
    b = rng.normal(size=2) * 3.0
    damping, bound = 0.2, 0.9
    model = _damped_model(C, D, b, damping)
    damped = C + damping * D
    free = np.linalg.solve(damped, b)
    candidates = [free] if 0.0 <= free[1] <= bound else []
    for mu in (0.0, bound):
        candidates.append(
            np.array([(b[0] - mu * damped[0, 1]) / damped[0, 0], mu])
        )
    expected = min(candidates, key=model)
    w, change = quadratic_model.step_coefficients(C, D, b, damping, bound)
    np.testing.assert_allclose(w, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        change, 0.5 * expected @ C @ expected - expected @ b, rtol=1e-4
    )


def test_bounded_momentum_covers_both_edges():
    # The seeds above must reach both edges and the interior, or the test
    # checks less than it says.
    seen = set()
    for seed in range(10):
        rng = np.random.default_rng(seed)
        W = rng.normal(size=(6, 2))
        V = rng.normal(size=(5, 2))
        b = rng.normal(size=2) * 3.0
        mu = np.linalg.solve(W.T @ W + 0.2 * V.T @ V, b)[1]
        seen.add("below" if mu < 0 else "above" if mu > 0.9 else "inside")
    assert seen == {"below", "above", "inside"}


@pytest.mark.parametrize("max_kl", [1e-3, 0.5, None])
def test_the_trust_region_scales_the_step_to_its_radius(max_kl):
    # M(w) of the scaled w, and ½ wᵀ C w = δ when the bound binds (the
    # free step's KL is about 0.26), untouched when it does not.
    C = np.array([[2.0, 0.3], [0.3, 1.0]])
    b = np.array([0.7, -0.2])
    w = np.array([0.5, 0.1])
    scaled, change, clip = map(
        np.asarray, quadratic_model.within_kl(w, C, b, max_kl)
    )
    kl = 0.5 * w @ C @ w
    factor = 1.0 if max_kl is None else min(1.0, np.sqrt(max_kl / kl))
    np.testing.assert_allclose(clip, factor, rtol=1e-6)
    np.testing.assert_allclose(scaled, factor * w, rtol=1e-6)
    if factor < 1.0:
        np.testing.assert_allclose(0.5 * scaled @ C @ scaled, max_kl, rtol=1e-5)
    expected = factor * w
    np.testing.assert_allclose(
        change, 0.5 * expected @ C @ expected - expected @ b, rtol=1e-5
    )


@pytest.mark.parametrize(
    "ratio, expected",
    [
        (0.9, 2.0 * 0.5),
        (0.75, 2.0),
        (0.5, 2.0),
        (0.25, 2.0),
        (0.1, 2.0 / 0.5),
        (-3.0, 2.0 / 0.5),
        (float("nan"), 2.0 / 0.5),
    ],
)
def test_damping_follows_the_levenberg_marquardt_rule(ratio, expected):
    damping = quadratic_model.adapted_damping(2.0, ratio, 0.5, 1e-3)
    assert float(damping) == pytest.approx(expected)


def test_damping_never_adapts_below_the_floor():
    assert float(quadratic_model.adapted_damping(1e-3, 1.0, 0.5, 1e-3)) == (
        pytest.approx(1e-3)
    )


def adaptive_model(rng, **kwargs):
    keras.utils.set_random_seed(int(rng.integers(1 << 30)))
    model = keras_kfac.TrueFisherModel(tiny_network(), "bernoulli")
    optimizer = keras_kfac.KFAC(adaptive=True, **kwargs)
    model.compile(optimizer=optimizer, loss=bernoulli_nll)
    x = rng.normal(size=(8, 4)).astype("float32")
    y = (rng.uniform(size=(8, 3)) < 0.5).astype("float32")
    model(x)
    return model, optimizer, x, y


@pytest.fixture
def float64_policy():
    # The products' forward differences are good to about `√ε` relative:
    # in float64, 1.5e-8 times `(1 + ‖θ‖) ‖w‖` and the outputs' curvature
    # along `w`, a few units here, so 1e-6 separates a right formula from
    # a wrong one.
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_dtype_policy(policy)


def float64_tangents(rng, values, count=2):
    return [[rng.normal(size=v.shape) for v in values] for _ in range(count)]


def test_gauss_newton_products_match_the_dense_matrix(rng, float64_policy):
    model, _, x, y = adaptive_model(rng, damping=1.0)
    x, y = x.astype("float64"), y.astype("float64")
    values = [tf.convert_to_tensor(v) for v in model.trainable_variables]
    state = [tf.convert_to_tensor(v) for v in model.non_trainable_variables]
    assert values[0].dtype == tf.float64
    tangents = float64_tangents(rng, values)
    products = model.gauss_newton_products(
        (x, y, None),
        state,
        values,
        [[tf.constant(t) for t in w] for w in tangents],
    )
    F = dense_gauss_newton(
        model, x, bernoulli_output_hessian(len(x)), state=state
    )
    W = np.stack([flat(w) for w in tangents], 1)
    expected = W.T @ F @ W
    np.testing.assert_allclose(
        products, expected, rtol=1e-6, atol=1e-7 * np.abs(expected).max()
    )


def test_gauss_newton_products_through_a_rolled_lstm(rng, float64_policy):
    # Keras runs an LSTM as a loop (`unroll=False`): the differences run
    # it forward like any model, and must equal the dense Jᵀ H J (H = 2 I
    # / n for the mean squared error of one output; the Jacobian from the
    # same rolled network, by reverse mode).
    keras.utils.set_random_seed(int(rng.integers(1 << 30)))
    network = keras.Sequential(
        [keras.Input((5, 2)), keras.layers.LSTM(3), layers.Dense(1)]
    )
    model = keras_kfac.TrueFisherModel(network, "gaussian")
    model.compile(loss="mse")
    x = rng.normal(size=(4, 5, 2))
    y = rng.normal(size=(4, 1))
    model(x)
    values = [tf.convert_to_tensor(v) for v in model.trainable_variables]
    state = [tf.convert_to_tensor(v) for v in model.non_trainable_variables]
    tangents = float64_tangents(rng, values)
    products = model.gauss_newton_products(
        (x, y, None),
        state,
        values,
        [[tf.constant(t) for t in w] for w in tangents],
    )
    F = dense_gauss_newton(
        model, x, lambda outputs: 2.0 * np.eye(4) / 4, state=state
    )
    W = np.stack([flat(w) for w in tangents], 1)
    expected = W.T @ F @ W
    np.testing.assert_allclose(
        products, expected, rtol=1e-6, atol=1e-7 * np.abs(expected).max()
    )


def test_forward_differences_take_the_relative_step_and_skip_bad_tangents():
    # f(θ) = θ², so (f(θ + h w) - f(θ)) / h = 2θw + h w²: the quotient
    # shows the step h = s (1 + ‖θ‖) / ‖w‖ exactly; a zero or non-finite
    # tangent gives J w = 0 rather than a NaN.
    theta = tf.constant([3.0, 4.0], tf.float64)  # ‖θ‖ = 5

    def predictions(values):
        return tf.square(values[0])

    s = 1e-3
    w = np.array([1.0, 2.0])
    jvps = keras_kfac.fisher.forward_difference_jvps(
        predictions,
        [theta],
        predictions([theta]),
        [
            [tf.constant(w)],
            [tf.zeros(2, tf.float64)],
            [tf.constant([np.nan, 1.0], tf.float64)],
        ],
        relative_step=s,
    )
    h = s * (1 + 5.0) / np.linalg.norm(w)
    np.testing.assert_allclose(
        jvps[0], 2 * theta.numpy() * w + h * w**2, rtol=1e-10
    )
    np.testing.assert_array_equal(jvps[1], [0.0, 0.0])
    np.testing.assert_array_equal(jvps[2], [0.0, 0.0])


def test_adaptive_step_is_the_minimizer_of_the_quadratic_model(rng):
    """After the step `v = α Δ + μ p` (here `Δ = ∇` during cold steps, so
    everything is known densely), `Δᵀ (F + λ I) v = ∇ᵀ Δ` and, for `μ`
    held to `[0, momentum]`, the Karush-Kuhn-Tucker conditions of `M` on
    that strip: `∂M/∂μ = pᵀ (F + λ I) v - ∇ᵀ p` is zero inside it, `≥ 0`
    at `μ = 0` and `≤ 0` at `μ = momentum`. No trust region: the free
    minimizer (the next test bounds it)."""
    model, optimizer, x, y = adaptive_model(
        rng,
        damping=0.5,
        cold_steps=10,
        damping_adaptation_interval=100,
        kl_clip=None,
    )
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0, shuffle=False)
    previous = flat(optimizer._velocities)
    before = [v.numpy() for v in model.trainable_variables]
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(bernoulli_nll(y, model(x)))
    gradient = flat(tape.gradient(loss, model.trainable_variables))
    F = dense_gauss_newton(model, x, bernoulli_output_hessian(len(x)))
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0, shuffle=False)
    after = [v.numpy() for v in model.trainable_variables]
    step = flat(before) - flat(after)
    alpha = float(optimizer.step_size)
    mu = float(optimizer.momentum_coefficient)
    np.testing.assert_allclose(
        step, alpha * gradient + mu * previous, rtol=1e-4, atol=1e-6
    )
    damped = F + 0.5 * np.eye(len(F))
    np.testing.assert_allclose(
        gradient @ damped @ step, gradient @ gradient, rtol=1e-3
    )
    slope = previous @ damped @ step - previous @ gradient
    scale = 1e-3 * abs(previous @ gradient)
    if mu == 0.0:
        assert slope >= -scale
    elif mu == pytest.approx(optimizer.momentum, abs=1e-7):
        assert slope <= scale
    else:
        assert abs(slope) <= scale
    expected_change = 0.5 * step @ F @ step - gradient @ step
    assert float(optimizer._predicted_change) == pytest.approx(
        expected_change, rel=1e-3
    )


def test_adaptive_update_stays_in_the_trust_region_of_the_exact_fisher(
    rng,
):
    """With a radius the free step exceeds, the update `v` is the free
    minimizer scaled to `½ vᵀ F v = kl_clip` under the dense Gauss-Newton
    matrix of the batch, and `clip_coefficient` is the scale."""
    results = {}
    for kl_clip in (None, 1e-4):
        model, optimizer, x, y = adaptive_model(
            np.random.default_rng(5),
            damping=0.5,
            cold_steps=10,
            kl_clip=kl_clip,
        )
        F = dense_gauss_newton(model, x, bernoulli_output_hessian(len(x)))
        before = flat([v.numpy() for v in model.trainable_variables])
        model.fit(x, y, batch_size=len(x), epochs=1, verbose=0, shuffle=False)
        step = before - flat([v.numpy() for v in model.trainable_variables])
        results[kl_clip] = step, float(optimizer.clip_coefficient), F
    free, free_clip, F = results[None]
    clipped, clip, _ = results[1e-4]
    assert free_clip == 1.0
    assert 0.5 * free @ F @ free > 1e-4  # the bound binds
    np.testing.assert_allclose(0.5 * clipped @ F @ clipped, 1e-4, rtol=1e-3)
    np.testing.assert_allclose(clipped, clip * free, rtol=1e-4, atol=1e-7)


def test_reduction_ratio_is_one_on_a_quadratic_loss(rng):
    """A linear model under squared error is its own quadratic model, so
    `ρ = 1` and the damping shrinks by `ω` at each adaptation."""
    keras.utils.set_random_seed(3)
    net = keras.Sequential([keras.Input((3,)), layers.Dense(2)])
    model = keras_kfac.TrueFisherModel(net, "gaussian")
    optimizer = keras_kfac.KFAC(
        adaptive=True,
        damping=0.1,
        damping_adaptation_interval=1,
        damping_adaptation_decay=0.5,
        min_damping=0.0,
    )
    model.compile(optimizer=optimizer, loss="mse")
    x = rng.normal(size=(16, 3)).astype("float32")
    y = rng.normal(size=(16, 2)).astype("float32")
    for k in range(1, 4):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
        assert float(optimizer.reduction_ratio) == pytest.approx(1.0, abs=1e-3)
        assert float(optimizer.current_damping) == pytest.approx(0.1 * 0.5**k)


def test_adaptive_training_logs_its_numbers(rng):
    model, optimizer, x, y = adaptive_model(
        rng, damping=1.0, damping_adaptation_interval=2
    )
    history = model.fit(
        x,
        y,
        batch_size=4,
        epochs=2,
        verbose=0,
        callbacks=[keras_kfac.KFACLogs()],
    )
    logs = history.history
    for key in ("kfac_step_size", "kfac_momentum", "kfac_reduction_ratio"):
        assert np.all(np.isfinite(logs[key])), key
    assert logs["kfac_damping"][-1] == pytest.approx(
        float(optimizer.current_damping)
    )
    assert int(optimizer.update_count) == 4


def test_adaptive_needs_the_model_wrapper(rng):
    net = tiny_network()
    net.compile(optimizer=keras_kfac.KFAC(adaptive=True), loss=bernoulli_nll)
    x = rng.normal(size=(8, 4)).astype("float32")
    y = (rng.uniform(size=(8, 3)) < 0.5).astype("float32")
    with pytest.raises(ValueError, match="TrueFisherModel"):
        net.fit(x, y, verbose=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(damping=0.0), "damping"),
        (dict(gradient_accumulation_steps=2), "gradient_accumulation_steps"),
        (dict(min_damping=float("nan")), "min_damping"),
        (dict(damping_adaptation_decay=1.0), "damping_adaptation_decay"),
        (dict(damping_adaptation_interval=0), "damping_adaptation_interval"),
        (dict(adaptive="yes"), "adaptive"),
    ],
)
def test_adaptive_rejects_bad_arguments(kwargs, match):
    kwargs = {"adaptive": True, **kwargs}
    with pytest.raises(ValueError, match=match):
        keras_kfac.KFAC(**kwargs)


def test_adaptive_settings_survive_get_config():
    optimizer = keras_kfac.KFAC(
        adaptive=True,
        damping_adaptation_interval=3,
        damping_adaptation_decay=0.8,
        min_damping=1e-3,
    )
    clone = keras_kfac.KFAC.from_config(optimizer.get_config())
    for name in (
        "adaptive",
        "damping_adaptation_interval",
        "damping_adaptation_decay",
        "min_damping",
    ):
        assert getattr(clone, name) == getattr(optimizer, name)


def test_bernoulli_fisher_loss_gives_the_bernoulli_fisher(rng):
    """Over many samples, G → diag(p (1 - p)) at a fixed input."""
    layer = layers.Dense(3)
    x = np.repeat(rng.normal(size=(1, 4)).astype("float32"), 20000, axis=0)
    layer.build(x.shape)
    with keras_kfac.collecting_statistics(True):
        with tf.GradientTape() as tape:
            logits = layer(x, training=True)
            loss = fisher.bernoulli_fisher_loss(logits)
        tape.gradient(loss, layer.trainable_weights)
    p = tf.sigmoid(logits[0]).numpy()
    np.testing.assert_allclose(
        layer.statistics.G.numpy(), np.diag(p * (1 - p)), atol=0.01
    )


def test_true_fisher_model_compiles_the_adaptive_kfac_by_default():
    for optimizer in ({}, {"optimizer": "kfac"}, {"optimizer": "KFAC"}):
        model = keras_kfac.TrueFisherModel(tiny_network(), "bernoulli")
        model.compile(loss=bernoulli_nll, **optimizer)
        assert isinstance(model.optimizer, keras_kfac.KFAC)
        assert model.optimizer.adaptive


@pytest.mark.slow
def test_extra_passes_leave_batch_norm_statistics_to_the_real_one(rng):
    """One step: the moving mean folds in the batch mean of the forward
    pass at the old weights once, `m ← 0.9 · 0 + 0.1 · mean`, however many
    passes the adaptive step replays; dropout trains alongside."""
    keras.utils.set_random_seed(5)
    dense = layers.Dense(6)
    norm = keras.layers.BatchNormalization(momentum=0.9)
    net = keras.Sequential(
        [
            keras.Input((4,)),
            dense,
            norm,
            keras.layers.Activation("tanh"),
            keras.layers.Dropout(0.2),
            layers.Dense(3),
        ]
    )
    model = keras_kfac.TrueFisherModel(net, "bernoulli")
    model.compile(
        optimizer=keras_kfac.KFAC(
            adaptive=True, damping=1.0, damping_adaptation_interval=1
        ),
        loss=bernoulli_nll,
    )
    x = rng.normal(size=(16, 4)).astype("float32")
    y = (rng.uniform(size=(16, 3)) < 0.5).astype("float32")
    batch_mean = np.asarray(dense(x)).mean(axis=0)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    assert float(model.optimizer.reduction_ratio) != 0.0  # measured
    np.testing.assert_allclose(
        norm.moving_mean.numpy(), 0.1 * batch_mean, rtol=1e-4, atol=1e-6
    )


@pytest.mark.slow
def test_adaptive_state_saves_and_loads(rng, tmp_path):
    model, optimizer, x, y = adaptive_model(
        rng, damping=1.0, damping_adaptation_interval=1
    )
    model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    path = tmp_path / "adaptive.keras"
    model.save(path)
    loaded = keras.saving.load_model(
        path, custom_objects={"bernoulli_nll": bernoulli_nll}
    )
    assert loaded.optimizer.adaptive
    assert float(loaded.optimizer.current_damping) == pytest.approx(
        float(optimizer.current_damping)
    )
    loaded.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert int(loaded.optimizer.update_count) == 6


@pytest.mark.slow
def test_adaptive_step_is_the_same_under_jit_compile(rng):
    """XLA compiles the whole adaptive step, curvature products and the
    reduction ratio included, to the same update. (Cold steps: `Δ = ∇`,
    since the sampled Fisher targets draw other numbers under XLA.)"""
    weights = {}
    for jit in (False, True):
        model, optimizer, x, y = adaptive_model(
            np.random.default_rng(7),
            damping=1.0,
            damping_adaptation_interval=1,
            cold_steps=10,
        )
        model.compile(optimizer=optimizer, loss=bernoulli_nll, jit_compile=jit)
        model.fit(x, y, batch_size=4, epochs=2, verbose=0, shuffle=False)
        weights[jit] = flat(model.get_weights())
        assert int(optimizer.update_count) == 4
    np.testing.assert_allclose(
        weights[True], weights[False], rtol=1e-3, atol=1e-5
    )


@pytest.mark.slow
def test_review_rejects_an_update_that_raised_the_batch_loss(rng):
    model, optimizer, x, y = adaptive_model(
        rng, damping=0.5, damping_adaptation_interval=100
    )
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    factor = 0.95**100
    assert float(np.abs(flat(optimizer._velocities)).max()) > 0
    # Kept: the loss fell; λ waits for its interval, ρ is recorded.
    predicted = float(optimizer._predicted_change)
    assert not bool(optimizer.review_update(2.0, 2.0 + 0.5 * predicted))
    assert float(optimizer.reduction_ratio) == pytest.approx(0.5)
    assert float(optimizer.current_damping) == pytest.approx(0.5)
    # Rejected: the loss rose (or is not finite); momentum is dropped.
    for after in (2.5, float("nan")):
        damping = float(optimizer.current_damping)
        assert bool(optimizer.review_update(2.0, after))
        assert float(optimizer.current_damping) == pytest.approx(
            damping / factor
        )
        assert not np.any(flat(optimizer._velocities))
    assert int(optimizer.rejected_steps) == 2
    # A non-finite ρ is not kept: the state stays finite.
    assert float(optimizer.reduction_ratio) == pytest.approx(0.5 / predicted)


def test_a_rejected_update_leaves_the_weights_where_they_were(rng):
    """With a batch loss that always reads higher after the update, every
    update is undone: the weights stay at their initial values."""
    model, optimizer, x, y = adaptive_model(rng, damping=1.0)
    model.batch_loss = lambda batch, state, values: tf.constant(1e9)
    before = flat(model.get_weights())
    model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    np.testing.assert_array_equal(flat(model.get_weights()), before)
    assert int(optimizer.rejected_steps) == 4
    assert int(optimizer.update_count) == 4


@pytest.mark.slow
def test_a_loss_scale_wrapper_leaves_the_adaptive_update_unchanged(rng):
    # Under mixed_float16 Keras wraps the optimizer in a LossScaleOptimizer.
    # Its loss scale, a power of two, scales gradients and factors exactly,
    # so the adaptive updates (and what KFACLogs reads through the wrapper)
    # must match those of the bare optimizer. The Fisher loss is taken at
    # fixed targets: sampled ones would differ between the two graphs.
    # The two graphs' forward passes may round differently in the last
    # bit, which the curvature products' forward differences divide by
    # their step (`√ε` relative): the updates agree to a few `√ε` of the
    # distance the weights moved.
    x = rng.normal(size=(32, 4)).astype("float32")
    y = (rng.uniform(size=(32, 3)) < 0.5).astype("float32")

    class FixedTargets(keras_kfac.TrueFisherModel):
        def fisher_loss(self, y_pred):
            return tf.reduce_mean(bernoulli_nll(tf.ones_like(y_pred), y_pred))

    def train(optimizer):
        keras.utils.set_random_seed(3)
        model = FixedTargets(tiny_network(), "bernoulli")
        model.compile(optimizer=optimizer, loss=bernoulli_nll)
        history = model.fit(
            x,
            y,
            batch_size=8,
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=[keras_kfac.KFACLogs()],
        )
        return model, history.history

    wrapped, wrapped_logs = train(
        keras.optimizers.LossScaleOptimizer(keras_kfac.KFAC(adaptive=True))
    )
    plain, plain_logs = train(keras_kfac.KFAC(adaptive=True))
    assert int(wrapped.optimizer.inner_optimizer.update_count) == 4
    keras.utils.set_random_seed(3)
    start = FixedTargets(tiny_network(), "bernoulli").get_weights()
    root_eps = float(np.sqrt(np.finfo(np.float32).eps))
    for w, p, w0 in zip(wrapped.get_weights(), plain.get_weights(), start):
        moved = np.abs(p - w0).max()
        assert moved > 0
        np.testing.assert_allclose(w, p, rtol=0, atol=4 * root_eps * moved)
    for name in ("kfac_reduction_ratio", "kfac_damping", "kfac_step_size"):
        assert wrapped_logs[name] == pytest.approx(
            plain_logs[name], rel=4 * root_eps
        )


def test_mixed_float16_trains_the_adaptive_kfac(rng):
    # Keras wraps the optimizer itself here; the wrapper is looked through.
    x = rng.normal(size=(32, 4)).astype("float32")
    y = (rng.uniform(size=(32, 3)) < 0.5).astype("float32")
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = keras_kfac.TrueFisherModel(tiny_network(), "bernoulli")
        model.compile(loss=bernoulli_nll)
        history = model.fit(
            x,
            y,
            batch_size=8,
            epochs=2,
            verbose=0,
            callbacks=[keras_kfac.KFACLogs()],
        )
    finally:
        keras.config.set_dtype_policy("float32")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    kfac = model.optimizer.inner_optimizer
    assert int(kfac.update_count) + int(kfac.rejected_steps) >= 1
    assert np.all(np.isfinite(history.history["loss"]))


def test_kl_clip_auto_is_each_rules_default_and_a_wrong_string_is_named():
    assert keras_kfac.KFAC().kl_clip == 1e-3
    adaptive = keras_kfac.KFAC(adaptive=True)
    assert adaptive.kl_clip == 0.06
    assert keras_kfac.KFAC.from_config(adaptive.get_config()).kl_clip == 0.06
    assert keras_kfac.KFAC(adaptive=True, kl_clip=None).kl_clip is None
    with pytest.raises(ValueError, match="kl_clip='off'"):
        keras_kfac.KFAC(kl_clip="off")
