"""The least-squares task of cohort's `kind = "linear"` (crates/tasks/src/lib.rs, `LinearTask`),
in numpy: shared true weights w ~ N(0, 1)^dim, client k's weights w + drift * N(0, 1), samples
x ~ N(0, 1)^dim, y = x.w_k + noise * N(0, 1); local training is `epochs` passes of shuffled
mini-batch SGD on the squared error (gradient 2 e x summed over the batch, step lr / batch).
The draws are numpy's, not cohort's generator: the same distribution and sizes, not the same
numbers."""

import numpy as np


def _truth(cfg):
    return np.random.default_rng([int(cfg["seed"]), 0]).normal(size=int(cfg["dim"]))


def client_data(cfg, k):
    """Client k's samples (float32, as cohort stores them)."""
    w = _truth(cfg)
    r = np.random.default_rng([int(cfg["seed"]), 1, int(k)])
    wk = w + float(cfg["client-drift"]) * r.normal(size=w.shape[0])
    n = int(cfg["samples"])
    x = r.normal(size=(n, w.shape[0])).astype(np.float32)
    y = (x.astype(np.float64) @ wk + float(cfg["noise"]) * r.normal(size=n)).astype(np.float32)
    return x, y


def test_data(cfg):
    w = _truth(cfg)
    r = np.random.default_rng([int(cfg["seed"]), 2])
    n = int(cfg["test-samples"])
    x = r.normal(size=(n, w.shape[0])).astype(np.float32)
    y = (x.astype(np.float64) @ w + float(cfg["noise"]) * r.normal(size=n)).astype(np.float32)
    return x, y


def local_sgd(cfg, x, y, global_w, rng):
    """cohort's LinearTask::train: returns the new weights (float32)."""
    p = global_w.astype(np.float64).copy()
    x64 = x.astype(np.float64)
    y64 = y.astype(np.float64)
    n = y.shape[0]
    order = np.arange(n)
    batch = max(int(cfg["batch"]), 1)
    lr = float(cfg["lr"])
    for _ in range(int(cfg["epochs"])):
        rng.shuffle(order)
        for s in range(0, n, batch):
            b = order[s : s + batch]
            xb = x64[b]
            e = xb @ p - y64[b]
            g = 2.0 * (xb.T @ e)
            p -= (lr / len(b)) * g
    return p.astype(np.float32)


def mse(x, y, w):
    e = x.astype(np.float64) @ w.astype(np.float64) - y.astype(np.float64)
    return float(np.mean(e * e))
