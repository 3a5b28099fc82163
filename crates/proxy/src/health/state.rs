//! The threshold state machine: a check's reported status changes only after N consecutive
//! results of the new status (Envoy's `healthy_threshold` / `unhealthy_threshold`, Consul's
//! `success_before_passing` / `failures_before_critical`). The very first result sets the
//! status at once, as Envoy does for a new host. Pure: results in, transitions out.

use trellis_model::CheckStatus;

/// How many consecutive results flip the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Passes needed to become passing.
    pub healthy: u32,
    /// Failures (or warnings) needed to become critical (or warning).
    pub unhealthy: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            healthy: 2,
            unhealthy: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CheckState {
    thresholds: Thresholds,
    status: Option<CheckStatus>,
    /// The latest run of identical results that differ from `status`, and its length.
    pending: Option<(CheckStatus, u32)>,
}

impl CheckState {
    pub fn new(thresholds: Thresholds) -> Self {
        CheckState {
            thresholds,
            status: None,
            pending: None,
        }
    }

    /// The reported status; `None` before the first result.
    pub fn status(&self) -> Option<CheckStatus> {
        self.status
    }

    /// Records one result; returns the new status when it changed. Between warning and
    /// critical (both keep the instance out of the endpoints) the status follows at once.
    pub fn observe(&mut self, result: CheckStatus) -> Option<CheckStatus> {
        let Some(current) = self.status else {
            self.status = Some(result);
            return Some(result);
        };
        let passing = |s: CheckStatus| s == CheckStatus::Passing;
        if passing(result) == passing(current) {
            self.pending = None;
            self.status = Some(result);
            return (result != current).then_some(result);
        }
        let run = match self.pending {
            Some((s, n)) if passing(s) == passing(result) => n.saturating_add(1),
            _ => 1,
        };
        let needed = if passing(result) {
            self.thresholds.healthy
        } else {
            self.thresholds.unhealthy
        };
        if run >= needed.max(1) {
            self.status = Some(result);
            self.pending = None;
            Some(result)
        } else {
            self.pending = Some((result, run));
            None
        }
    }
}
