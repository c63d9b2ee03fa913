//! Random factories and job streams, simulated pass after pass: every decision is
//! replayed against the test's own model of the factory and checked (see
//! `common::replay` for the list of invariants).

mod common;

use common::{Scenario, Simulation, build_pool, build_tenant, queued_job, scenario};
use proptest::prelude::*;

fn simulation(s: &Scenario) -> (Simulation, Vec<(u64, aifactory_admission::QueuedJob, u64)>) {
    let pools: Vec<_> = s
        .pools
        .iter()
        .enumerate()
        .map(|(i, p)| build_pool(i, p))
        .collect();
    let tenants: Vec<_> = s
        .tenants
        .iter()
        .enumerate()
        .map(|(i, t)| build_tenant(i, t, &pools))
        .collect();
    let jobs = s
        .jobs
        .iter()
        .enumerate()
        .map(|(i, g)| (g.arrives, queued_job(i, g, &pools, &tenants), g.duration))
        .collect();
    (Simulation::new(pools, tenants, s.starving_after), jobs)
}

proptest! {
    /// Quota, capacity, power, gang, placement, residency, budget and preemption
    /// rules hold after every single decision, and GPUs are released exactly once.
    #[test]
    fn every_decision_keeps_the_factory_consistent(s in scenario(14)) {
        let (mut sim, jobs) = simulation(&s);
        for pass in 0..24 {
            for (arrives, job, duration) in &jobs {
                if *arrives == pass {
                    sim.submit(job.clone(), *duration);
                }
            }
            sim.pass().map_err(TestCaseError::fail)?;
        }
    }

    /// Once arrivals stop and running jobs finish, every job that could start in an
    /// empty factory (and whose tenant has no budget to run out of) starts.
    #[test]
    fn every_job_that_fits_an_empty_factory_starts_once_arrivals_stop(s in scenario(6)) {
        let (mut sim, jobs) = simulation(&s);
        let must_start: Vec<String> = jobs
            .iter()
            .filter(|(_, job, _)| {
                sim.world().fits_empty(job)
                    && sim
                        .world()
                        .tenant(&job.tenant)
                        .is_some_and(|t| t.budget_gpu_hours_left.is_none())
            })
            .map(|(_, job, _)| job.id.clone())
            .collect();
        for pass in 0..200 {
            for (arrives, job, duration) in &jobs {
                if *arrives == pass {
                    sim.submit(job.clone(), *duration);
                }
            }
            sim.pass().map_err(TestCaseError::fail)?;
            if pass > 6 && must_start.iter().all(|id| sim.first_admitted.contains_key(id)) {
                break;
            }
        }
        for id in &must_start {
            prop_assert!(
                sim.first_admitted.contains_key(id),
                "{id} fits an empty factory but never started; still waiting: {:?}",
                sim.waiting.iter().map(|w| &w.job.id).collect::<Vec<_>>()
            );
        }
    }
}
