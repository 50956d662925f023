//! In-flight work of one kind, under ids the table hands out, with a bound: a request past the
//! bound is refused with [`Full`] (a typed error the caller turns into its answer), never
//! queued without limit.

use std::collections::HashMap;

/// A table is at its bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{limit} {kind} in flight on this node already; try again when some have ended")]
pub struct Full {
    /// What the table holds.
    pub kind: &'static str,
    /// Its bound.
    pub limit: usize,
}

/// Entries of one kind of in-flight work, at most `limit`, under ids that are never reused.
#[derive(Debug)]
pub(crate) struct Table<T> {
    kind: &'static str,
    limit: usize,
    next: u64,
    entries: HashMap<u64, T>,
}

impl<T> Table<T> {
    /// An empty table of `kind` holding at most `limit` entries.
    pub(crate) fn new(kind: &'static str, limit: usize) -> Table<T> {
        assert!(limit > 0, "a table of {kind} that holds nothing");
        Table {
            kind,
            limit,
            next: 1,
            entries: HashMap::new(),
        }
    }

    /// Hold `v` under a new id, or refuse it if the table is full.
    pub(crate) fn insert(&mut self, v: T) -> Result<u64, Full> {
        self.room(1)?;
        let id = self.next;
        self.next += 1;
        let old = self.entries.insert(id, v);
        assert!(old.is_none(), "{} id {id} handed out twice", self.kind);
        Ok(id)
    }

    /// Whether `n` more entries fit.
    pub(crate) fn room(&self, n: usize) -> Result<(), Full> {
        if self.entries.len() + n > self.limit {
            return Err(Full {
                kind: self.kind,
                limit: self.limit,
            });
        }
        Ok(())
    }

    pub(crate) fn remove(&mut self, id: u64) -> Option<T> {
        self.entries.remove(&id)
    }

    pub(crate) fn get_mut(&mut self, id: u64) -> Option<&mut T> {
        self.entries.get_mut(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_refuses_past_its_bound_and_never_reuses_an_id() {
        let mut t = Table::new("faults", 2);
        let a = t.insert('a').expect("room");
        let b = t.insert('b').expect("room");
        assert_eq!(
            t.insert('c'),
            Err(Full {
                kind: "faults",
                limit: 2
            })
        );
        assert_eq!(t.remove(a), Some('a'));
        let c = t.insert('c').expect("room again");
        assert!(c != a && c != b);
        assert!(t.room(1).is_err());
    }
}
