//! Counts of how often each protocol branch ran, so the simulator can list branches that no
//! seed reached.

macro_rules! branches {
    ($($name:ident),* $(,)?) => {
        /// A branch of the protocol worth covering.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[allow(missing_docs)]
        pub enum Branch { $($name),* }

        impl Branch {
            /// Every branch.
            pub const ALL: &'static [Branch] = &[$(Branch::$name),*];

            /// Its name.
            pub fn name(self) -> &'static str {
                match self { $(Branch::$name => stringify!($name)),* }
            }
        }
    };
}

branches! {
    FaultHit,
    FaultJoinPending,
    FaultUpgradeFromShared,
    FaultMiss,
    EvictBusy,
    EvictRequested,
    GrantDuplicate,
    GrantInstallData,
    GrantKeepCopy,
    GrantRequeueWriters,
    DenyPoisoned,
    DenyRetryLateWaiters,
    FetchNoCopy,
    FetchStale,
    FetchDowngradeToShared,
    FetchDowngradeToExclusiveClean,
    InvalNoCopy,
    InvalStale,
    InvalDrop,
    FaultTimedOut,
    AcquireRetransmit,
    CallRetransmit,
    CallTimedOut,
    HomeResendDeny,
    HomeDuplicateRequest,
    HomeQueueFull,
    HomeStaleReply,
    HomeFetchReplyNone,
    SyncDuplicate,
    SyncEmpty,
    SyncStarted,
    SyncQueuedBehindInFlight,
    HomeMapperReadFailed,
    FlushMapperWriteFailed,
    PeerRestartRescue,
    PeerRestartAbortTxn,
    PeerRestartFinishInFlight,
    PeerRestartHome,
    PeerRestartPoison,
    HomeRetransmit,
    StaleEpochDropped,
    PeerDeadUnknownEpoch,
    HomeIntentSet,
    HomeIntentFailed,
    FlushIntentClear,
    HomeEvictIntentClear,
    HomeRebuildingIgnored,
    RebuildStarted,
    RebuildRetransmit,
    RebuildPoison,
    RebuildDone,
    HoldingsReported,
    HoldingsInParts,
    HoldingsSnapshotReplaced,
    OldIncarnationHello,
    FaultUnknownSegment,
    ClearPoisonDone,
    ClearPoisonNotPoisoned,
    HomeFetchFromOwner,
    FlushFetchOwner,
    HomeFetchFromSharer,
    FlushFetchSharer,
    HomeZeroFillDormant,
    HomeMapperRead,
    HomeLostPoison,
    HomeInvalidate,
    HomeGrantExclusive,
    HomeGrantShared,
    HomeGrantNoData,
    FlushMapperWrite,
    FlushPoisoned,
    FlushClean,
    HomeEvictWriteBack,
    HomeEvictInval,
}

/// Per-branch counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Coverage {
    counts: Vec<u64>,
}

impl Default for Coverage {
    fn default() -> Self {
        Coverage {
            counts: vec![0; Branch::ALL.len()],
        }
    }
}

impl Coverage {
    /// Count one run of `b`.
    pub fn hit(&mut self, b: Branch) {
        self.counts[b as usize] += 1;
    }

    /// How often `b` ran.
    pub fn count(&self, b: Branch) -> u64 {
        self.counts[b as usize]
    }

    /// Add another node's counts.
    pub fn merge(&mut self, other: &Coverage) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    /// Branches that never ran.
    pub fn unreached(&self) -> Vec<Branch> {
        Branch::ALL
            .iter()
            .copied()
            .filter(|b| self.count(*b) == 0)
            .collect()
    }
}
