//! The usage ledger: GPU-hours and energy of work that no longer exists, kept in
//! the Tenant's status (`status.ledger`) for the accounting period, so deleting a
//! finished job — or a session ending — does not hand its hours back to the
//! budget. Usage is the live work (jobs and running sessions) plus the ledger.
//!
//! Written under its own field manager, with the resourceVersion it read (two
//! settlements at once: the loser reads again and adds again).
use crate::controllers::trainingjob::snapshot::period;
use crate::error::{Error, Result};
use aifactory_api::{Tenant, UsageLedger};
use kube::Client;
use kube::api::Api;

/// Field manager of `status.ledger`.
pub const LEDGER_MANAGER: &str = "aifactory-ledger";
/// Conflicting settlements retried before giving up (the caller retries later).
const ATTEMPTS: usize = 8;

/// Adds `gpu_hours` and `energy_kwh` of `pool`, used up to `at`, to the ledger of
/// tenant `name`. Nothing to add, or no such tenant (gone with its usage): done.
pub async fn settle(
    client: &Client,
    name: &str,
    pool: &str,
    gpu_hours: f64,
    energy_kwh: f64,
    at: jiff::Timestamp,
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
        let ledger = UsageLedger::add(
            tenant.status.as_ref().and_then(|s| s.ledger.as_ref()),
            &period(at),
            pool,
            gpu_hours,
            energy_kwh,
        );
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
