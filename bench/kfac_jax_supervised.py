"""kfac-jax and optax Adam on a problem of `bench/supervised.py`.

    .venv-jax/bin/python bench/kfac_jax_supervised.py --problem autoencoder
    .venv-jax/bin/python bench/kfac_jax_supervised.py --problem cnn
    .venv-jax/bin/python bench/kfac_jax_supervised.py --problem cnn --quick

Runs in its own environment (`requirements-jax.lock`: jax[cpu], kfac-jax,
optax, dm-haiku), on a problem `bench/problems.py` defines, so every run
starts from the same weights and sees the same batches as the Keras runs
of that seed. Writes `kfac_jax.json` (`kfac_jax_quick.json`) to `--out`
(`bench/results/<problem>`); `bench/supervised.py` reads it and puts these
runs in its table and plot.

- `kfac-jax adaptive`: `kfac_jax.Optimizer` with adaptive learning rate,
  momentum and damping, `initial_damping=1.0`, everything else its
  defaults (among them `min_damping=1e-8` and 10 burn-in batches that only
  feed the curvature estimate before the first update: they come from the
  same stream, so kfac-jax's updates use the batches 11, 12, ... of it);
  its layers are found by kfac-jax's own graph matching (Dense and Conv2D);
- `kfac-jax, λ ≥ 1e-4`: the same with `min_damping=1e-4`, a floor of the
  order of `keras_kfac.KFAC(adaptive=True)`'s (`min_damping=3e-5`);
- `optax Adam`: `optax.adam`, its learning rate tuned over the Keras Adam
  grid on seed 0 by the final error.

Timing as in `bench/supervised.py`: compilation and evaluations are not
counted (two warm-up updates, then a fresh start).
"""

import argparse
import json
import os
import sys
import time

import haiku as hk
import jax
import jax.numpy as jnp
import kfac_jax
import numpy as np
import optax
from problems import BERNOULLI, KERNEL, POOL, PROBLEMS, batch_sequence

BURN_IN = 10  # kfac-jax's default num_burnin_steps
ADAM_GRID = [1e-3, 3e-3, 1e-2, 3e-2]
QUICK_ADAM_GRID = [1e-3, 1e-2]
KFAC = "kfac-jax adaptive"
KFAC_FLOOR = "kfac-jax, λ ≥ 1e-4"
ADAM = "optax Adam"


def network(problem):
    """The problem's layers as a Haiku network; the weighted layers are
    named `layer_0`, `layer_1`, ... in order."""

    def forward(x):
        h, weighted = x, 0
        for spec in problem.layers:
            kind = spec[0]
            if kind in ("dense", "conv"):
                name = f"layer_{weighted}"
                weighted += 1
                if kind == "dense":
                    h = hk.Linear(spec[1], name=name)(h)
                else:
                    h = hk.Conv2D(spec[1], KERNEL, padding="SAME", name=name)(h)
                if spec[2] is not None:
                    h = getattr(jax.nn, spec[2])(h)
            elif kind == "pool":
                window = (1, POOL, POOL, 1)
                h = hk.max_pool(h, window, window, padding="VALID")
            else:
                h = jnp.reshape(h, (h.shape[0], -1))
        return h

    return hk.without_apply_rng(hk.transform(forward))


def parameters(problem, seed):
    """The problem's initial weights of `seed` as Haiku parameters (Haiku's
    layouts are Keras': `(in, out)` and `(k, k, in, out)`)."""
    weights = problem.initial_weights(seed)
    return {
        f"layer_{i}": {
            "w": jnp.asarray(weights[2 * i]),
            "b": jnp.asarray(weights[2 * i + 1]),
        }
        for i in range(len(weights) // 2)
    }


def per_example_nll(problem, logits, y):
    if problem.loss == BERNOULLI:
        per_pixel = optax.sigmoid_binary_cross_entropy(logits, y)
        return jnp.sum(per_pixel, axis=1)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)


def make_loss(problem, net):
    """The mean negative log-likelihood of a batch `(x, y)`, registered
    with kfac-jax as the model's predictive distribution."""

    def loss(params, batch):
        x, y = batch
        logits = net.apply(params, x)
        if problem.loss == BERNOULLI:
            kfac_jax.register_sigmoid_cross_entropy_loss(logits, y)
        else:
            kfac_jax.register_softmax_cross_entropy_loss(logits, y)
        return jnp.mean(per_example_nll(problem, logits, y))

    return loss


def make_evaluate(problem, net):
    """The problem's error and second figure on the whole set."""

    @jax.jit
    def evaluate(params, x, y):
        logits = net.apply(params, x)
        nll = jnp.mean(per_example_nll(problem, logits, y))
        if problem.loss == BERNOULLI:
            error = jnp.mean(
                jnp.sum(jnp.square(jax.nn.sigmoid(logits) - x), axis=1)
            )
            return error, nll
        wrong = jnp.argmax(logits, axis=-1) != y
        return nll, 100 * jnp.mean(wrong.astype(jnp.float32))

    return evaluate


class KFACRun:
    """kfac-jax with its adaptive step, momentum and damping."""

    def __init__(self, loss, min_damping=1e-8):
        self.optimizer = kfac_jax.Optimizer(
            value_and_grad_func=jax.value_and_grad(loss),
            l2_reg=0.0,
            use_adaptive_learning_rate=True,
            use_adaptive_momentum=True,
            use_adaptive_damping=True,
            initial_damping=1.0,
            min_damping=min_damping,
            multi_device=False,
        )

    def start(self, params, batches, seed):
        self.rng = jax.random.PRNGKey(seed)
        self.stream = iter(batches)
        self.count = 0
        first = next(iter(batches))
        return params, self.optimizer.init(params, self.rng, first)

    def step(self, params, state):
        self.rng, key = jax.random.split(self.rng)
        params, state, stats = self.optimizer.step(
            params,
            state,
            key,
            data_iterator=self.stream,
            global_step_int=self.count,
        )
        self.count += 1
        return params, state, stats["loss"]


class AdamRun:
    def __init__(self, loss, learning_rate):
        self.optimizer = optax.adam(learning_rate)

        @jax.jit
        def update(params, state, batch):
            value, grads = jax.value_and_grad(loss)(params, batch)
            updates, state = self.optimizer.update(grads, state, params)
            return optax.apply_updates(params, updates), state, value

        self.update = update

    def start(self, params, batches, seed):
        self.stream = iter(batches)
        return params, self.optimizer.init(params)

    def step(self, params, state):
        return self.update(params, state, next(self.stream))


KFAC_RUNS = {
    KFAC: KFACRun,
    KFAC_FLOOR: lambda loss: KFACRun(loss, min_damping=1e-4),
}


def train(problem, make, seed, data, batch_size, updates, eval_every):
    """One run: errors at each evaluation, training seconds, ms/update."""
    x, y = data
    net = network(problem)
    evaluate = make_evaluate(problem, net)
    extra = BURN_IN if make in KFAC_RUNS.values() else 0
    order = batch_sequence(len(x), batch_size, updates + extra, seed)
    batches = [(x[indices], y[indices]) for indices in order]
    run = make(make_loss(problem, net))
    # Compile on a throwaway start, then start again.
    params, state = run.start(parameters(problem, seed), batches, seed)
    for _ in range(2):
        params, state, value = run.step(params, state)
    jax.block_until_ready(value)
    evaluate(params, x, y)
    params, state = run.start(parameters(problem, seed), batches, seed)
    error, second = evaluate(params, x, y)
    record = {"updates": [0], "seconds": [0.0], "errors": [float(error)]}
    clock = 0.0
    for start in range(0, updates, eval_every):
        t = time.perf_counter()
        for _ in range(min(eval_every, updates - start)):
            params, state, value = run.step(params, state)
        jax.block_until_ready(value)
        clock += time.perf_counter() - t
        error, second = evaluate(params, x, y)
        record["updates"].append(min(start + eval_every, updates))
        record["seconds"].append(clock)
        record["errors"].append(float(error))
    record.update(second=float(second), ms=1000 * clock / updates, skipped=0)
    print(
        f"  seed {seed}: error {record['errors'][-1]:.4g}, "
        f"{record['ms']:.2f} ms/update",
        file=sys.stderr,
        flush=True,
    )
    return record


def benchmark(problem, data, plan, seeds, adam_grid):
    batch_size, updates, eval_every = plan

    def run(make, seed):
        return train(problem, make, seed, data, batch_size, updates, eval_every)

    seed0 = seeds[0]
    grid_runs = {name: {} for name in (*KFAC_RUNS, ADAM)}
    for name, make in KFAC_RUNS.items():
        grid_runs[name][1.0] = run(make, seed0)
    for lr in adam_grid:
        grid_runs[ADAM][lr] = run(lambda loss, lr=lr: AdamRun(loss, lr), seed0)
    chosen = {
        name: min(runs, key=lambda v: runs[v]["errors"][-1])
        for name, runs in grid_runs.items()
    }
    makes = {**KFAC_RUNS, ADAM: lambda loss: AdamRun(loss, chosen[ADAM])}
    runs = {name: [grid_runs[name][chosen[name]]] for name in grid_runs}
    for seed in seeds[1:]:
        for name, make in makes.items():
            runs[name].append(run(make, seed))
    for name, seed_runs in runs.items():
        finals = [r["errors"][-1] for r in seed_runs]
        print(
            f"  batch {batch_size} {name}: final errors {finals}, "
            f"{np.mean([r['ms'] for r in seed_runs]):.2f} ms/update",
            file=sys.stderr,
            flush=True,
        )
    return {
        "grids": {
            **{name: ["initial_damping", [1.0]] for name in KFAC_RUNS},
            ADAM: ["learning_rate", adam_grid],
        },
        "grid_runs": {
            name: {str(v): run for v, run in values.items()}
            for name, values in grid_runs.items()
        },
        "chosen": chosen,
        "runs": runs,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--problem", choices=sorted(PROBLEMS), default="autoencoder"
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=None, help="3 (quick: 2)")
    parser.add_argument(
        "--out", default=None, help="bench/results/<problem> by default"
    )
    args = parser.parse_args()
    problem = PROBLEMS[args.problem]
    out = args.out or os.path.join("bench", "results", problem.name)
    plan = problem.quick_plan if args.quick else problem.full_plan
    seeds = list(range(args.seeds or (2 if args.quick else 3)))
    adam_grid = QUICK_ADAM_GRID if args.quick else ADAM_GRID
    data = tuple(jnp.asarray(a) for a in problem.data())
    start = time.perf_counter()
    results = {
        str(section[0]): benchmark(problem, data, section, seeds, adam_grid)
        for section in plan
    }
    results["versions"] = {
        "jax": jax.__version__,
        "kfac_jax": kfac_jax.__version__,
        "optax": optax.__version__,
        "minutes": (time.perf_counter() - start) / 60,
    }
    os.makedirs(out, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    with open(os.path.join(out, f"kfac_jax{suffix}.json"), "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
