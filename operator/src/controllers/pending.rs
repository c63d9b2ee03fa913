//! When a waiting job's status is worth a write. Each admission moves every job
//! behind it up the queue and changes the live figures of their reasons ("3 GPUs
//! free", "2 jobs ahead"); rewriting all of them at every pass costs O(queue)
//! writes per admission, and the API server is what the whole factory shares. So
//! a queued status is written only when something its tenant would act on
//! changes: the phase, the reason's code (what blocks it), the reason's words
//! apart from its figures, or the position by an order of magnitude.
use aifactory_api::TrainingJobStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// Whether `new` says something `current` does not, for a job that waits.
pub fn worth_writing(current: Option<&TrainingJobStatus>, new: &TrainingJobStatus) -> bool {
    let Some(current) = current else {
        return true;
    };
    let code = |s: &TrainingJobStatus| -> Option<(String, String)> {
        s.conditions
            .iter()
            .find(|c: &&Condition| c.type_ == super::trainingjob::build::CONDITION_ADMITTED)
            .map(|c| (c.status.clone(), c.reason.clone()))
    };
    current.phase != new.phase
        || current.observed_generation != new.observed_generation
        || current.queued_at != new.queued_at
        || code(current) != code(new)
        || current.pending_reason.as_deref().map(words) != new.pending_reason.as_deref().map(words)
        || current.queue_position.map(band) != new.queue_position.map(band)
        || current.conditions.len() != new.conditions.len()
}

/// A reason without its figures: "3 GPUs free, 2 jobs ahead" → "# GPUs free, # jobs ahead".
fn words(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len());
    let mut in_number = false;
    for c in reason.chars() {
        let digit = c.is_ascii_digit() || (in_number && c == '.');
        if digit && !in_number {
            out.push('#');
        } else if !digit {
            out.push(c);
        }
        in_number = digit;
    }
    out
}

/// The order of magnitude of a queue position: next in line (0), 1–9, 10–99, …
fn band(position: i32) -> u32 {
    match position {
        ..=0 => 0,
        p => p.ilog10() + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aifactory_api::TrainingJobPhase;

    fn queued(position: i32, reason: &str, code: &str) -> TrainingJobStatus {
        TrainingJobStatus {
            phase: Some(TrainingJobPhase::Queued),
            queue_position: Some(position),
            pending_reason: Some(reason.into()),
            conditions: vec![Condition {
                type_: "Admitted".into(),
                status: "False".into(),
                reason: code.into(),
                message: reason.into(),
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    jiff::Timestamp::UNIX_EPOCH,
                ),
                observed_generation: None,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn live_figures_and_small_moves_in_the_queue_are_not_worth_a_write() {
        let now = queued(
            57,
            "capacity: needs 8 GPUs, 3 free in pool h100, 57 jobs ahead",
            "Capacity",
        );
        let later = queued(
            12,
            "capacity: needs 8 GPUs, 5 free in pool h100, 12 jobs ahead",
            "Capacity",
        );
        assert!(!worth_writing(Some(&now), &later));
        assert!(!worth_writing(Some(&now), &now.clone()));
    }

    #[test]
    fn a_new_code_new_words_a_big_move_or_a_first_status_are() {
        let now = queued(
            57,
            "capacity: needs 8 GPUs, 3 free, 57 jobs ahead",
            "Capacity",
        );
        assert!(worth_writing(None, &now));
        assert!(worth_writing(
            Some(&now),
            &queued(
                5,
                "capacity: needs 8 GPUs, 3 free, 5 jobs ahead",
                "Capacity"
            )
        ));
        assert!(worth_writing(
            Some(&now),
            &queued(57, "quota: would use 24 of 16 GPUs", "Quota")
        ));
        assert!(worth_writing(
            Some(&now),
            &queued(57, "power cap: pool over its limit", "Capacity")
        ));
        let mut preempted = now.clone();
        preempted.phase = Some(TrainingJobPhase::Preempted);
        assert!(worth_writing(Some(&now), &preempted));
        assert_eq!(words("a 1.5 b 20"), "a # b #");
        assert_eq!(
            (band(0), band(1), band(9), band(10), band(999)),
            (0, 1, 1, 2, 3)
        );
    }
}
