//! The lock workload and its checkers: clients take and release locks through the core's
//! `LockClient` and the homes' `LockTable`s; no lock is ever held by two clients, and none is
//! left held by nobody.

use super::{nid, ClientState, ControlViolation, ControlWorld, Ev, Msg, LOCKS, LOCK_SEGS};
use pagemesh_core::{LockOutput, Waiter};

impl ControlWorld {
    /// Client `c` of `node` asks for its next lock, or stops.
    pub(crate) fn client_next(&mut self, node: usize, c: usize) -> Result<(), ControlViolation> {
        let cl = self.nodes[node].clients[c];
        if cl.left == 0 || !self.faults_on {
            self.nodes[node].clients[c].state = ClientState::Idle;
            self.nodes[node].clients[c].left = 0;
            return Ok(());
        }
        let seg = LOCK_SEGS[self.rng.below(LOCK_SEGS.len())];
        let lock = self.rng.below(LOCKS as usize) as u32;
        self.next_token += 1;
        let token = self.next_token;
        let home = self.homes[&seg];
        let n = &mut self.nodes[node];
        n.client.acquire(token, nid(home), seg, lock);
        let cl = &mut n.clients[c];
        cl.left -= 1;
        cl.state = ClientState::Waiting { token, seg, lock };
        self.send(node, home, Msg::Acquire { seg, lock, token });
        let wait = self.rng.range(100, 1500);
        self.arm(node, c, wait);
        Ok(())
    }

    /// Client `c`'s one timer fires in `delay_ms` (an earlier one is void).
    fn arm(&mut self, node: usize, c: usize, delay_ms: u64) {
        let n = &mut self.nodes[node];
        n.clients[c].op += 1;
        let ev = Ev::Client {
            node,
            client: c,
            epoch: n.epoch,
            op: n.clients[c].op,
        };
        self.schedule(delay_ms, ev);
    }

    /// A client's timer: its wait timed out, or its hold is over. Either way it releases.
    pub(crate) fn client_timer(&mut self, node: usize, c: usize) -> Result<(), ControlViolation> {
        let (token, seg, lock) = match self.nodes[node].clients[c].state {
            ClientState::Idle => return Ok(()),
            ClientState::Waiting { token, seg, lock } => {
                self.stats.lock_timeouts += 1;
                (token, seg, lock)
            }
            ClientState::Holding { token, seg, lock } => {
                let h = self.holders.remove(&(seg, lock));
                if h != Some((node, token)) {
                    return Err(self.fail(format!(
                        "node{node} client {token} releases lock {lock} of {seg:?}, but the checker has {h:?} holding it"
                    )));
                }
                (token, seg, lock)
            }
        };
        self.log(|| format!("node{node} client {token} releases lock {lock} of {seg:?}"));
        let home = self.homes[&seg];
        self.nodes[node].client.release(token);
        self.nodes[node].clients[c].state = ClientState::Idle;
        self.send(node, home, Msg::Release { seg, lock, token });
        self.client_next(node, c)
    }

    /// A lock message at `to`.
    pub(crate) fn lock_msg(
        &mut self,
        from: usize,
        to: usize,
        msg: Msg,
    ) -> Result<(), ControlViolation> {
        let mut out = Vec::new();
        let t = &mut self.nodes[to].table;
        match msg {
            Msg::Acquire { seg, lock, token } => t.acquire(
                Waiter {
                    node: nid(from),
                    token,
                },
                seg,
                lock,
                &mut out,
            ),
            Msg::Release { seg, lock, token } => t.release(
                Waiter {
                    node: nid(from),
                    token,
                },
                seg,
                lock,
                &mut out,
            ),
            Msg::Report { held, waiting } => t.report(nid(from), &held, &waiting, &mut out),
            Msg::Granted { token } => return self.granted(to, token),
            Msg::Refused { token } => return self.refused(to, token),
            other => unreachable!("not a lock message: {other:?}"),
        }
        self.exec_locks(to, out)
    }

    /// Carry out what the home's table decided.
    pub(crate) fn exec_locks(
        &mut self,
        home: usize,
        out: Vec<LockOutput>,
    ) -> Result<(), ControlViolation> {
        for o in out {
            match o {
                LockOutput::Granted { to, .. } => {
                    let msg = Msg::Granted { token: to.token };
                    self.send(home, to.node.0 as usize, msg);
                }
                LockOutput::Refused { to, .. } => {
                    let msg = Msg::Refused { token: to.token };
                    self.send(home, to.node.0 as usize, msg);
                }
                LockOutput::Released { .. } => {}
            }
        }
        Ok(())
    }

    fn granted(&mut self, node: usize, token: u64) -> Result<(), ControlViolation> {
        let Some(want) = self.nodes[node].client.granted(token) else {
            return Ok(());
        };
        let key = (want.seg, want.lock);
        if let Some(&(n, t)) = self.holders.get(&key) {
            return Err(self.fail(format!(
                "lock {} of {:?} granted to node{node} client {token} while node{n} client {t} holds it",
                want.lock, want.seg
            )));
        }
        let Some(c) = self.nodes[node]
            .clients
            .iter()
            .position(|c| matches!(c.state, ClientState::Waiting { token: t, .. } if t == token))
        else {
            return Err(self.fail(format!(
                "node{node}: the lock client has token {token} waiting, but no client waits with it"
            )));
        };
        self.stats.grants += 1;
        self.holders.insert(key, (node, token));
        self.log(|| {
            format!(
                "node{node} client {token} HOLDS lock {} of {:?}",
                want.lock, want.seg
            )
        });
        self.nodes[node].clients[c].state = ClientState::Holding {
            token,
            seg: want.seg,
            lock: want.lock,
        };
        let hold = self.rng.range(5, 80);
        self.arm(node, c, hold);
        Ok(())
    }

    fn refused(&mut self, node: usize, token: u64) -> Result<(), ControlViolation> {
        let Some(c) = self.nodes[node]
            .clients
            .iter()
            .position(|c| matches!(c.state, ClientState::Waiting { token: t, .. } if t == token))
        else {
            return Ok(());
        };
        self.nodes[node].client.release(token);
        self.nodes[node].clients[c].state = ClientState::Idle;
        self.client_next(node, c)
    }

    /// After quiescence: every client is idle, so no table may still hold a lock (a lost
    /// release), and no table may still wait for reports.
    pub(crate) fn final_lock_checks(&self) -> Result<(), ControlViolation> {
        if let Some(((seg, lock), h)) = self.holders.iter().next() {
            return Err(self.fail(format!(
                "lock {lock} of {seg:?} still held by {h:?} after every client stopped"
            )));
        }
        for seg in LOCK_SEGS {
            let home = self.homes[&seg];
            let t = &self.nodes[home].table;
            if t.is_recovering() {
                return Err(self.fail(format!(
                    "node{home}'s lock table still waits for the reports of {:?}",
                    t.awaiting()
                )));
            }
            for lock in 0..LOCKS {
                if let Some(w) = t.holder(seg, lock) {
                    return Err(self.fail(format!(
                        "lock {lock} of {seg:?} is held by {w:?} at its home, though no client holds it (a lost release)"
                    )));
                }
            }
        }
        Ok(())
    }
}
