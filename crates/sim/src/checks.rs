//! Invariants checked after every event, and what a crash may legitimately lose.

use crate::world::{fail, Ev, Violation, World};
use pagemesh_core::{CacheState, Envelope, Msg, PageKey};
use pagemesh_types::NodeId;

impl World {
    /// Single writer or many readers per page; every valid copy holds the latest write; memory
    /// and cache state agree.
    pub(crate) fn check_every_step(&self) -> Result<(), Violation> {
        for (page, m) in &self.model.pages {
            let mut exclusive = Vec::new();
            let mut shared = Vec::new();
            for (i, n) in self.nodes.iter().enumerate() {
                let Some(core) = &n.core else {
                    continue;
                };
                let copy = core.copy(*page);
                let mem = n.mem.get(page);
                match (copy, mem) {
                    (Some(_), Some(_))
                        if self.fenced_view(i, *page)
                            && !(self.cfg.leases && self.holds_lease(i, *page)) =>
                    {
                        // An orphaned copy on a node declared dead that has not stopped yet:
                        // its home no longer counts it. With leases, only while its node
                        // cannot use it (no lease of its home); a copy it may use is checked.
                    }
                    (Some(c), Some(v)) => {
                        if c.state.is_exclusive() {
                            exclusive.push(i);
                        } else {
                            shared.push(i);
                        }
                        if !m.poisoned && *v != m.value {
                            return Err(fail(
                                self,
                                Some(*page),
                                format!(
                                    "node{i} holds {page} ({:?} v{}) = {v}, but the latest write is {}",
                                    c.state, c.version.0, m.value
                                ),
                            ));
                        }
                    }
                    (None, None) => {}
                    (c, v) => {
                        return Err(fail(
                            self,
                            Some(*page),
                            format!(
                                "node{i}: cache state {c:?} disagrees with memory {v:?} for {page}"
                            ),
                        ))
                    }
                }
            }
            if exclusive.len() > 1 || (!exclusive.is_empty() && !shared.is_empty()) {
                return Err(fail(
                    self,
                    Some(*page),
                    format!(
                        "single writer broken on {page}: exclusive on {exclusive:?}, shared on {shared:?}"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Before node `i` crashes: which pages may now be lost (and so may be poisoned). A page
    /// may be lost if the node held (or was being granted) its exclusive copy, or held a copy,
    /// or was sending its data, while the latest write was not yet synced.
    ///
    /// A node declared dead while alive leaves out the pages whose home already fenced it:
    /// that home dropped what it held when it declared it (and marked them then); its copies
    /// of them are orphans, which the crash no longer loses.
    pub(crate) fn mark_lost_by_crash(&mut self, i: usize) {
        if self.nodes[i].fenced {
            let fenced_by: Vec<bool> = (0..self.nodes.len()).map(|h| self.fences(h, i)).collect();
            self.mark_lost_by(i, |h| !fenced_by[h]);
        } else {
            self.mark_lost_by(i, |_| true);
        }
    }

    /// Which pages homed where `homes` says may be lost with node `i`'s copies (it crashed, or
    /// a home declared it dead): the rule of [`World::mark_lost_by_crash`].
    pub(crate) fn mark_lost_by(&mut self, i: usize, homes: impl Fn(usize) -> bool) {
        let me = NodeId(i as u32);
        let pages: Vec<PageKey> = self.model.pages.keys().copied().collect();
        for page in pages {
            let home = self.segs.iter().find(|s| s.id == page.seg).map(|s| s.home);
            if home.is_some_and(|h| !homes(h.0 as usize)) {
                continue;
            }
            let copy = self.nodes[i].core.as_ref().and_then(|c| c.copy(page));
            let dir = home.and_then(|h| {
                self.nodes[h.0 as usize]
                    .core
                    .as_ref()
                    .and_then(|c| c.dir_page(page))
            });
            let dir_owner = dir.as_ref().is_some_and(|d| d.owner == Some(me));
            let dir_sharer = dir.as_ref().is_some_and(|d| d.sharers.contains(&me));
            let in_flight = self.data_in_flight_from(me, page);
            let involved = copy.is_some() || dir_owner || dir_sharer || in_flight;
            let exclusive = dir_owner || copy.is_some_and(|c| c.state == CacheState::Modified);
            // A restarted home poisons every page with a write intent that no node holds.
            // (An intent still being written counts: it may land after the crash.)
            let home_with_intent = home == Some(me)
                && (self.intents.contains(&page) || self.intent_in_flight(me, page));
            let m = self.model.pages.entry(page).or_default();
            if (involved && (!m.synced || exclusive)) || home_with_intent {
                m.poison_ok = true;
            }
        }
    }

    /// A home granting write access to an incarnation that is already dead cannot know whether
    /// it wrote before dying: the page may be poisoned when the home learns of the restart.
    ///
    /// With leases, a write granted M may wait for the lease (and never happen, or happen
    /// much later); the home counts the page as being written from the grant on (its write
    /// intent is set), so the model does too: the page is unsynced from the grant.
    pub(crate) fn note_grant_to_dead(&mut self, env: &Envelope) {
        if let Msg::Grant {
            page,
            state: CacheState::Modified,
            ..
        } = env.msg
        {
            let n = &self.nodes[env.to.0 as usize];
            if n.core.is_none() || n.epoch != env.to_epoch.0 {
                self.model.pages.entry(page).or_default().poison_ok = true;
            }
            if self.cfg.leases {
                self.model.granted_for_write(page);
            }
        }
    }

    fn intent_in_flight(&self, home: NodeId, page: PageKey) -> bool {
        self.pending_events().any(|ev| {
            matches!(ev, Ev::IntentWrite { node, page: p, dirty: true, .. }
                if *node == home.0 as usize && *p == page)
        })
    }

    fn data_in_flight_from(&self, from: NodeId, page: PageKey) -> bool {
        self.pending_events().any(|ev| match ev {
            Ev::Deliver(env) => {
                env.from == from && env.msg.page() == Some(page) && env.msg.carries_data()
            }
            _ => false,
        })
    }
}
