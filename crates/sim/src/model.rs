//! The reference model: what every page must read as, in one global order of completed
//! operations, and which pages may legitimately be poisoned.

use pagemesh_core::PageKey;
use std::collections::BTreeMap;

/// What the model knows of one page.
#[derive(Clone, Debug, Default)]
pub struct PageModel {
    /// The value of the latest completed write.
    pub value: u64,
    /// Sequence number of that write (0: the initial contents).
    pub written_seq: u64,
    /// A sync that started after the latest write completed successfully.
    pub synced: bool,
    /// A crash, or a home declaring a node dead, lost a copy that may have held unsynced data
    /// (or an M copy): poison is allowed.
    pub poison_ok: bool,
    /// The home reported the page poisoned (and has not cleared it).
    pub poisoned: bool,
    /// Sequence number of the last clear-poison.
    pub cleared_seq: u64,
    /// Sequence number of the last failed mapper read.
    pub read_error_seq: u64,
    /// Only atomic increments touch this page.
    pub incr_only: bool,
    /// Value when increments started being counted (after the last clear).
    pub incr_base: u64,
    /// Increments completed since.
    pub incr_count: u64,
}

/// The model of every page, and the global operation counter.
#[derive(Clone, Debug, Default)]
pub struct Model {
    /// Pages.
    pub pages: BTreeMap<PageKey, PageModel>,
    /// Increases with every completed operation and every sync start.
    pub seq: u64,
}

impl Model {
    /// Next sequence number.
    pub fn tick(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Register a page with its initial contents.
    pub fn add_page(&mut self, page: PageKey, initial: u64, incr_only: bool) {
        self.pages.insert(
            page,
            PageModel {
                value: initial,
                synced: true,
                incr_only,
                incr_base: initial,
                ..PageModel::default()
            },
        );
    }

    fn page(&mut self, page: PageKey) -> &mut PageModel {
        self.pages.entry(page).or_default()
    }

    /// A read completed and returned `got`.
    pub fn check_read(&mut self, page: PageKey, got: u64) -> Result<(), String> {
        let m = self.page(page);
        if m.poisoned {
            return Err(format!(
                "{page}: read returned {got} but the page is poisoned (expected SIGBUS)"
            ));
        }
        if got != m.value {
            return Err(format!(
                "{page}: read returned {got}, the latest write is {} (stale or lost data)",
                m.value
            ));
        }
        Ok(())
    }

    /// A write of `value` completed.
    pub fn write(&mut self, page: PageKey, value: u64) {
        let seq = self.tick();
        let m = self.page(page);
        m.value = value;
        m.written_seq = seq;
        m.synced = false;
    }

    /// The home granted write access to `page`: from now on it counts the page as being
    /// written (unsynced), whether or not the write happens.
    pub fn granted_for_write(&mut self, page: PageKey) {
        let seq = self.tick();
        let m = self.page(page);
        m.written_seq = seq;
        m.synced = false;
    }

    /// An atomic increment completed having read `old`.
    pub fn incr(&mut self, page: PageKey, old: u64) -> Result<(), String> {
        self.check_read(page, old)?;
        let seq = self.tick();
        let m = self.page(page);
        m.value = old.wrapping_add(1);
        m.written_seq = seq;
        m.synced = false;
        m.incr_count += 1;
        Ok(())
    }

    /// A fault issued at `issued_seq` ended in SIGBUS: the page must have been poisoned at some
    /// moment since.
    pub fn check_poisoned_fault(&mut self, page: PageKey, issued_seq: u64) -> Result<(), String> {
        let m = self.page(page);
        if m.poisoned || m.cleared_seq > issued_seq {
            Ok(())
        } else {
            Err(format!(
                "{page}: fault got SIGBUS but the home never poisoned the page"
            ))
        }
    }

    /// A mapper read of `page` failed.
    pub fn read_error(&mut self, page: PageKey) {
        let seq = self.tick();
        self.page(page).read_error_seq = seq;
    }

    /// A mapper write of `page` failed: the contents being written may now exist nowhere, and
    /// an unrecoverable I/O error is a legitimate reason to poison.
    pub fn write_error(&mut self, page: PageKey) {
        self.page(page).poison_ok = true;
    }

    /// A fault issued at `issued_seq` failed because a mapper read failed since.
    pub fn check_mapper_failed_fault(
        &mut self,
        page: PageKey,
        issued_seq: u64,
    ) -> Result<(), String> {
        if self.page(page).read_error_seq > issued_seq {
            Ok(())
        } else {
            Err(format!(
                "{page}: fault reported a mapper failure but no mapper read failed"
            ))
        }
    }

    /// The home reported `page` poisoned.
    pub fn poisoned(&mut self, page: PageKey) -> Result<(), String> {
        let m = self.page(page);
        if !m.poison_ok {
            return Err(format!(
                "{page}: poisoned, but no crash or declared-dead node lost a copy of unsynced data (synced={}, value {})",
                m.synced, m.value
            ));
        }
        m.poisoned = true;
        Ok(())
    }

    /// The home restored `page` from the mapper, which holds `value`.
    pub fn cleared(&mut self, page: PageKey, value: u64) {
        let seq = self.tick();
        let m = self.page(page);
        m.poisoned = false;
        m.poison_ok = false;
        m.cleared_seq = seq;
        m.value = value;
        m.written_seq = seq;
        m.synced = true;
        m.incr_base = value;
        m.incr_count = 0;
    }

    /// A sync of the pages `pages` that started at `start_seq` succeeded.
    pub fn synced(&mut self, pages: impl Iterator<Item = PageKey>, start_seq: u64) {
        for p in pages {
            let m = self.page(p);
            if m.written_seq < start_seq {
                m.synced = true;
            }
        }
    }

    /// The final audit: no lost increments.
    pub fn check_increments(&self) -> Result<(), String> {
        for (page, m) in &self.pages {
            if m.incr_only && !m.poisoned && m.value != m.incr_base.wrapping_add(m.incr_count) {
                return Err(format!(
                    "{page}: {} increments from {} should give {}, the page holds {} (lost increment)",
                    m.incr_count,
                    m.incr_base,
                    m.incr_base.wrapping_add(m.incr_count),
                    m.value
                ));
            }
        }
        Ok(())
    }
}
