use super::{Contribution, Strategy};
use crate::{ClientUpdate, FlError};

/// The server optimizer of adaptive federated optimization (Reddi et al. 2021).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerOpt {
    /// FedAdagrad.
    Adagrad,
    /// FedAdam.
    Adam,
    /// FedYogi.
    Yogi,
}

/// Runs a server optimizer on the inner strategy's aggregate, treated as a pseudo-gradient:
/// `m = b1 m + (1 - b1) D`, `v` per the optimizer, step `lr * m / (sqrt(v) + tau)`.
///
/// Its contributions are the inner strategy's, a [`Contribution::Weighted`] one marked
/// `via_server_optimizer`: the weights say how each update entered the pseudo-gradient `D`;
/// the step itself is not linear in the updates (it goes through the moments, which carry
/// earlier rounds).
#[derive(Debug, Clone)]
pub struct FedOpt<S> {
    inner: S,
    opt: ServerOpt,
    lr: f64,
    b1: f64,
    b2: f64,
    tau: f64,
    m: Vec<f64>,
    v: Vec<f64>,
}

impl<S: Strategy> FedOpt<S> {
    /// A server optimizer with the paper's defaults (b1 0.9, b2 0.99, tau 1e-3).
    pub fn new(inner: S, opt: ServerOpt, lr: f64) -> Self {
        Self {
            inner,
            opt,
            lr,
            b1: 0.9,
            b2: 0.99,
            tau: 1e-3,
            m: Vec::new(),
            v: Vec::new(),
        }
    }

    /// FedAdam.
    pub fn adam(inner: S, lr: f64) -> Self {
        Self::new(inner, ServerOpt::Adam, lr)
    }

    /// FedYogi.
    pub fn yogi(inner: S, lr: f64) -> Self {
        Self::new(inner, ServerOpt::Yogi, lr)
    }

    /// Sets the adaptivity `tau`.
    pub fn with_tau(mut self, tau: f64) -> Self {
        self.tau = tau;
        self
    }
}

impl<S: Strategy> Strategy for FedOpt<S> {
    fn aggregate(&mut self, updates: &[ClientUpdate]) -> Result<Vec<f32>, FlError> {
        let g = self.inner.aggregate(updates)?;
        if self.m.len() != g.len() {
            self.m = vec![0.0; g.len()];
            self.v = vec![self.tau * self.tau; g.len()];
        }
        Ok(g.iter()
            .enumerate()
            .map(|(i, &x)| {
                let x = f64::from(x);
                let x2 = x * x;
                self.m[i] = self.b1 * self.m[i] + (1.0 - self.b1) * x;
                self.v[i] = match self.opt {
                    ServerOpt::Adagrad => self.v[i] + x2,
                    ServerOpt::Adam => self.b2 * self.v[i] + (1.0 - self.b2) * x2,
                    ServerOpt::Yogi => self.v[i] - (1.0 - self.b2) * x2 * (self.v[i] - x2).signum(),
                };
                (self.lr * self.m[i] / (self.v[i].sqrt() + self.tau)) as f32
            })
            .collect())
    }
    fn name(&self) -> String {
        let o = match self.opt {
            ServerOpt::Adagrad => "fedadagrad",
            ServerOpt::Adam => "fedadam",
            ServerOpt::Yogi => "fedyogi",
        };
        format!("{o}(lr={})∘{}", self.lr, self.inner.name())
    }
    /// The first and second moments (empty before the first round), then the inner
    /// strategy's state.
    fn state(&self) -> Vec<Vec<f64>> {
        let mut out = vec![self.m.clone(), self.v.clone()];
        out.extend(self.inner.state());
        out
    }
    fn contributions(&self) -> Vec<Contribution> {
        self.inner
            .contributions()
            .into_iter()
            .map(|c| match c {
                Contribution::Weighted {
                    weight, clip_scale, ..
                } => Contribution::Weighted {
                    weight,
                    clip_scale,
                    via_server_optimizer: true,
                },
                other => other,
            })
            .collect()
    }
    fn restore(&mut self, state: &[Vec<f64>]) -> Result<(), FlError> {
        let [m, v, inner @ ..] = state else {
            return Err(FlError::InvalidConfig {
                what: "strategy state",
                reason: format!("{} needs its two moment vectors", self.name()),
            });
        };
        if m.len() != v.len() {
            return Err(FlError::InvalidConfig {
                what: "strategy state",
                reason: format!("moments of lengths {} and {}", m.len(), v.len()),
            });
        }
        self.inner.restore(inner)?;
        self.m.clone_from(m);
        self.v.clone_from(v);
        Ok(())
    }
}
