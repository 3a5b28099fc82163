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
        // Fresh draws keep the allowed endpoints uniform; a scan from a random start is the
        // fallback when most are skipped.
        let index = (0..super::SKIP_TRIES.min(self.len * 4))
            .map(|_| random_index(self.len))
            .find(|&i| !skip(i))
            .or_else(|| super::scan_from(random_index(self.len), self.len, skip))?;
        Some(Picked {
            index,
            load: LoadGuard::none(),
        })
    }

    fn len(&self) -> usize {
        self.len
    }
}
