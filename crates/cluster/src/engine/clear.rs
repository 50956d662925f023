//! Clearing a segment's poisoned pages at its home, a bounded window of calls at a time.

use std::collections::VecDeque;
use std::time::Instant;

use pagemesh_core::{CallId, CallResult, PageKey};
use pagemesh_proto::peer::{Control, PeerFrame};
use pagemesh_types::SegmentId;

use super::{CallFor, ClearFor, ClearJob, Engine, CLEAR_WINDOW};

impl Engine {
    pub(super) fn start_clear(&mut self, seg: SegmentId, for_: ClearFor) {
        if self.node.rebuilding(seg) {
            // Which pages were lost is known only once the rebuild ends: clearing now would
            // clear nothing and leave what the rebuild poisons poisoned.
            self.deferred_clears.push((seg, for_, Instant::now()));
            return;
        }
        let todo: VecDeque<u64> = self.node.poisoned_pages(seg).into_iter().collect();
        let id = self.req_id();
        self.clear_jobs.insert(
            id,
            ClearJob {
                seg,
                todo,
                in_flight: 0,
                cleared: 0,
                failed: 0,
                for_,
            },
        );
        self.clear_step(id, None);
    }

    /// Start the clears that waited for a rebuild that has ended; fail those that waited the
    /// fault timeout.
    pub(super) fn start_deferred_clears(&mut self) {
        let waiting = std::mem::take(&mut self.deferred_clears);
        for (seg, for_, since) in waiting {
            if !self.node.rebuilding(seg) {
                self.start_clear(seg, for_);
            } else if since.elapsed() > self.fault_timeout {
                let why = format!(
                    "the segment's home is still rebuilding its directory after a restart ({:?}); try again",
                    since.elapsed()
                );
                self.answer_clear(for_, Err(why));
            } else {
                self.deferred_clears.push((seg, for_, since));
            }
        }
    }

    fn answer_clear(&mut self, for_: ClearFor, result: Result<u64, String>) {
        match for_ {
            ClearFor::Local(r) => {
                let _ = r.send(result);
            }
            ClearFor::Peer(n, req) => self.send_peer(
                n,
                PeerFrame::Control(Control::ClearPoisonDone { req, result }),
            ),
        }
    }

    /// One clear-poison call of job `id` ended (or the job starts): issue more, or answer.
    pub(super) fn clear_step(&mut self, id: u64, ended: Option<CallResult>) {
        let now = self.now();
        let mut issue = Vec::new();
        {
            let Some(job) = self.clear_jobs.get_mut(&id) else {
                return;
            };
            if let Some(r) = ended {
                job.in_flight -= 1;
                match r {
                    CallResult::Ok => job.cleared += 1,
                    _ => job.failed += 1,
                }
            }
            while job.in_flight < CLEAR_WINDOW {
                let Some(p) = job.todo.pop_front() else {
                    break;
                };
                job.in_flight += 1;
                issue.push(PageKey::new(job.seg, p));
            }
        }
        for page in issue {
            match self.calls.insert(CallFor::Clear(id)) {
                Ok(call) => self.node.clear_poison(now, CallId(call), page),
                // The node's calls are at their bound: this page and the rest of the job are
                // counted as not cleared (the answer says to try again).
                Err(_) => {
                    if let Some(job) = self.clear_jobs.get_mut(&id) {
                        job.in_flight -= 1;
                        job.failed += 1 + job.todo.len() as u64;
                        job.todo.clear();
                    }
                }
            }
        }
        let finished = self
            .clear_jobs
            .get(&id)
            .is_some_and(|j| j.in_flight == 0 && j.todo.is_empty());
        if finished {
            let job = self.clear_jobs.remove(&id).expect("present");
            self.poisoned_seen.remove(&job.seg);
            let result = if job.failed == 0 {
                Ok(job.cleared)
            } else {
                Err(format!(
                    "{} page(s) cleared, {} could not be (still held, or the mapper failed): try again",
                    job.cleared, job.failed
                ))
            };
            self.answer_clear(job.for_, result);
        }
    }
}
