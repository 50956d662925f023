//! Why the cluster side must stop the daemon. The library never exits the process: the engine
//! stops with a [`Fatal`], which reaches `pagemesh_daemon::run` as its error, and only the
//! binary turns it into an exit code (so attached processes get SIGBUS from their watchdogs).

use pagemesh_types::NodeId;

/// A reason to stop this node.
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    /// A peer declared this incarnation dead: its copies no longer count.
    #[error(
        "{by} refused this node: {reason}. This incarnation (epoch {epoch}) was declared dead and \
         its copies no longer count; stopping so attached processes get SIGBUS instead of stale \
         data. Restart pagemeshd: it rejoins with a new epoch"
    )]
    Fenced {
        by: NodeId,
        reason: String,
        epoch: u64,
    },
    /// The kernel could not be made to agree with the coherence protocol about a page.
    #[error(
        "{what}: the page cache no longer matches the coherence protocol; stopping this node \
         (restart it to rejoin)"
    )]
    Diverged { what: String },
    /// The engine panicked (a bug): the core's state is unknown.
    #[error("the cluster engine panicked (a bug): {message}; stopping so attached processes fail loudly")]
    EnginePanicked { message: String },
}

impl Fatal {
    /// The daemon's exit code for it (documented in docs/cluster.md).
    pub fn exit_code(&self) -> u8 {
        match self {
            Fatal::Fenced { .. } => 3,
            Fatal::EnginePanicked { .. } => 70,
            Fatal::Diverged { .. } => 71,
        }
    }

    /// What ended the engine thread: a [`Fatal`] it stopped with ([`stop`]), or a panic.
    pub fn of_unwind(payload: Box<dyn std::any::Any + Send>) -> Fatal {
        match payload.downcast::<Fatal>() {
            Ok(f) => *f,
            Err(p) => {
                let message = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".into());
                Fatal::EnginePanicked { message }
            }
        }
    }
}

/// Stop the engine with `f`, from however deep in it: the engine thread unwinds to its
/// boundary (without the panic hook: this is no bug), which hands `f` to `run`.
pub fn stop(f: Fatal) -> ! {
    std::panic::resume_unwind(Box::new(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_unwinds_to_the_boundary_as_itself_and_a_panic_as_a_bug() {
        let r = std::panic::catch_unwind(|| {
            stop(Fatal::Diverged {
                what: "page 3".into(),
            })
        });
        let f = Fatal::of_unwind(r.expect_err("stopped"));
        assert_eq!(f.exit_code(), 71);
        assert!(f.to_string().contains("page 3"), "{f}");
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let r = std::panic::catch_unwind(|| panic!("an index out of range"));
        std::panic::set_hook(prev);
        let f = Fatal::of_unwind(r.expect_err("panicked"));
        assert_eq!(f.exit_code(), 70);
        assert!(f.to_string().contains("index out of range"), "{f}");
        let fenced = Fatal::Fenced {
            by: NodeId(2),
            reason: "declared dead".into(),
            epoch: 4,
        };
        assert_eq!(fenced.exit_code(), 3);
    }
}
