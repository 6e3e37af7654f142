"""Many small fits at once: the Chinchilla objective and a damped Gauss-Newton method over a
batch of (start, points) problems, in numpy.

Why not scipy: `scipy.optimize.minimize` solves one problem per call, and a 5-parameter objective
over a few dozen points is almost all call overhead. Hoffmann et al.'s grid is 4,500 starts, plus
3 per bootstrap refit; one at a time through L-BFGS-B that took 82 s for 36 points (640k objective
calls), while the same starts as rows of one batch take about 3 s.

The objective is a Huber loss of log-space residuals,

    r_i = LSE(t_i) - log L_i,   t_i = (a - alpha log N_i, b - beta log D_i, e),
    grad r_i = J_i = M_i^T softmax(t_i),   M_i = dt_i/dtheta,

and the step is Gauss-Newton's for it with the Huber loss's own reweighting (each residual weighs
1 inside delta, delta/|r| outside: the quadratic that touches the Huber loss at r): solve
(sum_i w_i J_i J_i^T + lambda I) p = -grad. That matrix is never indefinite, unlike the exact
Hessian (whose h'(r) Hess r term is, and with which most of the 4,500 starts crawled for hundreds
of steps: the loss is nearly linear in residuals beyond delta). lambda (Levenberg's damping)
shrinks after a step that lowers the objective and grows after one that does not; bounded
coordinates are clipped to their bounds, and one held there by its gradient is left out of the
step. Every problem keeps only steps that lower its objective.
"""

from __future__ import annotations

import numpy as np

PARAMS = 5  # (a, b, e, alpha, beta)


def objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray,
              delta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each row of `theta` ([P, 5]) against its row of the points ([P, n], or [1, n] shared):
    the Huber loss of the residuals [P], its gradient [P, 5] and the reweighted Gauss-Newton matrix
    [P, 5, 5]."""
    a, b, e, alpha, beta = (theta[:, k : k + 1] for k in range(PARAMS))
    t0, t1 = a - alpha * log_n, b - beta * log_d
    t2 = np.broadcast_to(e, t0.shape)
    top = np.maximum(np.maximum(t0, t1), t2)
    w0, w1, w2 = np.exp(t0 - top), np.exp(t1 - top), np.exp(t2 - top)
    total = w0 + w1 + w2
    residual = top + np.log(total) - log_l
    w0, w1, w2 = w0 / total, w1 / total, w2 / total
    size = np.abs(residual)
    small = size <= delta
    value = np.where(small, 0.5 * residual**2, delta * (size - 0.5 * delta)).sum(axis=1)
    slope = np.where(small, residual, delta * np.sign(residual))
    jacobian = np.stack([w0, w1, w2, -w0 * log_n, -w1 * log_d], axis=-1)  # [P, n, 5]
    grad = (slope[:, None, :] @ jacobian)[:, 0, :]
    weight = np.where(small, 1.0, delta / np.maximum(size, delta))
    return value, grad, (jacobian * weight[:, :, None]).transpose(0, 2, 1) @ jacobian


def _solve(systems: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Each system's solution; NaN for one that is singular (the damping's floor is absolute, so a
    rank-deficient problem with large entries can leave one exactly singular), which rejects that
    row's step and raises its damping, instead of numpy's error for the whole batch."""
    with np.errstate(all="ignore"):
        try:
            return np.linalg.solve(systems, right[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            out = np.full_like(right, np.nan)
            for row in range(len(systems)):
                try:
                    out[row] = np.linalg.solve(systems[row], right[row])
                except np.linalg.LinAlgError:
                    pass
            return out


def minimise(start: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float,
             lower: np.ndarray, upper: np.ndarray, *, max_steps: int = 1000, ftol: float = 1e-15) -> tuple[np.ndarray, np.ndarray]:
    """Minimise each row's objective from its start within [lower, upper] (-inf/inf where free).
    Returns the optima [P, 5] and their values [P]. A problem stops when the step's own model
    promises, or an accepted step brings, a decrease of no more than `ftol` relative to the
    objective (L-BFGS-B's test without its floor of 1, which would stop a fit whose objective is
    1e-4 at 1e-11 relative), when no damping finds a lower point, or after `max_steps`."""
    theta = np.clip(np.array(start, dtype=np.float64), lower, upper)
    rows = theta.shape[0]
    shared = log_n.shape[0] == 1

    def evaluate(index: np.ndarray, at: np.ndarray):
        return objective(at, *((log_n, log_d, log_l) if shared else (log_n[index], log_d[index], log_l[index])), delta)

    value, grad, curvature = evaluate(np.arange(rows), theta)
    damping = np.full(rows, 1e-6)
    running = np.ones(rows, dtype=bool)
    identity = np.eye(PARAMS)
    for _ in range(max_steps):
        index = np.flatnonzero(running)
        if index.size == 0:
            break
        th, g, h, f = theta[index], grad[index], curvature[index], value[index]
        held = ((th <= lower) & (g > 0)) | ((th >= upper) & (g < 0))
        g = np.where(held, 0.0, g)
        h = np.where(~held[:, :, None] & ~held[:, None, :], h, 0.0)
        step = _solve(h + (damping[index, None, None] + held[:, :, None]) * identity, -g)
        usable = np.isfinite(step).all(axis=1)
        step = np.where(usable[:, None], step, 0.0)
        scale = ftol * np.abs(f)
        promised = -(step * g).sum(axis=1) - 0.5 * np.einsum("pk,pkl,pl->p", step, h, step)
        settled = usable & (promised <= scale)
        trial = np.clip(th + step, lower, upper)
        new_value, new_grad, new_curvature = evaluate(index, trial)
        better = usable & ~settled & (new_value < f)
        # (tiny only for a step close to Gauss-Newton's own: a heavily damped one is short anywhere)
        tiny = better & (damping[index] <= 1e-3) & (f - new_value <= scale)
        accepted = index[better]
        theta[accepted], value[accepted] = trial[better], new_value[better]
        grad[accepted], curvature[accepted] = new_grad[better], new_curvature[better]
        damping[accepted] = np.maximum(damping[accepted] / 3.0, 1e-12)
        rejected = index[~better & ~settled]
        damping[rejected] *= 4.0
        running[index[settled | tiny]] = False
        running[rejected[damping[rejected] > 1e12]] = False
    return theta, value
