//! Health states per instance, as Consul keeps them: **passing**, **warning**, **critical**.
//!
//! An instance's state is the worst of: its heartbeat (lapsed TTL = critical, unless
//! self-preservation holds it), the sidecar's check of its app (reported on the registration
//! and every heartbeat, already thresholded by the sidecar), and the TTL checks the app
//! registered and renews itself (`PUT .../checks/{name}/pass|warn|fail`; not renewed within its
//! TTL = critical). Only passing instances are endpoints. Self-preservation applies to lost
//! heartbeats only: a failing check is believed at once.
//!
//! TTL checks live in memory: after a control-plane restart renewals answer 404 and the app
//! registers its checks again (as the sidecar does with its instance).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use trellis_model::{
    CheckStatus, MAX_TTL_CHECKS, TtlCheckRegistration, check_check_name, check_note,
    check_ttl_check,
};

use super::{InstanceState, Registry, RegistryError, not_found_instance};

/// The name under which the sidecar's own check of its app is shown.
pub const SIDECAR_CHECK: &str = "sidecar";

/// An app-held TTL check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TtlCheck {
    pub ttl: Duration,
    /// As last set by the app (critical until its first `pass`, as in Consul).
    pub status: CheckStatus,
    pub note: String,
    pub updated: Instant,
    /// The reaper's verdict: the TTL lapsed since the last update.
    pub lapsed: bool,
}

impl TtlCheck {
    pub fn effective(&self) -> CheckStatus {
        if self.lapsed {
            CheckStatus::Critical
        } else {
            self.status
        }
    }

    /// Marks the check lapsed once its TTL has passed; true when that changed its state.
    pub fn expire(&mut self, now: Instant) -> bool {
        let lapsed = now.saturating_duration_since(self.updated) >= self.ttl;
        let changed = lapsed && !self.lapsed;
        self.lapsed |= lapsed;
        changed && self.status != CheckStatus::Critical
    }
}

/// One check as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckView {
    pub name: String,
    pub status: CheckStatus,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output: String,
    /// What the sidecar checks (`http /healthz every 1s ...`); `ttl` for app-held checks.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_ms_ago: Option<u64>,
}

/// The instance's state from its heartbeat verdict (`healthy`, self-preservation included)
/// and its checks.
pub fn status_of(i: &InstanceState) -> CheckStatus {
    if !i.healthy {
        return CheckStatus::Critical;
    }
    let sidecar = i
        .registration
        .check
        .as_ref()
        .map_or(CheckStatus::Passing, |c| c.status);
    i.ttl_checks
        .values()
        .map(TtlCheck::effective)
        .fold(sidecar, std::cmp::max)
}

/// The checks of an instance, the sidecar's first.
pub fn views(i: &InstanceState, now: Instant) -> Vec<CheckView> {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let mut out = Vec::with_capacity(1 + i.ttl_checks.len());
    if let Some(c) = &i.registration.check {
        out.push(CheckView {
            name: SIDECAR_CHECK.to_string(),
            status: c.status,
            output: c.output.clone(),
            kind: c.kind.clone(),
            ttl_ms: None,
            updated_ms_ago: None,
        });
    }
    for (name, c) in &i.ttl_checks {
        let output = if c.lapsed {
            format!(
                "TTL expired: not renewed for {}",
                trellis_model::format_duration(c.ttl)
            )
        } else {
            c.note.clone()
        };
        out.push(CheckView {
            name: name.clone(),
            status: c.effective(),
            output,
            kind: "ttl".to_string(),
            ttl_ms: Some(ms(c.ttl)),
            updated_ms_ago: Some(ms(now.saturating_duration_since(c.updated))),
        });
    }
    out
}

/// The output shown next to the state: why it is not passing.
pub fn output_of(i: &InstanceState) -> String {
    if !i.healthy {
        return "heartbeat TTL lapsed".to_string();
    }
    let worst = status_of(i);
    if worst == CheckStatus::Passing {
        return String::new();
    }
    if let Some(c) = i.registration.check.as_ref().filter(|c| c.status == worst) {
        return format!("{SIDECAR_CHECK}: {}", c.output);
    }
    i.ttl_checks
        .iter()
        .find(|(_, c)| c.effective() == worst)
        .map(|(n, c)| {
            if c.lapsed {
                format!("{n}: TTL expired")
            } else {
                format!("{n}: {}", c.note)
            }
        })
        .unwrap_or_default()
}

fn check_key<'a>(
    st: &'a mut super::State,
    service: &str,
    id: &str,
) -> Result<&'a mut InstanceState, RegistryError> {
    st.instances
        .get_mut(&(service.to_string(), id.to_string()))
        .ok_or_else(|| not_found_instance(service, id))
}

impl Registry {
    /// Registers (or re-registers, keeping nothing) an app-held TTL check; critical until
    /// its first `pass`.
    pub fn register_check(
        &self,
        service: &str,
        id: &str,
        name: &str,
        reg: TtlCheckRegistration,
    ) -> Result<CheckView, RegistryError> {
        check_ttl_check(name, &reg).map_err(RegistryError::Invalid)?;
        let now = Instant::now();
        let mut st = self.state();
        let inst = check_key(&mut st, service, id)?;
        if !inst.ttl_checks.contains_key(name) && inst.ttl_checks.len() >= MAX_TTL_CHECKS {
            return Err(RegistryError::Invalid(format!(
                "name: instance `{id}` already holds {MAX_TTL_CHECKS} checks, the most allowed; remove one first"
            )));
        }
        let before = status_of(inst);
        inst.ttl_checks.insert(
            name.to_string(),
            TtlCheck {
                ttl: Duration::from_millis(reg.ttl_ms),
                status: CheckStatus::Critical,
                note: reg
                    .note
                    .unwrap_or_else(|| "registered; not yet passed".to_string()),
                updated: now,
                lapsed: false,
            },
        );
        let changed = status_of(inst) != before;
        let view = views(inst, now)
            .into_iter()
            .find(|c| c.name == name)
            .ok_or_else(|| RegistryError::NotFound(format!("check `{name}`")))?;
        drop(st);
        self.wake_reaper();
        if changed {
            self.mark_changed();
        }
        Ok(view)
    }

    /// `pass` / `warn` / `fail` with an optional note: renews the check's TTL.
    pub fn update_check(
        &self,
        service: &str,
        id: &str,
        name: &str,
        status: CheckStatus,
        note: Option<String>,
    ) -> Result<CheckView, RegistryError> {
        check_check_name(name).map_err(|e| RegistryError::Invalid(format!("name: {e}")))?;
        if let Some(n) = &note {
            check_note(n).map_err(|e| RegistryError::Invalid(format!("note: {e}")))?;
        }
        let now = Instant::now();
        let mut st = self.state();
        let inst = check_key(&mut st, service, id)?;
        let before = status_of(inst);
        let Some(check) = inst.ttl_checks.get_mut(name) else {
            return Err(RegistryError::NotFound(format!(
                "check `{name}` of instance `{id}` is not registered; register it with PUT /v1/instances/{service}/{id}/checks/{name}"
            )));
        };
        let revived = check.lapsed;
        check.status = status;
        check.note = note.unwrap_or_default();
        check.updated = now;
        check.lapsed = false;
        let changed = status_of(inst) != before;
        let view = views(inst, now)
            .into_iter()
            .find(|c| c.name == name)
            .ok_or_else(|| RegistryError::NotFound(format!("check `{name}`")))?;
        drop(st);
        self.inner.metrics.heartbeats.inc();
        if revived {
            self.wake_reaper();
        }
        if changed {
            self.mark_changed();
        }
        Ok(view)
    }

    pub fn deregister_check(
        &self,
        service: &str,
        id: &str,
        name: &str,
    ) -> Result<(), RegistryError> {
        let mut st = self.state();
        let inst = check_key(&mut st, service, id)?;
        let before = status_of(inst);
        if inst.ttl_checks.remove(name).is_none() {
            return Err(RegistryError::NotFound(format!(
                "check `{name}` of instance `{id}` is not registered"
            )));
        }
        let changed = status_of(inst) != before;
        drop(st);
        if changed {
            self.mark_changed();
        }
        Ok(())
    }
}

/// Lapses the TTL checks of every instance; true when any instance's state changed.
pub fn expire_all<'a>(
    instances: impl Iterator<Item = &'a mut InstanceState>,
    now: Instant,
) -> bool {
    let mut changed = false;
    for i in instances {
        let before = status_of(i);
        let mut any = false;
        for c in i.ttl_checks.values_mut() {
            any |= c.expire(now);
        }
        if any && status_of(i) != before {
            tracing::info!(service = %i.registration.service, id = %i.registration.id,
                "a TTL check was not renewed in time: the instance is critical");
            changed = true;
        }
    }
    changed
}

pub type TtlChecks = BTreeMap<String, TtlCheck>;

#[cfg(test)]
mod tests;
