//! No starvation: a large job keeps being overtaken by smaller ones that fit
//! (backfill), at the same priority and with a worse fair share than all of them,
//! while a stream of smaller jobs never stops. Once it has waited `starving_after`
//! passes its pool holds what it needs, and it must start within a bounded number
//! of passes.

mod common;

use aifactory_admission::{QueuedJob, Quota, Tenant};
use common::{JobGen, PoolGen, Simulation, build_pool, job_gen, pool_gen};
use proptest::prelude::*;

/// Longest run of a stream job, in passes.
const LONGEST: u64 = 4;

#[derive(Debug, Clone)]
struct Load {
    pool: PoolGen,
    /// The big job: nodes, GPUs per node, packed in a rack?
    big: (u32, u32, bool),
    /// Guarantees for the big job's tenant and the others (else nobody has one).
    guaranteed: Option<Vec<u32>>,
    stream: Vec<JobGen>,
    starving_after: u64,
}

fn load() -> impl Strategy<Value = Load> {
    (
        pool_gen(),
        (1u32..=3, 2u32..=8, any::<bool>()),
        prop_oneof![
            Just(None),
            prop::collection::vec(0u32..=16, 3).prop_map(Some)
        ],
        prop::collection::vec(job_gen(1), 60..=90),
        1u64..=3,
    )
        .prop_map(|(pool, big, guaranteed, stream, starving_after)| Load {
            pool,
            big,
            guaranteed,
            stream,
            starving_after,
        })
}

proptest! {
    // About a third of the generated big jobs cannot fit their pool at all.
    #![proptest_config(ProptestConfig {
        max_global_rejects: 100_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_big_job_starts_despite_an_endless_stream_of_small_ones(load in load()) {
        let mut pool = build_pool(0, &load.pool);
        pool.power_cap_kilowatts = None;
        let (nodes, gpus_per_node, packed) = load.big;
        let big = QueuedJob::new("big/llm", "big", "p0")
            .nodes(nodes)
            .gpus_per_node(gpus_per_node)
            .created(0);
        let big = if packed { big.pack("rack") } else { big };

        // The big job's tenant has used the most, so fair share always puts it last;
        // it either has its job's worth guaranteed, or nobody has any guarantee.
        let quota = |g: u32| Quota::new("p0", g);
        let (big_quota, others): (u32, Vec<u32>) = match &load.guaranteed {
            Some(g) => (big.gpus() as u32, g.clone()),
            None => (0, vec![0, 0, 0]),
        };
        let mut tenants = vec![Tenant::new("big").quota(quota(big_quota)).usage(1e6)];
        for (i, g) in others.iter().enumerate() {
            tenants.push(Tenant::new(format!("t{i}")).quota(quota(*g)));
        }
        let mut sim = Simulation::new(vec![pool], tenants, load.starving_after);
        prop_assume!(sim.world().fits_empty(&big));

        sim.submit(big, 1);
        // Enough small jobs arrive every pass to keep the pool busy, for ever
        // (cycling the stream).
        let per_pass = 2 + sim.pools[0].nodes.len() as u64 / 2;
        let bound = load.starving_after + 3 * LONGEST + 2;
        let mut next = 0;
        for pass in 0..=bound {
            for _ in 0..per_pass {
                let g = &load.stream[next % load.stream.len()];
                next += 1;
                let tenant = format!("t{}", g.tenant % 3);
                let job = QueuedJob::new(format!("{tenant}/s{next}"), &tenant, "p0")
                    .nodes(g.nodes.min(2))
                    .gpus_per_node(g.gpus_per_node)
                    .created(next as u64)
                    .queued_since(pass);
                let job = match g.pack {
                    Some(level) => job.pack(level),
                    None => job,
                };
                sim.submit(job, g.duration.min(LONGEST));
            }
            sim.pass().map_err(TestCaseError::fail)?;
            if sim.first_admitted.contains_key("big/llm") {
                break;
            }
        }
        prop_assert!(
            sim.first_admitted.contains_key("big/llm"),
            "big/llm waited more than {bound} passes"
        );
    }
}
