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

    fn len(&self) -> usize {
        self.len
    }
}
