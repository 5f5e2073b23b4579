//! Colluding bad agents: a ring that repeats one flipped sample and spares its members,
//! against as many bad agents acting alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use cohort_sim::driver::MechanismKind;
use cohort_sim::{AgentKind, AgentSpec, Dataset, Engine, RunReport, SimConfig, run};

fn imdb(train: usize) -> Dataset {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/imdb");
    Dataset::load(&dir, 500, Some(train)).unwrap()
}

fn with_bad(mechanism: MechanismKind, colluding: bool, engine: Engine) -> SimConfig {
    let mut cfg = SimConfig::reference(1);
    cfg.mechanism = mechanism;
    cfg.engine = engine;
    cfg.agents = vec![AgentSpec::good("good")];
    for i in 0..3 {
        cfg.agents.push(if colluding {
            AgentSpec::colluder(format!("bad{i}"), 0)
        } else {
            AgentSpec::bad(format!("bad{i}"))
        });
    }
    cfg
}

fn bad_refunds(r: &RunReport) -> (u64, u64) {
    r.agents
        .iter()
        .filter(|a| a.kind == AgentKind::Bad)
        .fold((0, 0), |(f, a), x| (f + x.refunds, a + x.accepted))
}

#[test]
fn a_ring_farms_points_by_repeating_one_flipped_sample() {
    let data = imdb(600);
    let alone = run(
        &with_bad(MechanismKind::Points, false, Engine::Native),
        &data,
    )
    .unwrap();
    let ring = run(&with_bad(MechanismKind::Points, true, Engine::Evm), &data).unwrap();
    let (pa, ca) = bad_refunds(&alone);
    let (pr, cr) = bad_refunds(&ring);
    // The ring's repeated sample is learnt with its label: (nearly) every one earns a point,
    // more often than the flipped labels of agents acting alone.
    assert!(pr as f64 / cr as f64 > 0.98, "ring {pr}/{cr}");
    assert!(
        (pr as f64 / cr as f64) > (pa as f64 / ca as f64),
        "ring {pr}/{cr}, alone {pa}/{ca}"
    );
    assert_eq!(
        ring.bad_final_balance_pct.unwrap(),
        100.0 * pr as f64 / cr as f64
    );
    // The ring touched one review only; the rest came from the good agent.
    let good = &ring.agents[0];
    assert_eq!(ring.samples_added as u64, good.accepted + 1);
}

#[test]
fn in_drt_the_ring_keeps_more_than_bad_agents_alone() {
    let data = imdb(600);
    let alone = run(&with_bad(MechanismKind::Drt, false, Engine::Native), &data).unwrap();
    let ring = run(&with_bad(MechanismKind::Drt, true, Engine::Evm), &data).unwrap();
    let (ra, _) = bad_refunds(&alone);
    let (rr, _) = bad_refunds(&ring);
    assert!(rr > ra, "refunds: ring {rr}, alone {ra}");
    assert!(
        ring.bad_final_balance_pct.unwrap() > alone.bad_final_balance_pct.unwrap(),
        "ring {:?} alone {:?}",
        ring.bad_final_balance_pct,
        alone.bad_final_balance_pct
    );
    // The same configuration replays and agrees between engines.
    let mut native = with_bad(MechanismKind::Drt, true, Engine::Native);
    native.engine = Engine::Native;
    let n = run(&native, &data).unwrap();
    assert_eq!(n.agents, ring.agents);
}
