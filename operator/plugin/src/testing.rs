//! Fixtures for the render tests: objects as the operator would have written them.
use aifactory_api::{TrainingJob, TrainingJobPhase, TrainingJobSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// A training job of `nodes` × `gpus` in `pool`, created at 2025-01-07T10:00:00Z.
pub fn job(ns: &str, name: &str, pool: &str, nodes: i32, gpus: i32) -> TrainingJob {
    let spec = spec(pool, nodes, gpus);
    let mut tj = TrainingJob::new(name, spec);
    tj.metadata.namespace = Some(ns.into());
    tj.metadata.creation_timestamp = Some(time("2025-01-07T10:00:00Z"));
    tj
}

fn spec(pool: &str, nodes: i32, gpus: i32) -> TrainingJobSpec {
    TrainingJobSpec {
        pool: pool.into(),
        nodes,
        gpus_per_node: gpus,
        image: "trainer:1".into(),
        command: vec![],
        args: vec![],
        env: vec![],
        resources: None,
        datasets: vec![],
        checkpoint: None,
        priority: None,
        max_runtime: None,
        max_restarts: 0,
        suspend: false,
        topology: None,
    }
}

pub fn time(t: &str) -> Time {
    Time(t.parse().unwrap())
}

/// Status setters for fixtures.
pub trait JobFixture {
    fn phase(self, phase: TrainingJobPhase) -> Self;
    fn queued(self, position: i32, reason: &str, since: &str) -> Self;
    fn created(self, at: &str) -> Self;
}

impl JobFixture for TrainingJob {
    fn phase(mut self, phase: TrainingJobPhase) -> Self {
        self.status.get_or_insert_default().phase = Some(phase);
        self
    }

    fn queued(mut self, position: i32, reason: &str, since: &str) -> Self {
        let s = self.status.get_or_insert_default();
        s.phase = Some(TrainingJobPhase::Queued);
        s.queue_position = Some(position);
        s.pending_reason = Some(reason.into());
        s.queued_at = Some(time(since));
        self
    }

    fn created(mut self, at: &str) -> Self {
        self.metadata.creation_timestamp = Some(time(at));
        self
    }
}
