//! The task that owns foca and the socket: its select loop, foca's timers, datagrams in
//! and out, and the membership view it reports.

use super::*;

/// A foca timer waiting for its deadline.
pub(super) struct ScheduledTimer {
    /// When it is due.
    at: Instant,
    /// Insertion order, to make entries unique.
    seq: u64,
    /// The timer itself.
    timer: Timer<GossipIdentity>,
}

impl ScheduledTimer {
    /// Ordering: deadline, then foca's own timer order (which it relies on
    /// when several timers are due at once), then insertion order.
    fn order(&self, other: &Self) -> Ordering {
        self.at
            .cmp(&other.at)
            .then_with(|| self.timer.cmp(&other.timer))
            .then_with(|| self.seq.cmp(&other.seq))
    }
}

impl PartialEq for ScheduledTimer {
    /// Equal iff [`ScheduledTimer::order`] says so.
    fn eq(&self, other: &Self) -> bool {
        self.order(other) == Ordering::Equal
    }
}

impl Eq for ScheduledTimer {}

impl PartialOrd for ScheduledTimer {
    /// See [`ScheduledTimer::order`].
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ScheduledTimer {
    /// See [`ScheduledTimer::order`].
    fn cmp(&self, other: &Self) -> Ordering {
        self.order(other)
    }
}

/// The task owning foca and the socket.
pub(super) struct Worker {
    /// The SWIM state machine.
    pub(super) foca: FocaInstance,
    /// Collects what foca wants done; drained after every interaction.
    pub(super) runtime: AccumulatingRuntime<GossipIdentity>,
    /// The gossip socket.
    pub(super) socket: UdpSocket,
    /// Envelope template (version and cluster set, payload empty).
    pub(super) envelope: GossipPacket,
    /// Reused encoding buffer.
    pub(super) send_buf: Vec<u8>,
    /// Reused buffer of the sealed datagram.
    pub(super) sealed_buf: Vec<u8>,
    /// Seals what is sent and opens what is received, if gossip is encrypted.
    pub(super) seal: Option<Arc<GossipSeal>>,
    /// Proves identities' node ids before they enter the view; `None` admits all.
    pub(super) verifier: Option<Verifier>,
    /// Our node id.
    pub(super) me: NodeId,
    /// Where to announce while we know no member.
    pub(super) seeds: Vec<SocketAddr>,
    /// Pending foca timers, earliest first.
    pub(super) timers: BinaryHeap<Reverse<ScheduledTimer>>,
    /// Next [`ScheduledTimer::seq`].
    pub(super) timer_seq: u64,
    /// Reported view: the representative alive identity of each node id.
    pub(super) view: HashMap<NodeId, GossipIdentity>,
    /// State published to the handle.
    pub(super) shared: Arc<Shared>,
    /// Membership callback.
    pub(super) on_membership: OnMembership,
    /// Rate limiter for dropped-datagram logs.
    pub(super) drops: ClockedLogPacer,
    /// Set while leaving: foca's `Defunct` is then expected.
    pub(super) leaving: bool,
    /// Where the task logs.
    pub(super) logger: Logger,
}

impl Worker {
    /// The select loop; returns on `Leave` or when the handle is dropped.
    pub(super) async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut buf = vec![0u8; RECV_BUFFER];
        let mut reannounce = tokio::time::interval(REANNOUNCE_EVERY);
        reannounce.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let next_timer = self.timers.peek().map(|Reverse(t)| t.at);
            let next_probe = self.verifier.as_ref().and_then(Verifier::next_due);
            tokio::select! {
                biased;
                command = commands.recv() => {
                    match command {
                        Some(Command::Leave(done)) => {
                            self.leave().await;
                            let _ = done.try_send(());
                        }
                        None => debug!(self.logger, "gossip handle dropped; stopping"),
                    }
                    return;
                }
                _ = sleep_until(next_timer.unwrap_or_else(Instant::now)), if next_timer.is_some() => {
                    self.fire_due_timers();
                }
                _ = reannounce.tick() => self.reannounce(),
                _ = sleep_until(next_probe.unwrap_or_else(Instant::now)), if next_probe.is_some() => {
                    if let Some(verifier) = &mut self.verifier {
                        verifier.start_due(Instant::now());
                    }
                }
                outcome = next_outcome(&mut self.verifier) => {
                    let changed = self
                        .verifier
                        .as_mut()
                        .is_some_and(|verifier| verifier.on_outcome(outcome, Instant::now()));
                    if changed && !self.leaving {
                        self.refresh_view();
                    }
                }
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((len, from)) => self.handle_datagram(&buf[..len], from),
                    Err(e) => {
                        debug!(self.logger, "gossip receive failed"; "error" => %e);
                        tokio::time::sleep(RECV_ERROR_PAUSE).await;
                    }
                },
            }
            self.drain().await;
        }
    }

    /// Hands every due timer to foca, in order.
    fn fire_due_timers(&mut self) {
        let now = Instant::now();
        while self.timers.peek().is_some_and(|Reverse(t)| t.at <= now) {
            let Some(Reverse(scheduled)) = self.timers.pop() else {
                break;
            };
            if let Err(e) = self.foca.handle_timer(scheduled.timer, &mut self.runtime) {
                debug!(self.logger, "foca timer error"; "error" => %e);
            }
        }
    }

    /// Announces to every seed if we know no member.
    fn reannounce(&mut self) {
        if self.foca.num_members() > 0 || self.seeds.is_empty() {
            return;
        }
        debug!(self.logger, "announcing to seeds"; "seeds" => ?self.seeds);
        for seed in &self.seeds {
            if let Err(e) = self
                .foca
                .announce(GossipIdentity::placeholder(*seed), &mut self.runtime)
            {
                debug!(self.logger, "foca announce error"; "seed" => %seed, "error" => %e);
            }
        }
    }

    /// Opens (if sealed), unwraps a datagram and feeds it to foca, dropping anything
    /// invalid.
    fn handle_datagram(&mut self, datagram: &[u8], from: SocketAddr) {
        match unwrap_datagram(self.seal.as_deref(), &self.envelope.cluster, datagram) {
            Ok(packet) => {
                if let Err(e) = self.foca.handle_data(&packet.payload, &mut self.runtime) {
                    debug!(self.logger, "foca rejected a packet"; "from" => %from, "error" => %e);
                }
            }
            Err((len, problem)) => self.log_drop(len, from, problem),
        }
    }

    /// Logs a dropped datagram, at most once per [`DROP_LOG_EVERY`].
    fn log_drop(&mut self, len: usize, from: SocketAddr, problem: String) {
        if let Some(suppressed) = self.drops.admit() {
            warn!(self.logger, "dropped a gossip datagram";
                "from" => %from, "len" => len, "reason" => problem,
                "suppressed_since_last_log" => suppressed);
        }
    }

    /// Leaves the cluster and sends the resulting packets.
    async fn leave(&mut self) {
        self.leaving = true;
        if let Err(e) = self.foca.leave_cluster(&mut self.runtime) {
            warn!(self.logger, "foca leave error"; "error" => %e);
        }
        self.drain().await;
        self.view.clear();
        self.shared.members().clear();
        info!(self.logger, "left the cluster");
    }

    /// Does what foca asked during the last interactions: sends packets,
    /// schedules timers, handles notifications.
    async fn drain(&mut self) {
        while let Some((to, data)) = self.runtime.to_send() {
            self.envelope.payload.clear();
            self.envelope.payload.extend_from_slice(&data);
            self.send_buf.clear();
            if let Err(e) = self.envelope.encode(&mut self.send_buf) {
                error!(self.logger, "cannot encode gossip envelope"; "error" => %e);
                continue;
            }
            let datagram = match &self.seal {
                None => &self.send_buf,
                Some(seal) => {
                    seal.seal(&self.send_buf, &mut self.sealed_buf);
                    &self.sealed_buf
                }
            };
            let addr = to.info.gossip_addr;
            if let Err(e) = self.socket.send_to(datagram, addr).await {
                debug!(self.logger, "gossip send failed"; "to" => %addr, "error" => %e);
            }
        }
        let now = Instant::now();
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.timer_seq += 1;
            self.timers.push(Reverse(ScheduledTimer {
                at: now + after,
                seq: self.timer_seq,
                timer,
            }));
        }
        let mut membership_changed = false;
        while let Some(notification) = self.runtime.to_notify() {
            match notification {
                OwnedNotification::MemberUp(id) => {
                    debug!(self.logger, "foca: member up"; "id" => ?id);
                    membership_changed = true;
                }
                OwnedNotification::MemberDown(id) => {
                    debug!(self.logger, "foca: member down"; "id" => ?id);
                    self.shared.foca_downs.fetch_add(1, AtomicOrdering::Relaxed);
                    membership_changed = true;
                }
                OwnedNotification::Rename(old, new) => {
                    debug!(self.logger, "foca: member renamed"; "old" => ?old, "new" => ?new);
                    membership_changed = true;
                }
                OwnedNotification::Active => info!(self.logger, "joined the cluster"),
                OwnedNotification::Idle => {
                    info!(self.logger, "no member left; announcing to seeds again")
                }
                OwnedNotification::Rejoin(id) => {
                    warn!(self.logger, "declared down by the cluster; rejoined with a renewed identity";
                        "bump" => id.bump)
                }
                OwnedNotification::Defunct => {
                    if !self.leaving {
                        error!(self.logger, "declared down and could not rejoin")
                    }
                }
            }
        }
        if membership_changed && !self.leaving {
            self.refresh_view();
        }
    }

    /// Recomputes the per-node view from foca's active members, publishes it
    /// and reports the differences.
    fn refresh_view(&mut self) {
        if let Some(verifier) = &mut self.verifier {
            let active = self.foca.iter_members().map(|m| m.id());
            verifier.track(active, self.me, Instant::now());
        }
        let verifier = self.verifier.as_ref();
        let (view, events) = diff_view(
            &self.view,
            self.foca.iter_members().map(|m| m.id()),
            self.me,
            |identity| verifier.map_or(Verification::Verified, |v| v.verification(identity)),
        );
        if events.is_empty() {
            self.view = view;
            return;
        }
        {
            let mut members = self.shared.members();
            members.clear();
            members.extend(
                view.iter()
                    .map(|(id, identity)| (*id, identity.info.clone())),
            );
        }
        self.view = view;
        for event in events {
            match &event {
                MembershipEvent::Up(node) => info!(self.logger, "member up";
                    "member" => node.node_id, "gossip_addr" => %node.gossip_addr,
                    "raft_addr" => %node.raft_addr, "datacenter" => &node.datacenter),
                MembershipEvent::Down(node) => info!(self.logger, "member down"; "member" => node),
            }
            let callback = &self.on_membership;
            if catch_unwind(AssertUnwindSafe(|| callback(event))).is_err() {
                error!(self.logger, "membership callback panicked");
            }
        }
    }
}

/// The next finished probe of `verifier`; never resolves without one (plaintext).
async fn next_outcome(verifier: &mut Option<Verifier>) -> verify::ProbeOutcome {
    match verifier {
        Some(verifier) => verifier.next_outcome().await,
        None => std::future::pending().await,
    }
}

/// The envelope of a received `datagram`, opened first under `seal` (if gossip is sealed):
/// only a packet of this protocol version and `cluster` goes to foca. A dropped datagram
/// gives its length (opened, if it opened) and why.
pub(crate) fn unwrap_datagram(
    seal: Option<&GossipSeal>,
    cluster: &str,
    datagram: &[u8],
) -> Result<GossipPacket, (usize, String)> {
    let opened;
    let datagram = match seal.map(|seal| seal.open(datagram)) {
        None => datagram,
        Some(Ok(plaintext)) => {
            opened = plaintext;
            &opened
        }
        Some(Err(e)) => return Err((datagram.len(), e.to_string())),
    };
    let problem = match GossipPacket::decode(datagram) {
        Err(e) => format!("undecodable envelope: {e}"),
        Ok(packet) if packet.version != PROTOCOL_VERSION => {
            format!(
                "protocol version {} (ours {PROTOCOL_VERSION})",
                packet.version
            )
        }
        Ok(packet) if packet.cluster != cluster => {
            format!("cluster {:?} (ours {:?})", packet.cluster, cluster)
        }
        Ok(packet) => return Ok(packet),
    };
    Err((datagram.len(), problem))
}
