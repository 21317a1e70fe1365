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

/// Which incoming messages are certainly first sightings, so they may be shown before the
/// store has checked them against everything it holds. An id is a first sighting when it
/// is not in the window and was sent after every id the window has forgotten (and after
/// the floor the window started with): a relay sending an old message again cannot pass
/// for new just because the window no longer holds it. Send times are the sender's
/// clock; a sender whose clock is behind only loses the shortcut (the store still
/// decides), never a message.
#[derive(Debug)]
pub struct FirstSeen<T> {
    set: HashSet<T>,
    order: VecDeque<(T, i64)>,
    floor: i64,
}

impl<T> Default for FirstSeen<T> {
    /// Nothing is a first sighting until [`FirstSeen::start`] sets a floor.
    fn default() -> Self {
        Self {
            set: HashSet::new(),
            order: VecDeque::new(),
            floor: i64::MAX,
        }
    }
}

impl<T: Copy + Eq + Hash> FirstSeen<T> {
    /// Ids remembered.
    pub const KEEP: usize = Recent::<T>::KEEP;

    /// Nothing remembered yet?
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Start over: what was sent at or before `floor` may have been seen already; `seen`
    /// (oldest first, with their send times) certainly was. Each is remembered with the
    /// later of its send time and the floor, so forgetting it later raises the floor past
    /// it even when its sender's clock ran ahead.
    pub fn start(&mut self, floor: i64, seen: impl IntoIterator<Item = (T, i64)>) {
        *self = Self {
            floor,
            ..Self::default()
        };
        for (id, sent_ms) in seen {
            self.record(id, sent_ms.max(floor));
        }
    }

    /// Record `id`, sent at `sent_ms`; true only when it is certainly seen for the first
    /// time.
    pub fn first(&mut self, id: T, sent_ms: i64) -> bool {
        let after = sent_ms > self.floor;
        self.record(id, sent_ms) && after
    }

    fn record(&mut self, id: T, sent_ms: i64) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back((id, sent_ms));
        if self.order.len() > Self::KEEP
            && let Some((old, t)) = self.order.pop_front()
        {
            self.set.remove(&old);
            self.floor = self.floor.max(t);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_sighting_is_new_to_the_window_and_newer_than_what_it_forgot() {
        let mut f = FirstSeen::default();
        assert!(!f.first(1u32, 10), "before a start, nothing is certain");
        f.start(100, [(7u32, 90), (6, 500)]);
        // (id, sent at, first?)
        let table: &[(u32, i64, bool)] = &[
            (7, 150, false), // seen before the start
            (8, 100, false), // sent before the start: maybe seen then
            (9, 101, true),  // new and sent after the start
            (9, 101, false), // again
            (10, 150, true), // another
        ];
        for &(id, at, want) in table {
            assert_eq!(f.first(id, at), want, "id {id} sent at {at}");
        }
        // Fill the window: the forgotten ids raise the floor to their send times.
        for i in 0..FirstSeen::<u32>::KEEP as u32 {
            f.first(1000 + i, 200);
        }
        assert!(
            !f.first(9, 150),
            "forgotten, and not newer than what was forgotten"
        );
        // Id 6 (seen before the start, its sender's clock ahead at 500) is forgotten too.
        assert!(!f.first(20, 499), "sent no later than a forgotten one");
        assert!(f.first(21, 501));
    }

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
