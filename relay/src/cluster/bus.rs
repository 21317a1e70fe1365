//! Live traffic between relay nodes, over core NATS (brief §7: presence and control are
//! ephemeral): what one node would hand to its own links it also publishes, and the
//! nodes whose links it concerns hand it to theirs. Nothing here is durable: an envelope
//! or op published live is in the store first (or its sender resends it), and a member
//! that misses a live copy gets it from its mailbox or the op log at its next catch-up.
//!
//! Subjects: `<p>.live.<mesh>.<member>` for what goes to one member (deliveries,
//! receipts), subscribed by the node that member is connected to, for as long as it is;
//! `<p>.mesh.<mesh>` for what goes to a mesh (presence, departures, roster changes, ops,
//! invite claims and their answers), subscribed once per node. Each message names its
//! origin node, which ignores it.
//!
//! Liveness: each node says it is alive on `<p>.node.<id>` every [`HEARTBEAT`]; a node not
//! heard for a [`LEASE`] is gone ([`Leases`]), and the sessions linked through it are
//! offline at every other node (a node killed never says its sessions left).

use async_nats::HeaderMap;
use bytes::Bytes;
use claudemesh_schema::crypto::{MemberKey, hex};
use claudemesh_schema::wire::ClaimOutcome;
use claudemesh_schema::{ClaimId, MeshId, MessageId};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::{ClusterError, js_err};

/// What a bus message carries, so a receiving node knows what to do besides forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A frame for the links, nothing more.
    Frame,
    /// An envelope delivery (its id in `Cm-Id`: the link may acknowledge it).
    Deliver,
    /// A session's presence (the node keeps it, for routing and welcomes).
    Presence,
    /// A session left.
    Depart,
    /// The roster changed (the node reads it from the store).
    Roster,
    /// A member (`Cm-Except`) linked through the origin node: a link of it elsewhere is
    /// older, and closed.
    Linked,
    /// An invite claim waiting through the origin node (a `claim_pending` frame): the
    /// node keeps it, so that its admins can decide it, and hands it to them.
    Claim,
    /// A claim decided or withdrawn through the origin node (a [`Decided`]): its
    /// claimant may be waiting on this node.
    Decided,
    /// What a member (`Cm-Except`) had left of its rate limits at the node whose link it
    /// left for a newer one (a [`Budget`]): the node holding its link now holds it to
    /// that, so hopping between nodes refills nothing.
    Budget,
}

/// What [`Kind::Budget`] carries: tokens left.
#[derive(Debug, Serialize, Deserialize)]
pub struct Budget {
    /// Of the write bucket (envelopes, ops, acks, pings).
    pub writes: f64,
    /// Of the presence bucket.
    pub presence: f64,
}

/// What [`Kind::Decided`] carries.
#[derive(Debug, Serialize, Deserialize)]
pub struct Decided {
    /// The claim.
    pub claim: ClaimId,
    /// Its answer; `None` when it was withdrawn (its claimant left, not to come back).
    pub outcome: Option<ClaimOutcome>,
    /// How long the answer is kept for a claimant that is away, unix ms.
    pub keep_until: i64,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Frame => "frame",
            Self::Deliver => "deliver",
            Self::Presence => "presence",
            Self::Depart => "depart",
            Self::Roster => "roster",
            Self::Linked => "linked",
            Self::Claim => "claim",
            Self::Decided => "decided",
            Self::Budget => "budget",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "frame" => Self::Frame,
            "deliver" => Self::Deliver,
            "presence" => Self::Presence,
            "depart" => Self::Depart,
            "roster" => Self::Roster,
            "linked" => Self::Linked,
            "claim" => Self::Claim,
            "decided" => Self::Decided,
            "budget" => Self::Budget,
            _ => return None,
        })
    }
}

/// How often a node says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// How long a node stays alive after it was last heard: several heartbeats, so a busy
/// node or a NATS server failing over does not lose its sessions.
pub const LEASE: Duration = Duration::from_secs(10);

/// Which nodes are alive, as heard on the bus.
#[derive(Debug, Clone)]
pub struct Leases {
    me: String,
    started: Instant,
    heard: HashMap<String, Instant>,
}

impl Leases {
    /// Leases as seen by node `me`, started at `now`.
    pub fn new(me: &str, now: Instant) -> Self {
        Self {
            me: me.to_string(),
            started: now,
            heard: HashMap::new(),
        }
    }

    /// This node starts listening at `now`: silence counts from here.
    pub fn listening(&mut self, now: Instant) {
        self.started = now;
    }

    /// `node` said it is alive at `now`. `true` when it was gone until now (its lease had
    /// lapsed: its sessions were taken offline here, and are back).
    pub fn heard(&mut self, node: &str, now: Instant) -> bool {
        let was_gone = self.heard.contains_key(node) && !self.alive(node, now);
        if let Some(t) = self.heard.get_mut(node) {
            *t = now;
        } else {
            // Nodes restart with new ids: ones silent for long are forgotten.
            self.heard
                .retain(|_, t| now.saturating_duration_since(*t) < LEASE * 10);
            self.heard.insert(node.to_string(), now);
        }
        was_gone
    }

    fn within(&self, node: &str, now: Instant) -> bool {
        self.heard
            .get(node)
            .is_some_and(|t| now.saturating_duration_since(*t) < LEASE)
    }

    /// Whether `node` may still be alive at `now`. Silence proves nothing until this node
    /// has listened for a whole lease, nor while it does not hear itself (its own link to
    /// NATS is down, not the other node).
    pub fn alive(&self, node: &str, now: Instant) -> bool {
        node == self.me
            || now.saturating_duration_since(self.started) < LEASE
            || !self.within(&self.me, now)
            || self.within(node, now)
    }

    /// How many nodes were heard within the lease, this one included.
    pub fn count(&self, now: Instant) -> usize {
        let others = self
            .heard
            .keys()
            .filter(|n| **n != self.me && self.within(n, now))
            .count();
        others + 1
    }
}

/// A message from another node.
#[derive(Debug)]
pub struct Event {
    /// The node it came through.
    pub node: String,
    /// Its mesh.
    pub mesh: MeshId,
    /// What it is.
    pub kind: Kind,
    /// For a mesh message: the member whose own links do not get it (its sender).
    pub except: Option<MemberKey>,
    /// For a delivery: the envelope's id.
    pub id: Option<MessageId>,
    /// The frame, encoded.
    pub frame: Bytes,
}

/// Most bytes of live copies waiting to be published: past it (NATS slow or away) a copy
/// is dropped, not queued without end, and recovered from the store like any lost one.
pub const MAX_QUEUED_BYTES: usize = 64 << 20;

/// This node's side of the bus.
#[derive(Debug)]
pub struct Bus {
    client: async_nats::Client,
    prefix: String,
    node: String,
    tx: mpsc::UnboundedSender<(String, HeaderMap, Bytes)>,
    /// Payload bytes in `tx`, against [`MAX_QUEUED_BYTES`].
    queued: Arc<AtomicUsize>,
    /// Live copies dropped because the queue was full.
    dropped: AtomicU64,
    /// Dropping now (warned once per episode).
    dropping: AtomicBool,
    /// Tracks the publisher, which ends when the bus is dropped.
    _tasks: TaskTracker,
}

impl Bus {
    /// A bus on `client`'s cluster for the deployment `prefix`.
    pub fn new(client: async_nats::Client, prefix: &str) -> Self {
        let tasks = TaskTracker::new();
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, HeaderMap, Bytes)>();
        let prefix = prefix.to_lowercase();
        let node = hex(&claudemesh_schema::crypto::random_bytes::<8>());
        let weak = tx.downgrade();
        let alive = format!("{prefix}.node.{node}");
        let beat = client.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // Ends with the bus. Published straight, not behind queued live copies:
                // a node backed up is not a node gone.
                if weak.upgrade().is_none() {
                    return;
                }
                if let Err(e) = beat.publish(alive.clone(), Bytes::new()).await {
                    tracing::debug!(error = %e, "cannot say this relay node is alive");
                }
            }
        });
        let publisher = client.clone();
        let queued = Arc::new(AtomicUsize::new(0));
        let left = queued.clone();
        tasks.spawn(async move {
            while let Some((subject, headers, payload)) = rx.recv().await {
                left.fetch_sub(payload.len(), Ordering::Relaxed);
                // Ephemeral: a lost live copy is recovered from the store.
                if let Err(e) = publisher
                    .publish_with_headers(subject, headers, payload)
                    .await
                {
                    tracing::debug!(error = %e, "cannot publish to the other relay nodes");
                }
            }
        });
        Self {
            client,
            prefix,
            node,
            tx,
            queued,
            dropped: AtomicU64::new(0),
            dropping: AtomicBool::new(false),
            _tasks: tasks,
        }
    }

    /// Queue a message for publishing, unless the queue is full and it may be dropped
    /// (`kind`: live copies of what is stored may; the small control messages nothing
    /// recovers, a departure or a link's move, may not).
    fn queue(&self, kind: Kind, subject: String, headers: HeaderMap, payload: Bytes) {
        let n = payload.len();
        let droppable = matches!(kind, Kind::Frame | Kind::Deliver | Kind::Presence);
        let held = self.queued.fetch_add(n, Ordering::Relaxed) + n;
        if droppable && held > MAX_QUEUED_BYTES {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            if !self.dropping.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "the queue to the other relay nodes is full (NATS slow or unreachable): live copies are dropped, and recovered from the store"
                );
            }
            return;
        }
        if held < MAX_QUEUED_BYTES / 2 && self.dropping.swap(false, Ordering::Relaxed) {
            tracing::info!("the queue to the other relay nodes drains again");
        }
        if self.tx.send((subject, headers, payload)).is_err() {
            self.queued.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// Live copies dropped so far because the queue to NATS was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// This node's id on the bus (random at each start).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Every node's heartbeats, this one's included (hearing itself tells a node its own
    /// link to NATS is up).
    pub async fn heartbeats(&self) -> Result<async_nats::Subscriber, ClusterError> {
        self.client
            .subscribe(format!("{}.node.*", self.prefix))
            .await
            .map_err(|e| js_err("subscribing to the relay nodes' heartbeats")(e.to_string()))
    }

    /// The node a heartbeat came from.
    pub fn heartbeat<'m>(&self, m: &'m async_nats::Message) -> Option<&'m str> {
        m.subject
            .as_str()
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".node.")
            .filter(|n| !n.is_empty() && !n.contains('.'))
    }

    fn headers(&self, kind: Kind) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("Cm-Node", self.node.as_str());
        h.insert("Cm-Kind", kind.as_str());
        h
    }

    /// Publish `frame` to every other node's links in `mesh` (but `except`'s).
    pub fn to_mesh(&self, mesh: &MeshId, kind: Kind, except: Option<&MemberKey>, frame: &Bytes) {
        let mut h = self.headers(kind);
        if let Some(m) = except {
            h.insert("Cm-Except", hex(&m.0).as_str());
        }
        let subject = format!("{}.mesh.{}", self.prefix, hex(mesh.as_bytes()));
        self.queue(kind, subject, h, frame.clone());
    }

    /// Publish `frame` to `member`'s link, if it is connected to another node.
    pub fn to_member(
        &self,
        mesh: &MeshId,
        member: &MemberKey,
        id: Option<MessageId>,
        frame: &Bytes,
    ) {
        let kind = if id.is_some() {
            Kind::Deliver
        } else {
            Kind::Frame
        };
        let mut h = self.headers(kind);
        if let Some(id) = id {
            h.insert("Cm-Id", hex(id.as_bytes()).as_str());
        }
        let subject = self.member_subject(mesh, member);
        self.queue(kind, subject, h, frame.clone());
    }

    fn member_subject(&self, mesh: &MeshId, member: &MemberKey) -> String {
        format!(
            "{}.live.{}.{}",
            self.prefix,
            hex(mesh.as_bytes()),
            hex(&member.0)
        )
    }

    /// Every mesh message from the other nodes.
    pub async fn meshes(&self) -> Result<async_nats::Subscriber, ClusterError> {
        self.client
            .subscribe(format!("{}.mesh.*", self.prefix))
            .await
            .map_err(|e| js_err("subscribing to the other relay nodes")(e.to_string()))
    }

    /// What the other nodes send `member` (connected here).
    pub async fn member(
        &self,
        mesh: &MeshId,
        member: &MemberKey,
    ) -> Result<async_nats::Subscriber, ClusterError> {
        self.client
            .subscribe(self.member_subject(mesh, member))
            .await
            .map_err(|e| js_err("subscribing for a member's live traffic")(e.to_string()))
    }

    /// Read a message another node published (`None`: this node's own, or not ours).
    pub fn event(&self, m: &async_nats::Message) -> Option<Event> {
        let h = m.headers.as_ref()?;
        if h.get("Cm-Node").map(|v| v.as_str()) == Some(self.node.as_str()) {
            return None;
        }
        let node = h.get("Cm-Node")?.as_str().to_string();
        let kind = Kind::parse(h.get("Cm-Kind")?.as_str())?;
        // `<p>.mesh.<mesh>` or `<p>.live.<mesh>.<member>`.
        let mut parts = m.subject.as_str().split('.').skip(2);
        let mesh = MeshId::from_bytes(super::unhex::<16>(parts.next()?)?);
        let except = h
            .get("Cm-Except")
            .and_then(|v| super::unhex::<32>(v.as_str()))
            .map(MemberKey);
        let id = h
            .get("Cm-Id")
            .and_then(|v| super::unhex::<16>(v.as_str()))
            .map(MessageId::from_bytes);
        Some(Event {
            node,
            mesh,
            kind,
            except,
            id,
            frame: m.payload.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_gone_only_when_this_one_has_listened_a_lease_and_hears_itself() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        // (this node heard itself at, the other node heard at, asked at, alive?)
        let cases: &[(Option<u64>, Option<u64>, u64, bool)] = &[
            (Some(11), Some(11), 12, true), // both heard lately
            (Some(20), Some(9), 20, false), // the other silent for a lease
            (Some(20), Some(11), 20, true), // silent for less than a lease
            (Some(5), None, 5, true),       // never heard, but this node just started
            (Some(12), None, 12, false),    // never heard in a whole lease
            (Some(5), Some(5), 20, true),   // this node deaf too: its own link is down
            (None, None, 30, true),         // never heard itself: nothing is known
        ];
        for &(me_at, other_at, now, alive) in cases {
            let mut l = Leases::new("me", t0);
            if let Some(t) = me_at {
                l.heard("me", s(t));
            }
            if let Some(t) = other_at {
                l.heard("other", s(t));
            }
            assert_eq!(
                l.alive("other", s(now)),
                alive,
                "me {me_at:?}, other {other_at:?}, at {now}"
            );
            assert!(l.alive("me", s(now)), "a node is never gone to itself");
            let counted = usize::from(other_at.is_some_and(|t| now - t < 10)) + 1;
            assert_eq!(l.count(s(now)), counted, "{me_at:?} {other_at:?} {now}");
            // Heard now: back from gone exactly when it was gone (and known before).
            let back = other_at.is_some() && !alive;
            assert_eq!(
                l.heard("other", s(now)),
                back,
                "{me_at:?} {other_at:?} {now}"
            );
            assert!(!l.heard("other", s(now)), "heard twice is not back twice");
        }
    }
}
