//! `pagemesh chaos-worker`: one worker process of the chaos test. It maps every segment and,
//! until its deadline, writes versioned values into the pages it owns, reads any page, and
//! syncs segments, logging each operation before it begins and when it ends
//! (`history.rs` has the format). A SIGBUS ends the process (exit 135) in the middle of an
//! operation, which its log then shows as begun and never ended; the test starts a new
//! incarnation.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use clap::Args;
use pagemesh::{Client, Mapping};
use pagemesh_types::PAGE_SIZE;

use super::history::{now_ns, tag, version};
use crate::memtest::splitmix64;

/// The worker could not reach its daemon, or lost it: the test starts it again later.
pub const EXIT_NO_DAEMON: u8 = 10;

const WORDS_PER_PAGE: usize = (PAGE_SIZE / 8) as usize;

#[derive(Args)]
pub struct WorkerArgs {
    /// This worker's number (for the log).
    #[arg(long)]
    pub worker: u32,
    /// How many workers write each segment this one writes.
    #[arg(long, default_value_t = 1)]
    pub writers: u32,
    /// Which of them this one is: it writes the pages `p` with `p % writers == rank`.
    #[arg(long, default_value_t = 0)]
    pub rank: u32,
    /// The node whose daemon this worker talks to (for the log).
    #[arg(long)]
    pub node: u32,
    /// This worker's incarnation (from 1; versions rise with it).
    #[arg(long)]
    pub incarnation: u32,
    /// The segments, in the order of their numbers in the log.
    #[arg(long, value_delimiter = ',', required = true)]
    pub segments: Vec<String>,
    /// Pages of each segment that have a writer (the rest are only read).
    #[arg(long)]
    pub owned_pages: u64,
    /// Where to append the log.
    #[arg(long)]
    pub log: PathBuf,
    /// Stop at this `CLOCK_MONOTONIC` time (ns).
    #[arg(long)]
    pub until_ns: u64,
    /// Work on this segment only (by its number; default: any).
    #[arg(long)]
    pub segment: Option<u32>,
    /// Pause between operations.
    #[arg(long, default_value_t = 1000)]
    pub pause_us: u64,
    /// Percent of operations that are syncs.
    #[arg(long, default_value_t = 4)]
    pub sync_percent: u64,
    /// Seed of the choice of operations.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Read every page of every segment once, then exit (the final check).
    #[arg(long)]
    pub read_all: bool,
    /// Only read, again and again, one page (`SEG:PAGE`) picked from these: a reader that
    /// keeps its copy mapped, as a process polling a flag does.
    #[arg(long, value_delimiter = ',')]
    pub hot_pages: Vec<String>,
}

/// The log: one `write` per line, appended, so a line is whole unless the process dies in it.
struct Log {
    file: File,
}

impl Log {
    fn line(&mut self, text: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
        let s = text.to_string();
        self.file.write_all(s.as_bytes()).context("writing the log")
    }
}

struct Worker<'a> {
    a: &'a WorkerArgs,
    client: Client,
    maps: Vec<Mapping>,
    log: Log,
    rng: u64,
    seq: u32,
}

pub fn run(socket: &Path, a: WorkerArgs) -> anyhow::Result<ExitCode> {
    let attached = Client::connect(socket).and_then(|client| {
        let maps = a
            .segments
            .iter()
            .map(|s| client.attach(s))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((client, maps))
    });
    let (client, maps) = match attached {
        Ok(x) => x,
        Err(e) => {
            eprintln!("chaos-worker {}: {e}", a.worker);
            return Ok(ExitCode::from(EXIT_NO_DAEMON));
        }
    };
    // The incarnation (and its log) starts once it is attached to a live daemon.
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&a.log)
        .with_context(|| format!("opening {}", a.log.display()))?;
    let mut log = Log { file };
    log.line(format_args!(
        "worker {} node {} incarnation {} start {}\n",
        a.worker,
        a.node,
        a.incarnation,
        now_ns()
    ))?;
    // A SIGBUS ends the process with its own exit code, naming the offset in segment 0.
    pagemesh_uffd::sigbus::report_sigbus_for(maps[0].as_ptr() as u64, maps[0].len() as u64)?;
    let seed = a.seed ^ u64::from(a.worker) << 40 ^ u64::from(a.incarnation) << 20;
    let mut w = Worker {
        a: &a,
        client,
        maps,
        log,
        rng: splitmix64(seed),
        seq: 0,
    };
    if a.read_all {
        for seg in 0..w.maps.len() as u32 {
            for page in 0..w.pages(seg) {
                w.read(seg, page)?;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !a.hot_pages.is_empty() {
        let pick = w.next(a.hot_pages.len() as u64) as usize;
        let (seg, page) = a.hot_pages[pick]
            .split_once(':')
            .and_then(|(s, p)| Some((s.parse().ok()?, p.parse().ok()?)))
            .with_context(|| format!("--hot-pages: not SEG:PAGE: {}", a.hot_pages[pick]))?;
        return w.poll(seg, page);
    }
    w.run()
}

impl Worker<'_> {
    fn next(&mut self, n: u64) -> u64 {
        self.rng = splitmix64(self.rng);
        self.rng % n.max(1)
    }

    fn pages(&self, seg: u32) -> u64 {
        self.maps[seg as usize].len() as u64 / PAGE_SIZE
    }

    fn words(&self, seg: u32, page: u64) -> &[AtomicU64] {
        let at = page as usize * WORDS_PER_PAGE;
        &self.maps[seg as usize].atomics_u64()[at..at + WORDS_PER_PAGE]
    }

    fn run(&mut self) -> anyhow::Result<ExitCode> {
        let segs = self.maps.len() as u64;
        let writers = u64::from(self.a.writers.max(1));
        let mine = self.a.owned_pages.div_ceil(writers);
        while now_ns() < self.a.until_ns {
            if self.maps.iter().any(Mapping::daemon_lost) {
                return Ok(ExitCode::from(EXIT_NO_DAEMON));
            }
            let seg = match self.a.segment {
                Some(s) => s,
                None => self.next(segs) as u32,
            };
            let roll = self.next(100);
            if roll < self.a.sync_percent {
                if !self.sync(seg)? {
                    return Ok(ExitCode::from(EXIT_NO_DAEMON));
                }
            } else if roll < 50 {
                let k = self.next(mine);
                let page = k * writers + u64::from(self.a.rank);
                if page < self.a.owned_pages.min(self.pages(seg)) {
                    self.write(seg, page)?;
                }
            } else {
                let page = self.next(self.pages(seg));
                self.read(seg, page)?;
            }
            std::thread::sleep(std::time::Duration::from_micros(self.a.pause_us));
        }
        Ok(ExitCode::SUCCESS)
    }

    /// Read one page until the deadline.
    fn poll(&mut self, seg: u32, page: u64) -> anyhow::Result<ExitCode> {
        while now_ns() < self.a.until_ns {
            if self.maps.iter().any(Mapping::daemon_lost) {
                return Ok(ExitCode::from(EXIT_NO_DAEMON));
            }
            self.read(seg, page)?;
            std::thread::sleep(std::time::Duration::from_micros(self.a.pause_us));
        }
        Ok(ExitCode::SUCCESS)
    }

    /// Word 511, then the tag, then word 0: a reader that finds version v in word 0 finds at
    /// least v in word 511.
    fn write(&mut self, seg: u32, page: u64) -> anyhow::Result<()> {
        self.seq += 1;
        let v = version(self.a.incarnation, self.seq);
        let t0 = now_ns();
        self.log.line(format_args!("B W {seg} {page} {v} {t0}\n"))?;
        let words = self.words(seg, page);
        words[WORDS_PER_PAGE - 1].store(v, Ordering::SeqCst);
        words[1].store(tag(seg, page), Ordering::SeqCst);
        words[0].store(v, Ordering::SeqCst);
        let t1 = now_ns();
        self.log.line(format_args!("E {t1} ok\n"))
    }

    fn read(&mut self, seg: u32, page: u64) -> anyhow::Result<()> {
        let t0 = now_ns();
        self.log.line(format_args!("B R {seg} {page} 0 {t0}\n"))?;
        let words = self.words(seg, page);
        let v = words[0].load(Ordering::SeqCst);
        let t = words[1].load(Ordering::SeqCst);
        let last = words[WORDS_PER_PAGE - 1].load(Ordering::SeqCst);
        let t1 = now_ns();
        self.log.line(format_args!("E {t1} ok {v} {t} {last}\n"))
    }

    /// A sync of the segment; false if the daemon is gone.
    fn sync(&mut self, seg: u32) -> anyhow::Result<bool> {
        let t0 = now_ns();
        self.log.line(format_args!("B S {seg} 0 0 {t0}\n"))?;
        let r = self.client.sync(&self.a.segments[seg as usize]);
        let t1 = now_ns();
        match r {
            Ok(_) => self.log.line(format_args!("E {t1} ok\n"))?,
            Err(e) => {
                let msg = e.to_string().replace('\n', " ");
                self.log.line(format_args!("E {t1} err {msg}\n"))?;
                if matches!(
                    e,
                    pagemesh::ClientError::Connect { .. } | pagemesh::ClientError::Frame { .. }
                ) {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}
