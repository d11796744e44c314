//! A map that remembers only its newest entries: past its cap the entry
//! put longest ago goes. For what the server remembers in memory about
//! traffic (which session submitted a message, which application mail is
//! waiting for a retry), so that no client can make it grow for ever.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

pub struct Recent<K, V> {
    map: HashMap<K, V>,
    /// Keys in the order they were put; a key put again, or removed, may
    /// still be here from before (forgetting it then is harmless or early).
    order: VecDeque<K>,
    cap: usize,
}

impl<K: Hash + Eq + Clone, V> Recent<K, V> {
    pub fn new(cap: usize) -> Recent<K, V> {
        Recent {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// Puts `value` under `key`, forgetting the oldest entries past the cap.
    pub fn insert(&mut self, key: K, value: V) {
        self.map.insert(key.clone(), value);
        self.order.push_back(key);
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key)
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.map.remove(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_its_cap_the_oldest_go() {
        let mut recent = Recent::new(2);
        recent.insert("a", 1);
        recent.insert("b", 2);
        recent.insert("c", 3);
        assert_eq!(
            (recent.get(&"a"), recent.get(&"b"), recent.get(&"c")),
            (None, Some(&2), Some(&3))
        );
        assert_eq!(recent.remove(&"b"), Some(2));
        recent.insert("d", 4);
        assert_eq!((recent.get(&"c"), recent.get(&"d")), (Some(&3), Some(&4)));
        recent.insert("e", 5);
        assert_eq!((recent.get(&"c"), recent.get(&"e")), (None, Some(&5)), "the oldest put");
    }
}
