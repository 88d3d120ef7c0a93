//! [`FieldMap`]: the few fields of one session, as a small ordered map.

/// A session's few fields: a vector searched in order is faster than a hash
/// map at this size, and allocates once.
pub(super) struct FieldMap<V>(Vec<(String, V)>);

impl<V> Default for FieldMap<V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<V> FieldMap<V> {
    pub(super) fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.0.iter().position(|(k, _)| k == key)
    }

    pub(super) fn get(&self, key: &str) -> Option<&V> {
        self.position(key).map(|i| &self.0[i].1)
    }

    pub(super) fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_some()
    }

    pub(super) fn insert(&mut self, key: String, value: V) {
        match self.position(&key) {
            Some(i) => self.0[i].1 = value,
            None => self.0.push((key, value)),
        }
    }

    /// Adds a field known not to be in the map (no search).
    pub(super) fn push_new(&mut self, key: String, value: V) {
        self.0.push((key, value));
    }

    pub(super) fn remove(&mut self, key: &str) {
        if let Some(i) = self.position(key) {
            self.0.swap_remove(i);
        }
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(k, _)| k)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub(super) fn drain(&mut self) -> std::vec::Drain<'_, (String, V)> {
        self.0.drain(..)
    }

    pub(super) fn clear(&mut self) {
        self.0.clear();
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }
}
