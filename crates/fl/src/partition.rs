//! Splitting data among clients the way federated benchmarks do.
//!
//! - [`shakespeare_roles`]: Tiny Shakespeare split by speaking role, one client per role with
//!   enough lines — the natural non-IID split of LEAF and of the FedAvg paper.
//! - [`dirichlet_label_skew`]: label skew with a Dirichlet(alpha) share of every class per
//!   client (Hsu et al. 2019); small alpha gives each client few classes.
//! - [`holdout`]: indices set apart for validators and for the final test, never given to
//!   clients.

use std::collections::BTreeMap;

use cohort_core::Rng;
use serde::Serialize;

use crate::FlError;

/// The text one role speaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleText {
    /// Speaker name as written (e.g. `First Citizen`).
    pub role: String,
    /// Every line the role speaks, in order, newline-terminated.
    pub text: String,
    /// Number of lines.
    pub lines: usize,
}

/// Splits a play in the Tiny Shakespeare layout (speaker name alone on a line ending in `:`
/// after a blank line, then the speech) by role, keeping roles with at least `min_lines`
/// lines, most lines first (ties by name).
pub fn shakespeare_roles(text: &str, min_lines: usize) -> Vec<RoleText> {
    let mut roles: BTreeMap<&str, (String, usize)> = BTreeMap::new();
    let mut speaker: Option<&str> = None;
    let mut after_blank = true;
    for line in text.lines() {
        let t = line.trim_end();
        if t.is_empty() {
            after_blank = true;
            continue;
        }
        if after_blank && t.ends_with(':') && t.len() > 1 {
            speaker = Some(&t[..t.len() - 1]);
        } else if let Some(s) = speaker {
            let e = roles.entry(s).or_default();
            e.0.push_str(t);
            e.0.push('\n');
            e.1 += 1;
        }
        after_blank = false;
    }
    let mut out: Vec<RoleText> = roles
        .into_iter()
        .filter(|(_, (_, n))| *n >= min_lines)
        .map(|(r, (text, lines))| RoleText {
            role: r.to_owned(),
            text,
            lines,
        })
        .collect();
    out.sort_by(|a, b| b.lines.cmp(&a.lines).then_with(|| a.role.cmp(&b.role)));
    out
}

/// Assigns example indices to `clients` so that each class is split by a Dirichlet(alpha)
/// draw. Every index goes to exactly one client; the result is deterministic in `seed`.
pub fn dirichlet_label_skew(
    labels: &[u32],
    clients: usize,
    alpha: f64,
    seed: u64,
) -> Result<Vec<Vec<usize>>, FlError> {
    if clients == 0 {
        return Err(FlError::InvalidConfig {
            what: "clients",
            reason: "must be at least 1".into(),
        });
    }
    if !(alpha.is_finite() && alpha > 0.0) {
        return Err(FlError::InvalidConfig {
            what: "dirichlet alpha",
            reason: format!("{alpha} is not a positive number"),
        });
    }
    let mut by_class: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, &l) in labels.iter().enumerate() {
        by_class.entry(l).or_default().push(i);
    }
    let mut rng = Rng::derive(seed, "dirichlet-label-skew");
    let mut parts = vec![Vec::new(); clients];
    for idx in by_class.values_mut() {
        rng.shuffle(idx);
        let p = rng.dirichlet(alpha, clients);
        let n = idx.len();
        let mut start = 0;
        let mut acc = 0.0;
        for (c, share) in p.iter().enumerate() {
            acc += share;
            let end = if c + 1 == clients {
                n
            } else {
                ((acc * n as f64).round() as usize).min(n)
            };
            parts[c].extend_from_slice(&idx[start..end.max(start)]);
            start = end.max(start);
        }
    }
    for p in &mut parts {
        p.sort_unstable();
    }
    Ok(parts)
}

/// Splits `0..n` into `(rest, held_out)` with `fraction` of the indices held out, chosen by
/// `seed` and `label` (use different labels for the validators' and the test holdout).
pub fn holdout(n: usize, fraction: f64, seed: u64, label: &str) -> (Vec<usize>, Vec<usize>) {
    let mut idx: Vec<usize> = (0..n).collect();
    Rng::derive(seed, label).shuffle(&mut idx);
    let k = ((n as f64) * fraction.clamp(0.0, 1.0)).round() as usize;
    let mut held = idx[..k].to_vec();
    let mut rest = idx[k..].to_vec();
    held.sort_unstable();
    rest.sort_unstable();
    (rest, held)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAY: &str = "First Citizen:\nBefore we proceed any further, hear me speak.\n\n\
All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n\
Is't a verdict:\n\nAll:\nResolved. resolved.\n";

    #[test]
    fn roles_are_split_by_speaker() {
        let r = shakespeare_roles(PLAY, 1);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].role, "First Citizen");
        assert_eq!(
            r[0].lines, 3,
            "a line ending in ':' inside a speech is speech"
        );
        assert!(r[0].text.contains("Is't a verdict:"));
        assert_eq!(r[1].role, "All");
        assert_eq!(shakespeare_roles(PLAY, 3).len(), 1);
    }

    #[test]
    fn dirichlet_covers_every_index_once_and_skews() {
        let labels: Vec<u32> = (0..2_000).map(|i| (i % 2) as u32).collect();
        let parts = dirichlet_label_skew(&labels, 10, 0.1, 7).unwrap();
        let mut all: Vec<usize> = parts.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..2_000).collect::<Vec<_>>());
        // alpha = 0.1: most clients are dominated by one class.
        let skewed = parts
            .iter()
            .filter(|p| !p.is_empty())
            .filter(|p| {
                let pos = p.iter().filter(|&&i| labels[i] == 1).count();
                let frac = pos as f64 / p.len() as f64;
                !(0.2..=0.8).contains(&frac)
            })
            .count();
        assert!(skewed >= 5, "only {skewed} skewed clients");
        assert_eq!(parts, dirichlet_label_skew(&labels, 10, 0.1, 7).unwrap());
        assert_ne!(parts, dirichlet_label_skew(&labels, 10, 0.1, 8).unwrap());
        assert!(dirichlet_label_skew(&labels, 0, 0.1, 7).is_err());
        assert!(dirichlet_label_skew(&labels, 3, 0.0, 7).is_err());
    }

    #[test]
    fn holdout_is_disjoint() {
        let (rest, held) = holdout(100, 0.2, 1, "validators");
        assert_eq!(held.len(), 20);
        assert_eq!(rest.len(), 80);
        assert!(held.iter().all(|i| !rest.contains(i)));
        assert_ne!(held, holdout(100, 0.2, 1, "test").1);
    }
}
