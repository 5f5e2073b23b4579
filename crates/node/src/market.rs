//! A run's training recipe: what a data market listing allows (docs/economics.md, "The data
//! market"; `contracts/src/CohortRuns.sol`).
//!
//! The recipe is the SHA-256 of the canonical JSON (keys sorted, no spaces) of cohort's version
//! and the commit it was built from, the run's config as the run reads it (its defaults filled
//! in; its `[market]` and `[governance]` sections and `coordinator.rounds` left out: the terms
//! of the data, who decides and how many rounds there are is not how a round trains on it) and
//! the adapter targets (`task.lora_targets`, empty when the task trains no adapter). Builds are
//! not byte-reproducible across machines, so the binary's own hash is not part of it: two
//! parties on the same commit with the same config compute the same recipe, and a client on
//! another build computes another one and refuses the round (deny by default).

use alloy_primitives::B256;
use cohort_fl::RunConfig;

/// cohort's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit this build was made from (build.rs; "unknown" outside a git checkout).
pub const COMMIT: &str = env!("COHORT_COMMIT");

/// `cfg`'s recipe and the JSON it is the hash of.
pub fn recipe_of(cfg: &RunConfig) -> (B256, serde_json::Value) {
    let mut config = serde_json::to_value(cfg).unwrap_or(serde_json::Value::Null);
    if let Some(m) = config.as_object_mut() {
        m.remove("market");
        m.remove("governance");
        // How many rounds a run has is not how a round trains: a run continued for more
        // rounds (`cohort run --resume --set coordinator.rounds=N`) keeps its recipe.
        if let Some(c) = m.get_mut("coordinator").and_then(|c| c.as_object_mut()) {
            c.remove("rounds");
        }
    }
    let targets = config
        .get("task")
        .and_then(|t| t.get("lora_targets"))
        .cloned()
        .unwrap_or_else(|| serde_json::json!([]));
    let parts = serde_json::json!({
        "cohort": VERSION,
        "commit": COMMIT,
        "config": config,
        "adapter_targets": targets,
    });
    let bytes = serde_json::to_vec(&parts).unwrap_or_default();
    (B256::from(cohort_core::sha256(&bytes)), parts)
}

#[cfg(test)]
mod tests {
    use super::recipe_of;

    fn cfg(text: &str) -> cohort_fl::RunConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn the_recipe_follows_the_training_and_not_the_market_terms() {
        let base = "seed = 1\nclients = 2\nvalidators = 1\n";
        let (a, parts) = recipe_of(&cfg(base));
        assert_eq!(recipe_of(&cfg(base)).0, a, "deterministic");
        assert_eq!(parts["cohort"], super::VERSION);
        // Another seed trains differently: another recipe.
        assert_ne!(
            recipe_of(&cfg("seed = 2\nclients = 2\nvalidators = 1\n")).0,
            a
        );
        // Nor is the number of rounds.
        let more = "seed = 1\nclients = 2\nvalidators = 1\n[coordinator]\nrounds = 9\n";
        assert_eq!(recipe_of(&cfg(more)).0, a);
        // The market's terms are not part of it.
        let listed =
            format!("{base}[market]\nfund = 5\n[[market.listing]]\nclients = [0]\nprice = 3\n");
        assert_eq!(recipe_of(&cfg(&listed)).0, a);
    }
}
