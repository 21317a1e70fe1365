//! Pushes are deduplicated by message id where they are shown: a message pushed, then
//! received again (the relay resends what a crash left unacknowledged) reaches a session
//! once. The window is bounded; ids older than it are forgotten first.

use std::collections::{HashSet, VecDeque};
use std::hash::Hash;

/// The last [`Recent::KEEP`] ids seen.
#[derive(Debug)]
pub struct Recent<T> {
    set: HashSet<T>,
    order: VecDeque<T>,
}

impl<T> Default for Recent<T> {
    fn default() -> Self {
        Self {
            set: HashSet::new(),
            order: VecDeque::new(),
        }
    }
}

impl<T: Copy + Eq + Hash> Recent<T> {
    /// Ids remembered.
    pub const KEEP: usize = 4096;

    /// Nothing remembered yet?
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Is `id` in the window?
    pub fn contains(&self, id: &T) -> bool {
        self.set.contains(id)
    }

    /// Record `id`; false if it is in the window already.
    pub fn insert(&mut self, id: T) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > Self::KEEP
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_counts_once_within_the_window_and_is_forgotten_after() {
        let mut r = Recent::default();
        assert!(r.insert(0u32));
        assert!(!r.insert(0));
        for i in 1..=Recent::<u32>::KEEP as u32 {
            assert!(r.insert(i));
        }
        assert!(r.insert(0), "the oldest id left the window");
        assert!(!r.insert(Recent::<u32>::KEEP as u32));
    }
}
