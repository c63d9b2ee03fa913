//! Where GPU-hours are counted. The accounting period is the calendar month
//! (UTC). A tenant's usage in a period is its live work (jobs' `periodUsage`,
//! running sessions) plus the usage ledger: GPU-hours and energy of work that no
//! longer exists, kept in the Tenant's status (`status.ledger`) for the period, so
//! deleting a finished job — or a session ending — does not hand its hours back
//! to the budget.
//!
//! Settlement is exactly once: each settlement carries a key (the object's uid, a
//! session's start) that the ledger remembers, so a settlement retried after its
//! finalizer removal failed adds nothing. Written under its own field manager,
//! with the resourceVersion it read (two settlements at once: the loser reads
//! again and adds again).
use crate::error::{Error, Result};
use aifactory_api::{Tenant, UsageLedger};
use kube::Client;
use kube::api::Api;

/// Field manager of `status.ledger`.
pub const LEDGER_MANAGER: &str = "aifactory-ledger";
/// Conflicting settlements retried before giving up (the caller retries later).
const ATTEMPTS: usize = 8;

/// The accounting period containing `t`: the calendar month, UTC (`2026-01`).
pub fn period(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m").to_string()
}

/// When the period containing `t` began: the first of its month, 00:00 UTC.
pub fn period_start(t: jiff::Timestamp) -> jiff::Timestamp {
    t.to_zoned(jiff::tz::TimeZone::UTC)
        .first_of_month()
        .and_then(|d| d.start_of_day())
        .map(|d| d.timestamp())
        .unwrap_or(t)
}

/// Six decimals: sums of many small runs stay readable and stable. Never -0: the
/// sum of no usage at all is -0.0 in Rust, which a status and a condition message
/// would show as `-0` ("-0.0 of 100 GPU-hours used").
pub fn round(x: f64) -> f64 {
    (x * 1e6).round() / 1e6 + 0.0
}

/// Adds `gpu_hours` and `energy_kwh` of `pool`, used up to `at`, to the ledger of
/// tenant `name`, once per `key`: a key the ledger already holds adds nothing.
/// Nothing to add, or no such tenant (gone with its usage): done.
pub async fn settle(
    client: &Client,
    name: &str,
    pool: &str,
    (gpu_hours, energy_kwh): (f64, f64),
    at: jiff::Timestamp,
    key: &str,
) -> Result<()> {
    if gpu_hours <= 0.0 && energy_kwh <= 0.0 {
        return Ok(());
    }
    let api: Api<Tenant> = Api::all(client.clone());
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let Some(tenant) = api.get_opt(name).await? else {
            return Ok(());
        };
        let Some(ledger) = UsageLedger::add(
            tenant.status.as_ref().and_then(|s| s.ledger.as_ref()),
            &period(at),
            pool,
            (gpu_hours, energy_kwh),
            key,
        ) else {
            tracing::info!(tenant = name, key, "usage already settled in the ledger");
            return Ok(());
        };
        match crate::controllers::apply_status_at_version(
            LEDGER_MANAGER,
            &api,
            &tenant,
            &serde_json::json!({"ledger": ledger}),
        )
        .await
        {
            Ok(_) => {
                tracing::info!(
                    tenant = name,
                    pool,
                    gpu_hours,
                    energy_kwh,
                    key,
                    "usage settled in the ledger"
                );
                return Ok(());
            }
            Err(kube::Error::Api(s)) if s.code == 409 => last = Some(kube::Error::Api(s)),
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Kube(last.expect("only conflicts loop")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_usage_rounds_to_zero_not_minus_zero() {
        let none: f64 = std::iter::empty::<f64>().sum();
        assert!(round(none).is_sign_positive());
        assert_eq!(format!("{:.1}", round(none)), "0.0");
        assert_eq!(serde_json::json!(round(-0.0)).to_string(), "0.0");
        assert_eq!(round(1.23456789), 1.234568);
    }

    #[test]
    fn a_period_is_a_calendar_month_in_utc_starting_on_the_first_at_midnight() {
        let t: jiff::Timestamp = "2026-11-30T23:59:59Z".parse().unwrap();
        assert_eq!(period(t), "2026-11");
        assert_eq!(period_start(t).to_string(), "2026-11-01T00:00:00Z");
        let next: jiff::Timestamp = "2026-12-01T00:00:00Z".parse().unwrap();
        assert_eq!(period(next), "2026-12");
        assert_eq!(period_start(next), next);
    }
}
