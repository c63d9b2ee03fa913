//! Leader election through a `coordination.k8s.io/v1` Lease, so that of several
//! replicas exactly one writes. Written here rather than taken from a crate because
//! the election crates on crates.io pin older kube versions; the protocol is the
//! one client-go uses: optimistic-concurrency updates of one Lease object.
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use std::time::Duration;

/// Settings of an election.
#[derive(Clone, Debug)]
pub struct Election {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (pod name).
    pub identity: String,
    /// How long a lease holds without renewal.
    pub lease_duration: Duration,
    /// How often the leader renews.
    pub renew_every: Duration,
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

impl Election {
    fn api(&self, client: &Client) -> Api<Lease> {
        Api::namespaced(client.clone(), &self.namespace)
    }

    /// Whether the lease is free for us: unheld, ours, or expired.
    fn can_take(&self, lease: &Lease) -> bool {
        let Some(spec) = &lease.spec else { return true };
        match spec.holder_identity.as_deref() {
            None | Some("") => true,
            Some(holder) if holder == self.identity => true,
            Some(_) => {
                let duration = spec.lease_duration_seconds.unwrap_or(15) as i64;
                match &spec.renew_time {
                    Some(MicroTime(renewed)) => now().as_second() > renewed.as_second() + duration,
                    None => true,
                }
            }
        }
    }

    fn spec(&self, previous: Option<&LeaseSpec>) -> LeaseSpec {
        let taking_over =
            previous.and_then(|s| s.holder_identity.as_deref()) != Some(self.identity.as_str());
        let transitions = previous.and_then(|s| s.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.lease_duration.as_secs() as i32),
            acquire_time: if taking_over {
                Some(MicroTime(now()))
            } else {
                previous.and_then(|s| s.acquire_time.clone())
            },
            renew_time: Some(MicroTime(now())),
            lease_transitions: Some(if taking_over && previous.is_some() {
                transitions + 1
            } else {
                transitions
            }),
            ..Default::default()
        }
    }

    /// One attempt to take or renew the lease. `Ok(true)`: we lead.
    pub async fn try_acquire_or_renew(&self, client: &Client) -> kube::Result<bool> {
        let api = self.api(client);
        match api.get_opt(&self.name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(self.spec(None)),
                };
                match api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Some(mut lease) => {
                if !self.can_take(&lease) {
                    return Ok(false);
                }
                lease.spec = Some(self.spec(lease.spec.as_ref()));
                // replace carries the resourceVersion we read: a concurrent writer
                // makes this fail with 409 instead of both believing they lead.
                match api
                    .replace(&lease.name_any(), &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Waits until this replica leads.
    pub async fn acquire(&self, client: &Client) {
        let mut logged = false;
        loop {
            match self.try_acquire_or_renew(client).await {
                Ok(true) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "became leader");
                    return;
                }
                Ok(false) if !logged => {
                    tracing::info!(lease = %self.name, "another replica leads; standing by");
                    logged = true;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election request failed"),
            }
            tokio::time::sleep(self.renew_every).await;
        }
    }

    /// Renews the lease until renewal fails for longer than the lease lasts;
    /// returns then (leadership is lost and the caller must stop writing).
    pub async fn hold(&self, client: &Client) {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.renew_every).await;
            match self.try_acquire_or_renew(client).await {
                Ok(true) => last_renewed = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::error!(lease = %self.name, "another replica took the lease");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "renewing the lease failed"),
            }
            if last_renewed.elapsed() > self.lease_duration {
                tracing::error!(lease = %self.name, "could not renew the lease in time");
                return;
            }
        }
    }

    /// Gives the lease up on shutdown so a standby takes over at once.
    pub async fn release(&self, client: &Client) {
        let api = self.api(client);
        if let Ok(Some(mut lease)) = api.get_opt(&self.name).await
            && lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(self.identity.as_str())
        {
            if let Some(spec) = lease.spec.as_mut() {
                spec.holder_identity = None;
            }
            let _ = api
                .replace(&self.name, &PostParams::default(), &lease)
                .await;
        }
    }
}
