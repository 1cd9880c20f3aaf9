"""Dense reference computations the tests compare the library against."""

import numpy as np
import scipy.linalg


def numpy_patches(x, k, stride, dilation, padding):
    """Patches of an NHWC batch by explicit loops (row-major kh, kw, c)."""
    n, h, w, c = x.shape
    eff = [(k[i] - 1) * dilation[i] + 1 for i in range(2)]
    if padding == "same":
        out = [-(-s // st) for s, st in zip((h, w), stride)]
        pad = [
            max((o - 1) * st + e - s, 0)
            for o, st, e, s in zip(out, stride, eff, (h, w))
        ]
        x = np.pad(
            x,
            (
                (0, 0),
                (pad[0] // 2, pad[0] - pad[0] // 2),
                (pad[1] // 2, pad[1] - pad[1] // 2),
                (0, 0),
            ),
        )
    else:
        out = [(s - e) // st + 1 for s, e, st in zip((h, w), eff, stride)]
    rows = []
    for i in range(n):
        for p in range(out[0]):
            for q in range(out[1]):
                r0, c0 = p * stride[0], q * stride[1]
                patch = x[
                    i,
                    r0 : r0 + eff[0] : dilation[0],
                    c0 : c0 + eff[1] : dilation[1],
                    :,
                ]
                rows.append(patch.ravel())
    return np.array(rows), out[0] * out[1]


def with_ones(a):
    return np.concatenate([a, np.ones((len(a), 1))], axis=1)


def factors(a_rows, ds_rows, n):
    """A = mean over rows of a aᵀ; G = (1/n) Σ g gᵀ with g = n ds."""
    A = a_rows.T @ a_rows / len(a_rows)
    G = n * ds_rows.T @ ds_rows
    return A, G


def stacked_gradient(dW, db):
    return np.concatenate([dW.reshape(-1, dW.shape[-1]), db[None]], axis=0)


def dense_fisher(blocks):
    """Block-diagonal F̂ = ⊕ A_l ⊗ G_l over the layers, float64."""
    return scipy.linalg.block_diag(
        *[np.kron(A.astype("float64"), G.astype("float64")) for A, G in blocks]
    )


def factored_damped_fisher(blocks, damping):
    """⊕ (A + π√λ I) ⊗ (G + √λ/π I), π from the trace norms."""
    parts = []
    for A, G in blocks:
        A, G = A.astype("float64"), G.astype("float64")
        pi = np.sqrt((np.trace(A) / len(A)) / (np.trace(G) / len(G)))
        r = np.sqrt(damping)
        parts.append(
            np.kron(A + pi * r * np.eye(len(A)), G + r / pi * np.eye(len(G)))
        )
    return scipy.linalg.block_diag(*parts)


# KFAC settings under which one step is the plain damped solve.
EXACT = dict(
    momentum=0.0,
    kl_clip=None,
    stats_decay=0.0,
    cold_steps=0,
    inverse_update_freq=1,
)


def flat(mats):
    return np.concatenate([m.ravel() for m in mats]).astype("float64")


def float32_solve_atol(F_damped, expected):
    """Error to allow in a float32 K-FAC step against a float64 dense solve.

    The optimizer forms the factors, their eigendecompositions and four
    rotations in float32, from a float32 gradient; each stage rounds with a
    relative error of a few float32 eps. To first order, relative
    perturbations ρ of `F + λI` and of `∇` move the solution of
    `(F + λI) x = ∇` by at most `cond(F + λI) · ρ · ‖x‖₂`, and the 2-norm
    bounds every element. We allow ρ = 64 eps, the constant test_kfac_critic
    uses; the errors measured here, with and without oneDNN, stay below
    0.5 eps · cond · ‖x‖₂, while a wrong damping, factor or scaling is off by
    percents.
    """
    eps = np.finfo(np.float32).eps
    return 64 * eps * np.linalg.cond(F_damped) * np.linalg.norm(expected)
