//! The history of a chaos run as its processes write it down, and parsed back for the checker.
//!
//! Times are nanoseconds of `CLOCK_MONOTONIC`, one clock for every process of the machine.
//!
//! Each worker incarnation writes `w<WORKER>.<INCARNATION>.log`:
//!
//! ```text
//! worker W node N incarnation I start T
//! B W|R|S SEG PAGE VERSION START      an operation begins (write, read, sync)
//! E END ok [WORD0 WORD1 WORD511]      ... and ends: the three words a read returned
//! E END err MESSAGE                   ... or fails (a sync's error)
//! ```
//!
//! A `B` line without its `E` is the operation the worker was in when it ended: by SIGBUS if its
//! exit code says so, otherwise with an unknown effect. The test writes `events.log`:
//!
//! ```text
//! config fault_timeout_ms T dead_after_ms D segments S pages P
//! node N kill|up|stop|cont|cut|heal AT      kill -9, back up, SIGSTOP, SIGCONT, partition, heal
//! node N exit CODE AT                       the daemon ended by itself
//! clear SEG START END ok PAGES              segment clear-poison, and how many it cleared
//! clear SEG START END err
//! worker W I exit CODE AT                   a worker incarnation ended
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};

/// Exit code of a worker that died of SIGBUS (`pagemesh_uffd::sigbus::SIGBUS_EXIT_CODE`).
pub const SIGBUS_EXIT: i32 = pagemesh_uffd::sigbus::SIGBUS_EXIT_CODE;

/// Word 1 of a written page: which page it is (never zero), so that a page served in place of
/// another is caught.
pub fn tag(seg: u32, page: u64) -> u64 {
    (u64::from(seg) + 1) << 32 | (page + 1)
}

/// The version a worker incarnation writes as its `seq`-th write (from 1): versions of one
/// page rise across the incarnations of its writer.
pub fn version(incarnation: u32, seq: u32) -> u64 {
    u64::from(incarnation) << 32 | u64::from(seq)
}

/// Nanoseconds of `CLOCK_MONOTONIC` (the machine-wide clock every process of a history reads).
pub use pagemesh_uffd::clock::monotonic_ns as now_ns;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Write,
    Read,
    Sync,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The call returned an error.
    Failed,
    /// The worker died of SIGBUS in this operation.
    Sigbus,
    /// The worker ended in this operation for another reason: its effect is unknown.
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub worker: u32,
    pub incarnation: u32,
    pub node: u32,
    pub kind: Kind,
    pub seg: u32,
    pub page: u64,
    /// A write's version; a read's word 0.
    pub version: u64,
    /// A read's word 1 (the page's tag) and word 511 (written before word 0).
    pub tag: u64,
    pub last: u64,
    pub start_ns: u64,
    /// For an operation the worker died in: when the test saw the worker end.
    pub end_ns: u64,
    pub outcome: Outcome,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeEvent {
    Kill,
    Up,
    Stop,
    Cont,
    Cut,
    Heal,
    Exit(i32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub node: u32,
    pub what: NodeEvent,
    pub at_ns: u64,
}

/// A `segment clear-poison` the test ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clear {
    pub seg: u32,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Pages cleared, when it succeeded.
    pub pages: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub fault_timeout_ms: u64,
    pub dead_after_ms: u64,
    pub segments: u32,
    pub pages: u64,
}

/// When each worker incarnation started (its log's first line) and ended (the test saw it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Life {
    pub node: u32,
    pub start_ns: u64,
    pub end_ns: Option<u64>,
    pub exit_code: Option<i32>,
}

#[derive(Clone, Debug, Default)]
pub struct History {
    pub config: Config,
    pub ops: Vec<Op>,
    pub events: Vec<Event>,
    pub clears: Vec<Clear>,
    /// Per (worker, incarnation).
    pub lives: BTreeMap<(u32, u32), Life>,
}

fn num<T: std::str::FromStr>(w: Option<&str>, what: &str) -> anyhow::Result<T> {
    let w = w.with_context(|| format!("missing {what}"))?;
    w.parse()
        .map_err(|_| anyhow::anyhow!("{what}: not a number: {w:?}"))
}

impl History {
    /// Read a run's directory: `events.log` and every `w*.log`.
    pub fn load(dir: &Path) -> anyhow::Result<History> {
        let mut h = History::default();
        let events = std::fs::read_to_string(dir.join("events.log"))
            .with_context(|| format!("reading {}", dir.join("events.log").display()))?;
        h.parse_events(&events)?;
        let mut logs: Vec<_> = std::fs::read_dir(dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().map(|n| n.to_string_lossy().to_string());
                name.is_some_and(|n| n.starts_with('w') && n.ends_with(".log"))
            })
            .collect();
        logs.sort();
        for p in logs {
            let text = std::fs::read_to_string(&p)?;
            h.parse_worker_log(&text)
                .with_context(|| format!("in {}", p.display()))?;
        }
        Ok(h)
    }

    /// The test's events (read before the worker logs: a log's last operation needs its
    /// worker's exit).
    pub fn parse_events(&mut self, text: &str) -> anyhow::Result<()> {
        for (n, line) in text.lines().enumerate() {
            self.event_line(line)
                .with_context(|| format!("events line {}: {line:?}", n + 1))?;
        }
        Ok(())
    }

    fn event_line(&mut self, line: &str) -> anyhow::Result<()> {
        let mut w = line.split_whitespace();
        match w.next() {
            None => {}
            Some("config") => {
                while let Some(key) = w.next() {
                    let v: u64 = num(w.next(), key)?;
                    match key {
                        "fault_timeout_ms" => self.config.fault_timeout_ms = v,
                        "dead_after_ms" => self.config.dead_after_ms = v,
                        "segments" => self.config.segments = v as u32,
                        "pages" => self.config.pages = v,
                        _ => {}
                    }
                }
            }
            Some("node") => {
                let node = num(w.next(), "node")?;
                let what = match w.next() {
                    Some("kill") => NodeEvent::Kill,
                    Some("up") => NodeEvent::Up,
                    Some("stop") => NodeEvent::Stop,
                    Some("cont") => NodeEvent::Cont,
                    Some("cut") => NodeEvent::Cut,
                    Some("heal") => NodeEvent::Heal,
                    Some("exit") => NodeEvent::Exit(num(w.next(), "exit code")?),
                    other => bail!("unknown node event {other:?}"),
                };
                let at_ns = num(w.next(), "time")?;
                self.events.push(Event { node, what, at_ns });
            }
            Some("clear") => {
                let seg = num(w.next(), "segment")?;
                let start_ns = num(w.next(), "start")?;
                let end_ns = num(w.next(), "end")?;
                let pages = match w.next() {
                    Some("ok") => Some(num(w.next(), "pages")?),
                    _ => None,
                };
                self.clears.push(Clear {
                    seg,
                    start_ns,
                    end_ns,
                    pages,
                });
            }
            Some("worker") => {
                let worker = num(w.next(), "worker")?;
                let inc = num(w.next(), "incarnation")?;
                let _exit = w.next();
                let code = num(w.next(), "exit code")?;
                let at = num(w.next(), "time")?;
                let life = self.lives.entry((worker, inc)).or_default();
                life.exit_code = Some(code);
                life.end_ns = Some(at);
            }
            Some(other) => bail!("unknown event {other:?}"),
        }
        Ok(())
    }

    /// One worker incarnation's log.
    pub fn parse_worker_log(&mut self, text: &str) -> anyhow::Result<()> {
        let mut lines = text.lines();
        let head = lines.next().context("empty log")?;
        let mut h = head.split_whitespace();
        let mut field = |name: &str| -> anyhow::Result<u64> {
            match h.next() {
                Some(k) if k == name => num(h.next(), name),
                other => bail!("header: expected {name}, found {other:?}"),
            }
        };
        let worker = field("worker")? as u32;
        let node = field("node")? as u32;
        let incarnation = field("incarnation")? as u32;
        let start_ns = field("start")?;
        let life = self.lives.entry((worker, incarnation)).or_default();
        life.node = node;
        life.start_ns = start_ns;
        let life = *life;
        let mut open: Option<Op> = None;
        for line in lines {
            let mut w = line.split_whitespace();
            match w.next() {
                Some("B") => {
                    if open.is_some() {
                        bail!("two operations begin without an end: {line:?}");
                    }
                    let kind = match w.next() {
                        Some("W") => Kind::Write,
                        Some("R") => Kind::Read,
                        Some("S") => Kind::Sync,
                        k => bail!("unknown operation {k:?}"),
                    };
                    open = Some(Op {
                        worker,
                        incarnation,
                        node,
                        kind,
                        seg: num(w.next(), "segment")?,
                        page: num(w.next(), "page")?,
                        version: num(w.next(), "version")?,
                        tag: 0,
                        last: 0,
                        start_ns: num(w.next(), "start")?,
                        end_ns: 0,
                        outcome: Outcome::Unknown,
                    });
                }
                Some("E") => {
                    let mut op = open.take().context("an end without a begin")?;
                    op.end_ns = num(w.next(), "end")?;
                    op.outcome = match w.next() {
                        Some("ok") => Outcome::Ok,
                        _ => Outcome::Failed,
                    };
                    if op.kind == Kind::Read && op.outcome == Outcome::Ok {
                        op.version = num(w.next(), "word 0")?;
                        op.tag = num(w.next(), "word 1")?;
                        op.last = num(w.next(), "word 511")?;
                    }
                    self.ops.push(op);
                }
                // A torn last line: the worker died while writing it.
                _ => {}
            }
        }
        if let Some(mut op) = open {
            op.end_ns = life.end_ns.unwrap_or(u64::MAX);
            op.outcome = match life.exit_code {
                Some(SIGBUS_EXIT) => Outcome::Sigbus,
                _ => Outcome::Unknown,
            };
            self.ops.push(op);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_parse_back_with_the_pending_operation_of_a_sigbus_death() {
        let mut h = History::default();
        h.parse_events(
            "config fault_timeout_ms 10000 dead_after_ms 1000 segments 3 pages 64\n\
             node 2 kill 500\nnode 2 up 900\nnode 3 exit 3 950\n\
             clear 1 1000 1100 ok 2\nclear 0 1200 1300 err\nworker 4 1 exit 135 2000\n",
        )
        .unwrap();
        h.parse_worker_log(
            "worker 4 node 2 incarnation 1 start 10\n\
             B W 1 7 4294967297 20\nE 30 ok\n\
             B R 0 3 0 40\nE 50 ok 4294967298 4294967300 4294967298\n\
             B S 2 0 0 60\nE 70 err sync failed: 1 page(s)\n\
             B R 1 7 0 80\n",
        )
        .unwrap();
        assert_eq!(h.config.pages, 64);
        assert_eq!(h.events.len(), 3);
        assert_eq!(h.events[2].what, NodeEvent::Exit(3));
        assert_eq!(h.clears[0].pages, Some(2));
        assert_eq!(h.clears[1].pages, None);
        assert_eq!(h.ops.len(), 4);
        assert_eq!(h.ops[0].version, version(1, 1));
        assert_eq!(h.ops[1].tag, tag(0, 3));
        assert_eq!(h.ops[2].outcome, Outcome::Failed);
        assert_eq!(h.ops[3].outcome, Outcome::Sigbus);
        assert_eq!(h.ops[3].end_ns, 2000);
        assert_eq!(h.lives[&(4, 1)].node, 2);
    }
}
