//! The visitors seen lately, by name, so that `POST /send` can address a visitor by the name
//! the page shows while publishing to the channel of its id. At most [`Recent::MAX`] sightings
//! are kept (a page load or a stream opened is one), the oldest forgotten first; a name seen
//! again points to the visitor seen last with it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::session::Visitor;

#[derive(Default)]
pub struct Recent {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// name -> (id, number of the sighting that put it there).
    by_name: HashMap<String, (String, u64)>,
    /// (name, sighting number), oldest first: one per sighting, at most `MAX`.
    order: VecDeque<(String, u64)>,
    next: u64,
}

impl Recent {
    pub const MAX: usize = 10_000;

    /// `visitor` was just seen: its name now points to its id.
    pub fn saw(&self, visitor: &Visitor) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let n = inner.next;
        inner.next += 1;
        let name = visitor.name.clone();
        inner.by_name.insert(name.clone(), (visitor.id.clone(), n));
        inner.order.push_back((name, n));
        while inner.order.len() > Self::MAX {
            let Some((old, m)) = inner.order.pop_front() else {
                break;
            };
            // Forgotten unless seen again since.
            if inner.by_name.get(&old).is_some_and(|(_, last)| *last == m) {
                inner.by_name.remove(&old);
            }
        }
    }

    /// The id of the visitor seen last with `name`, if still remembered.
    pub fn id_of(&self, name: &str) -> Option<String> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.by_name.get(name).map(|(id, _)| id.clone())
    }
}
