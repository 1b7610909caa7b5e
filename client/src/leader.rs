//! Leader election on a coordination.k8s.io/v1 Lease, client-go's `leaderelection` algorithm
//! (kube-rs 5 ships none): a candidate takes the Lease when it is free or its holder has not
//! changed it for `leaseDurationSeconds` (measured on this candidate's clock, from when it
//! last saw the record change, so clock skew between machines does not matter); the holder
//! renews every `retry_period` and steps down — `is_leader` goes false and `run` returns
//! `Error::LeaderLost` — as soon as `renew_deadline` has passed since its last successful
//! renewal. Since `renew_deadline < lease_duration`, the old holder has stopped acting before
//! anyone else may take the Lease. Writes carry the `resourceVersion` read, so two candidates
//! never both succeed.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::Error;

/// client-go's (and kube-scheduler's) default lease duration.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// client-go's default renew deadline.
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// client-go's default retry period.
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);
/// client-go's `JitterFactor`: waits between tries are `retry_period * [1, 1.2)`.
const JITTER_FACTOR: f64 = 1.2;

/// One candidate's election settings.
#[derive(Debug, Clone)]
pub struct LeaderElectionConfig {
    /// Name of the Lease object.
    pub lease_name: String,
    /// Namespace of the Lease object.
    pub namespace: String,
    /// This candidate's `holderIdentity` (unique per process).
    pub identity: String,
    /// How long non-leaders wait after the last change before taking the Lease.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it steps down.
    pub renew_deadline: Duration,
    /// How long candidates wait between tries.
    pub retry_period: Duration,
}

impl LeaderElectionConfig {
    /// A config with client-go's default durations.
    pub fn with_defaults(lease_name: &str, namespace: &str, identity: &str) -> Self {
        LeaderElectionConfig {
            lease_name: lease_name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
        }
    }

    /// client-go's `NewLeaderElector` checks: leaseDuration > renewDeadline >
    /// retryPeriod * JitterFactor, all positive, identity set.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::InvalidConfig(m.into()));
        if self.identity.is_empty() {
            return bad("leader election identity must not be empty");
        }
        if self.lease_name.is_empty() || self.namespace.is_empty() {
            return bad("leader election lease name and namespace must be set");
        }
        if self.retry_period.is_zero() {
            return bad("retryPeriod must be greater than zero");
        }
        if self.lease_duration <= self.renew_deadline {
            return bad("leaseDuration must be greater than renewDeadline");
        }
        if self.renew_deadline.as_secs_f64() <= JITTER_FACTOR * self.retry_period.as_secs_f64() {
            return bad("renewDeadline must be greater than retryPeriod*JitterFactor");
        }
        Ok(())
    }
}

/// The record as last seen, and when (on our clock) it last changed.
#[derive(Debug, Clone)]
pub struct Observed {
    /// `spec` of the Lease at that time.
    pub spec: LeaseSpec,
    /// When this candidate first saw this exact record.
    pub changed_at: Instant,
}

/// What a candidate should do with the Lease it just read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Take it over (free, or its holder let it expire).
    Acquire,
    /// We hold it: renew.
    Renew,
    /// Someone else holds a live lease.
    Wait {
        /// The current holder.
        holder: String,
    },
}

/// client-go's `tryAcquireOrRenew` decision, pure.
pub fn decide(identity: &str, observed: &Observed, now: Instant) -> Decision {
    let holder = observed.spec.holder_identity.clone().unwrap_or_default();
    if holder.is_empty() {
        return Decision::Acquire;
    }
    if holder == identity {
        return Decision::Renew;
    }
    let duration = observed
        .spec
        .lease_duration_seconds
        .map(|s| Duration::from_secs(u64::try_from(s.max(0)).unwrap_or(0)))
        .unwrap_or(DEFAULT_LEASE_DURATION);
    if now < observed.changed_at + duration {
        Decision::Wait { holder }
    } else {
        Decision::Acquire
    }
}

/// Whether two records differ the way client-go compares them (the raw record).
fn same_record(a: &LeaseSpec, b: &LeaseSpec) -> bool {
    a == b
}

/// The spec a candidate writes when it acquires or renews.
pub fn next_spec(
    config: &LeaderElectionConfig,
    previous: Option<&LeaseSpec>,
    now: jiff::Timestamp,
) -> LeaseSpec {
    let lease_seconds = i32::try_from(config.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let renewing = previous
        .and_then(|p| p.holder_identity.as_deref())
        .is_some_and(|h| h == config.identity);
    let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
    let had_holder = previous
        .and_then(|p| p.holder_identity.as_deref())
        .is_some_and(|h| !h.is_empty());
    LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        lease_duration_seconds: Some(lease_seconds),
        acquire_time: if renewing {
            previous.and_then(|p| p.acquire_time.clone())
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if renewing || !had_holder {
            transitions
        } else {
            transitions.saturating_add(1)
        }),
        ..Default::default()
    }
}

/// A candidate in one election.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaderElectionConfig,
    observed: Option<Observed>,
}

impl LeaderElector {
    /// A candidate for `config` (validated) talking through `client`.
    pub fn new(client: kube::Client, config: LeaderElectionConfig) -> Result<Self, Error> {
        config.validate()?;
        Ok(LeaderElector {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
        })
    }

    /// Campaigns until elected, then renews; `is_leader` follows. Returns `Ok` when
    /// `shutdown` fires (releasing the Lease if held), `Err(LeaderLost)` when a renewal
    /// deadline passed.
    pub async fn run(
        mut self,
        is_leader: watch::Sender<bool>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), Error> {
        tokio::pin!(shutdown);
        // Campaign.
        let acquired_sent = loop {
            let sent = Instant::now();
            let attempt =
                tokio::time::timeout(self.config.renew_deadline, self.try_acquire_or_renew());
            match tokio::select! { r = attempt => Some(r), _ = &mut shutdown => None } {
                None => return Ok(()),
                Some(Ok(Ok(true))) => break sent,
                Some(Ok(Ok(false))) => {}
                Some(Ok(Err(err))) => {
                    tracing::warn!(error = %err, lease = %self.config.lease_name, "leader election: cannot acquire")
                }
                Some(Err(_)) => {
                    tracing::warn!(lease = %self.config.lease_name, "leader election: acquire timed out")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(jittered(self.config.retry_period)) => {}
                _ = &mut shutdown => return Ok(()),
            }
        };
        tracing::info!(lease = %self.config.lease_name, identity = %self.config.identity, "successfully acquired lease");
        let _ = is_leader.send(true);
        let mut last_renew = acquired_sent;
        // Renew. `last_renew` is when the last successful renewal was *sent*: the write
        // committed after that, so others cannot take over before `last_renew +
        // lease_duration`, and we stop at `last_renew + renew_deadline`, earlier.
        loop {
            let deadline = last_renew + self.config.renew_deadline;
            tokio::select! {
                _ = tokio::time::sleep(self.config.retry_period) => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = &mut shutdown => {
                    let _ = is_leader.send(false);
                    self.release().await;
                    return Ok(());
                }
            }
            let sent = Instant::now();
            if sent < deadline {
                match tokio::time::timeout_at(deadline, self.try_acquire_or_renew()).await {
                    Ok(Ok(true)) => last_renew = sent,
                    Ok(Ok(false)) => {
                        // Someone else holds it now: stop at once.
                        let _ = is_leader.send(false);
                        tracing::error!(lease = %self.config.lease_name, "leader election lost: lease taken over");
                        return Err(Error::LeaderLost(self.config.lease_name.clone()));
                    }
                    Ok(Err(err)) => tracing::warn!(error = %err, "leader election: renew failed"),
                    Err(_) => {}
                }
            }
            if last_renew + self.config.renew_deadline <= Instant::now() {
                let _ = is_leader.send(false);
                tracing::error!(lease = %self.config.lease_name, "leader election lost");
                return Err(Error::LeaderLost(self.config.lease_name.clone()));
            }
        }
    }

    /// One `tryAcquireOrRenew`: read, decide, write with the read `resourceVersion`.
    /// `Ok(true)` when this candidate holds the Lease afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, Error> {
        let now = Instant::now();
        let current = self.api.get_opt(&self.config.lease_name).await?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.lease_name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(next_spec(&self.config, None, crate::now_timestamp())),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(created.spec.unwrap_or_default(), Instant::now());
                    Ok(true)
                }
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(err) => Err(err.into()),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        self.observe(spec.clone(), now);
        let Some(observed) = self.observed.as_ref() else {
            return Ok(false);
        };
        match decide(&self.config.identity, observed, now) {
            Decision::Wait { holder } => {
                tracing::debug!(%holder, "lease is held by another candidate");
                return Ok(false);
            }
            Decision::Acquire | Decision::Renew => {}
        }
        lease.spec = Some(next_spec(&self.config, Some(&spec), crate::now_timestamp()));
        match self
            .api
            .replace(&self.config.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                self.observe(updated.spec.unwrap_or_default(), Instant::now());
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    fn observe(&mut self, spec: LeaseSpec, now: Instant) {
        let changed = self
            .observed
            .as_ref()
            .is_none_or(|o| !same_record(&o.spec, &spec));
        if changed {
            self.observed = Some(Observed {
                spec,
                changed_at: now,
            });
        }
    }

    /// client-go's `release` (ReleaseOnCancel, which kube-scheduler sets): clear the holder
    /// so a successor need not wait out the lease.
    async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.lease_name).await else {
            return;
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(crate::now_timestamp()));
        lease.spec = Some(spec);
        if let Err(err) = self
            .api
            .replace(&self.config.lease_name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(error = %err, "leader election: cannot release lease");
        }
    }
}

/// `base * [1, JITTER_FACTOR)`.
fn jittered(base: Duration) -> Duration {
    let factor = 1.0 + rand::random::<f64>() * (JITTER_FACTOR - 1.0);
    base.mul_f64(factor)
}

/// kube-scheduler's identity: `hostname_` plus a random suffix, unique per process.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}_{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(secs),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_validate_and_bad_orders_do_not() {
        let mut c = LeaderElectionConfig::with_defaults("kube-scheduler", "kube-system", "me");
        c.validate().unwrap();
        c.renew_deadline = Duration::from_secs(15);
        assert!(c.validate().is_err());
        c.renew_deadline = Duration::from_millis(2_200);
        assert!(
            c.validate().is_err(),
            "renew deadline must exceed retry * 1.2"
        );
    }

    #[test]
    fn free_lease_is_acquired_and_own_lease_renewed() {
        let now = Instant::now();
        let free = Observed {
            spec: spec("", 15),
            changed_at: now,
        };
        assert_eq!(decide("me", &free, now), Decision::Acquire);
        let mine = Observed {
            spec: spec("me", 15),
            changed_at: now,
        };
        assert_eq!(decide("me", &mine, now), Decision::Renew);
    }

    #[test]
    fn others_lease_is_taken_only_after_its_duration_since_last_change() {
        let t0 = Instant::now();
        let theirs = Observed {
            spec: spec("other", 15),
            changed_at: t0,
        };
        assert_eq!(
            decide("me", &theirs, t0 + Duration::from_secs(14)),
            Decision::Wait {
                holder: "other".into()
            }
        );
        assert_eq!(
            decide("me", &theirs, t0 + Duration::from_secs(15)),
            Decision::Acquire
        );
    }

    #[test]
    fn transitions_count_holder_changes_only() {
        let config = LeaderElectionConfig::with_defaults("l", "ns", "me");
        let now = jiff::Timestamp::UNIX_EPOCH;
        let mut prev = spec("other", 15);
        prev.lease_transitions = Some(3);
        assert_eq!(
            next_spec(&config, Some(&prev), now).lease_transitions,
            Some(4)
        );
        let mut mine = spec("me", 15);
        mine.lease_transitions = Some(4);
        assert_eq!(
            next_spec(&config, Some(&mine), now).lease_transitions,
            Some(4)
        );
        assert_eq!(next_spec(&config, None, now).lease_transitions, Some(0));
        assert_eq!(
            next_spec(&config, None, now).holder_identity.as_deref(),
            Some("me")
        );
    }
}
