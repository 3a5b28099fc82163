//! Round robin: a shared counter, so picks are exactly even across endpoints.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Balance, LoadGuard, Picked};

/// Endpoint `i` serves picks `i`, `i + n`, `i + 2n`, ... of this balancer.
#[derive(Debug)]
pub(crate) struct RoundRobin {
    len: usize,
    next: AtomicUsize,
}

impl RoundRobin {
    pub(crate) fn new(len: usize) -> Self {
        RoundRobin {
            len,
            next: AtomicUsize::new(0),
        }
    }
}

impl Balance for RoundRobin {
    fn pick(&self, _hash: Option<u64>) -> Option<Picked> {
        if self.len == 0 {
            return None;
        }
        // Relaxed: the counter orders nothing else; each pick just needs a distinct ticket.
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        Some(Picked {
            index: ticket % self.len,
            load: LoadGuard::none(),
        })
    }

    fn pick_excluding(
        &self,
        _hash: Option<u64>,
        _now: std::time::Instant,
        skip: &dyn Fn(usize) -> bool,
    ) -> Option<Picked> {
        if self.len == 0 {
            return None;
        }
        // Fresh tickets, not a scan: the skipped endpoint's turns spread over all the others
        // instead of doubling the next one's share.
        (0..self.len).find_map(|_| {
            let index = self.next.fetch_add(1, Ordering::Relaxed) % self.len;
            (!skip(index)).then(|| Picked {
                index,
                load: LoadGuard::none(),
            })
        })
    }

    fn len(&self) -> usize {
        self.len
    }
}
