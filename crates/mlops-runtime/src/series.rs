//! Handles onto metric series, found by a name and a small key with one lookup. A
//! prometheus-client family finds a series by its whole label set — owned strings built
//! and hashed on every call — which on a request path cost more than the request's own
//! work; a series once made is reused through its handle (a handle shares its series).

use std::{collections::HashMap, sync::RwLock};

/// Series handles `M` by name (a route, a dataset) and key (method and status, outcome).
pub struct SeriesCache<K, M> {
    by_name: RwLock<HashMap<String, Vec<(K, M)>>>,
}

impl<K, M> Default for SeriesCache<K, M> {
    fn default() -> Self {
        Self {
            by_name: RwLock::default(),
        }
    }
}

impl<K: PartialEq, M: Clone> SeriesCache<K, M> {
    /// The handle for `name` and `key`, made by `make` the first time.
    pub fn get(&self, name: &str, key: K, make: impl FnOnce() -> M) -> M {
        let find = |all: &[(K, M)]| all.iter().find(|(k, _)| *k == key).map(|(_, m)| m.clone());
        {
            let known = self.by_name.read().expect("series lock");
            if let Some(found) = known.get(name).and_then(|all| find(all)) {
                return found;
            }
        }
        let made = make();
        let mut known = self.by_name.write().expect("series lock");
        let all = known.entry(name.to_owned()).or_default();
        // Another request may have made it meanwhile: keep the first.
        if let Some(found) = find(all) {
            return found;
        }
        all.push((key, made.clone()));
        made
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn a_series_is_made_once_and_shared_by_its_handles() {
        let cache: SeriesCache<&str, Counter> = SeriesCache::default();
        let mut made = 0;
        for _ in 0..3 {
            cache
                .get("payments", "accepted", || {
                    made += 1;
                    Counter::default()
                })
                .inc();
        }
        let other = cache.get("payments", "rejected", Counter::default);
        assert_eq!(made, 1);
        assert_eq!(cache.get("payments", "accepted", Counter::default).get(), 3);
        assert_eq!(other.get(), 0);
    }
}
