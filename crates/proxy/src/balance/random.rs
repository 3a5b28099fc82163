//! Random: a uniform pick from the thread-local RNG (no shared state, no contention).

use super::{Balance, LoadGuard, Picked, random_index};

#[derive(Debug)]
pub(crate) struct Random {
    len: usize,
}

impl Random {
    pub(crate) fn new(len: usize) -> Self {
        Random { len }
    }
}

impl Balance for Random {
    fn pick(&self, _hash: Option<u64>) -> Option<Picked> {
        if self.len == 0 {
            return None;
        }
        Some(Picked {
            index: random_index(self.len),
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
        // A random start, then the next allowed endpoint: uniform enough over the allowed
        // ones for the short time an endpoint is skipped.
        let index = super::scan_from(random_index(self.len), self.len, skip)?;
        Some(Picked {
            index,
            load: LoadGuard::none(),
        })
    }

    fn len(&self) -> usize {
        self.len
    }
}
