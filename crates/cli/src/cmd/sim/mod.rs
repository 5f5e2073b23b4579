//! `cohort sim ...`: the collaborative-learning economics simulator.

mod args;
mod baseline;
mod drt;
mod sweep;

use std::process::ExitCode;

use clap::Subcommand;
use cohort_sim::driver::MechanismKind;

#[derive(Debug, Subcommand)]
pub enum SimCmd {
    /// One Deposit-Refund-Take run on IMDB, executing the contracts in revm.
    Drt(drt::Args),
    /// One Points run (no money: a point per contribution the model later agrees with).
    Points(drt::Args),
    /// One prediction-market run (bounty, test set committed by hashes and revealed at the
    /// end, rewards by the accuracy change each contribution causes).
    Market(drt::Args),
    /// A grid of Deposit-Refund-Take runs (num_words × train size × cost weight × seeds) on
    /// all cores, summarised across seeds.
    Sweep(sweep::Args),
    /// The perceptron trained on the whole training set: test accuracy per num_words.
    Baseline(baseline::Args),
}

impl SimCmd {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        match self {
            Self::Drt(a) => a.execute(MechanismKind::Drt),
            Self::Points(a) => a.execute(MechanismKind::Points),
            Self::Market(a) => a.execute(MechanismKind::Market),
            Self::Sweep(a) => a.execute(),
            Self::Baseline(a) => a.execute(),
        }
    }
}
