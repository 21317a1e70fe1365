//! The presence cache: every session of every mesh as last announced (signed, opened).

use claudemesh_schema::crypto::{BoxPublic, MemberKey};
use claudemesh_schema::message::Profile;
use claudemesh_schema::{MeshId, SessionId};
use rusqlite::{Connection, params};

use super::{Result, Store, StoreError, corrupt, unwrap_corrupt};

/// A cached presence.
#[derive(Debug, Clone)]
pub(crate) struct PresenceRow {
    /// The mesh.
    pub mesh: MeshId,
    /// The session.
    pub session: SessionId,
    /// Its member.
    pub member: MemberKey,
    /// Its box key.
    pub session_key: BoxPublic,
    /// Presence version.
    pub seq: i64,
    /// Opened profile.
    pub profile: Profile,
    /// Online as last known.
    pub online: bool,
    /// Last seen, unix ms.
    pub last_seen: i64,
    /// The member its person name was first seen with, when that is another member (an
    /// impostor's name, or a name two people share): shown as a warning.
    pub name_holder: Option<MemberKey>,
    /// The user confirmed this member's key (`verify --confirm`).
    pub confirmed: bool,
    /// The first name this member was seen with, when it now shows another.
    pub renamed_from: Option<String>,
}

impl PresenceRow {
    /// The person and the session label this presence shows: a member's daemon session
    /// is the person itself (no label); presences from daemons before 0.2 name only the
    /// session.
    pub(crate) fn names(&self) -> (String, String) {
        let p = &self.profile;
        let person = if p.member_name.is_empty() {
            p.name.clone()
        } else {
            p.member_name.clone()
        };
        let label = if p.kind == "cli" || p.name == person {
            String::new()
        } else {
            p.name.clone()
        };
        (person, label)
    }
}

impl Store {
    /// Cache a presence (kept only if not older than what is cached).
    /// Pins the presence's person name to its member if nobody holds that name yet, and
    /// returns who holds it (when another member does) and whether this member is
    /// confirmed.
    pub(crate) async fn upsert_presence(&self, p: PresenceRow) -> Result<PinState> {
        let groups =
            serde_json::to_string(&p.profile.groups).map_err(|_| StoreError::Corrupt("groups"))?;
        let delivery = serde_json::to_string(&p.profile.delivery)
            .map_err(|_| StoreError::Corrupt("delivery"))?;
        let extra = serde_json::to_string(&Extra::of(&p.profile))
            .map_err(|_| StoreError::Corrupt("profile extra"))?;
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO presence (mesh, session, member, session_key, seq, name, kind, status,
                    summary, groups, hostname, cwd, visible, online, last_seen, delivery, role, client,
                    member_name, extra)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
                    ?19, ?20)
                 ON CONFLICT (mesh, session) DO UPDATE SET
                    member = excluded.member, session_key = excluded.session_key,
                    seq = excluded.seq, name = excluded.name, kind = excluded.kind,
                    status = excluded.status, summary = excluded.summary, groups = excluded.groups,
                    hostname = excluded.hostname, cwd = excluded.cwd, visible = excluded.visible,
                    online = excluded.online, last_seen = max(presence.last_seen, excluded.last_seen),
                    delivery = excluded.delivery, role = excluded.role, client = excluded.client,
                    member_name = excluded.member_name, extra = excluded.extra
                 WHERE excluded.seq >= presence.seq AND presence.member = excluded.member",
                params![
                    p.mesh.as_bytes(),
                    p.session.as_bytes(),
                    p.member.0,
                    p.session_key.0,
                    p.seq,
                    p.profile.name,
                    p.profile.kind,
                    p.profile.status.as_str(),
                    p.profile.summary,
                    groups,
                    p.profile.hostname,
                    p.profile.cwd,
                    p.profile.visible,
                    p.online,
                    p.last_seen,
                    delivery,
                    p.profile.role,
                    p.profile.client,
                    p.profile.member_name,
                    extra
                ],
            )?;
            let person = pin_name(&p.names().0);
            if !person.is_empty() {
                tx.execute(
                    "INSERT OR IGNORE INTO name_pins (mesh, name, member, first_seen, shown)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![p.mesh.as_bytes(), person, p.member.0, p.last_seen, p.names().0],
                )?;
            }
            let pins = pins_tx(tx, p.mesh)?;
            Ok(PinState {
                name_holder: pins.holder_other_than(&p.names().0, &p.member),
                confirmed: pins.confirmed.contains(&p.member),
                renamed_from: pins.renamed_from(&p.names().0, &p.member),
            })
        })
        .await
    }

    /// Record that the user checked `member`'s key (its safety number) in `mesh`.
    pub(crate) async fn confirm_member(&self, mesh: MeshId, member: MemberKey) -> Result<()> {
        let now = claudemesh_schema::now_ms();
        self.write(move |tx| {
            tx.execute(
                "INSERT OR IGNORE INTO confirmed_members (mesh, member, at) VALUES (?1, ?2, ?3)",
                params![mesh.as_bytes(), member.0, now],
            )
            .map(|_| ())
        })
        .await
    }

    /// Mark a session offline.
    pub(crate) async fn presence_offline(
        &self,
        mesh: MeshId,
        session: SessionId,
        at: i64,
    ) -> Result<()> {
        self.write(move |tx| {
            tx.execute(
                "UPDATE presence SET online = 0, last_seen = max(last_seen, ?3)
                 WHERE mesh = ?1 AND session = ?2",
                params![mesh.as_bytes(), session.as_bytes(), at],
            )
            .map(|_| ())
        })
        .await
    }

    /// Mark every cached session of a mesh offline (link lost, or a fresh snapshot comes).
    pub(crate) async fn all_offline(&self, mesh: MeshId) -> Result<()> {
        self.write(move |tx| {
            tx.execute(
                "UPDATE presence SET online = 0 WHERE mesh = ?1",
                params![mesh.as_bytes()],
            )
            .map(|_| ())
        })
        .await
    }
}

/// The cached presence of one session.
pub(crate) fn q_presence_of(
    conn: &Connection,
    mesh: MeshId,
    session: SessionId,
) -> Result<Option<PresenceRow>> {
    Ok(presence_rows(conn, mesh, Some(session))?.into_iter().next())
}

/// Cached presences of a mesh.
pub(crate) fn q_presence(conn: &Connection, mesh: MeshId) -> Result<Vec<PresenceRow>> {
    presence_rows(conn, mesh, None)
}

fn presence_row(mesh: MeshId, r: &rusqlite::Row<'_>) -> rusqlite::Result<PresenceRow> {
    let b32 = |i: usize, what| -> rusqlite::Result<[u8; 32]> {
        r.get::<_, Vec<u8>>(i)?
            .try_into()
            .map_err(|_| corrupt(what))
    };
    let session: [u8; 16] = r
        .get::<_, Vec<u8>>(0)?
        .try_into()
        .map_err(|_| corrupt("session id"))?;
    let status: String = r.get(6)?;
    let groups: String = r.get(8)?;
    let delivery: String = r.get(14)?;
    // A store from before version 16 (read by a newer CLI with the daemon down) has no
    // `extra` column: those fields are empty then.
    let extra: Extra = r
        .get::<_, String>(18)
        .ok()
        .and_then(|e| serde_json::from_str(&e).ok())
        .unwrap_or_default();
    Ok(PresenceRow {
        mesh,
        session: SessionId::from_bytes(session),
        member: MemberKey(b32(1, "member key")?),
        session_key: BoxPublic(b32(2, "session key")?),
        seq: r.get(3)?,
        profile: Profile {
            name: r.get(4)?,
            member_name: r.get(17)?,
            kind: r.get(5)?,
            status: status.parse().map_err(|_| corrupt("status"))?,
            summary: r.get(7)?,
            groups: serde_json::from_str(&groups).map_err(|_| corrupt("groups"))?,
            hostname: r.get(9)?,
            cwd: r.get(10)?,
            visible: r.get(11)?,
            delivery: serde_json::from_str(&delivery).unwrap_or_default(),
            role: r.get(15)?,
            client: r.get(16)?,
            avatar: extra.avatar,
            title: extra.title,
            bio: extra.bio,
            capabilities: extra.capabilities,
            group_roles: extra.group_roles,
        },
        online: r.get(12)?,
        last_seen: r.get(13)?,
        name_holder: None,
        confirmed: false,
        renamed_from: None,
    })
}

/// The key a person name is pinned under: its skeleton (names that read alike, such as
/// `alice` and a Cyrillic `аlice`, are one name).
fn pin_name(person: &str) -> String {
    claudemesh_schema::names::skeleton(person)
}

/// What the pins say about one presence.
#[derive(Debug, Default)]
pub(crate) struct PinState {
    /// Another member holds its person name.
    pub(crate) name_holder: Option<MemberKey>,
    /// The user confirmed its member.
    pub(crate) confirmed: bool,
    /// Its member's first name, when it now shows another.
    pub(crate) renamed_from: Option<String>,
}

/// Names pinned to member keys in a mesh, and the members the user confirmed.
#[derive(Debug, Default)]
pub(crate) struct Pins {
    names: std::collections::HashMap<String, MemberKey>,
    confirmed: std::collections::HashSet<MemberKey>,
    /// Each member's first pinned name: (first seen, skeleton, as shown).
    first: std::collections::HashMap<MemberKey, (i64, String, String)>,
}

impl Pins {
    /// `member`'s first name, when `person` is another.
    pub(crate) fn renamed_from(&self, person: &str, member: &MemberKey) -> Option<String> {
        let (_, skel, shown) = self.first.get(member)?;
        (*skel != pin_name(person) && !shown.is_empty()).then(|| shown.clone())
    }

    /// Did the user confirm `member`'s key?
    pub(crate) fn is_confirmed(&self, member: &MemberKey) -> bool {
        self.confirmed.contains(member)
    }

    /// The member holding `person`, when it is not `member`.
    pub(crate) fn holder_other_than(&self, person: &str, member: &MemberKey) -> Option<MemberKey> {
        self.names
            .get(&pin_name(person))
            .copied()
            .filter(|k| k != member)
    }
}

/// The pins and confirmations of `mesh`.
pub(crate) fn q_pins(conn: &Connection, mesh: MeshId) -> Result<Pins> {
    Ok(pins_tx(conn, mesh)?)
}

fn pins_tx(conn: &Connection, mesh: MeshId) -> rusqlite::Result<Pins> {
    let mut pins = Pins::default();
    let mut stmt = conn
        .prepare_cached("SELECT name, member, first_seen, shown FROM name_pins WHERE mesh = ?1")?;
    for row in stmt.query_map(params![mesh.as_bytes()], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, String>(3)?,
        ))
    })? {
        let (name, member, at, shown) = row?;
        if let Ok(k) = <[u8; 32]>::try_from(member.as_slice()) {
            let k = MemberKey(k);
            let first = pins
                .first
                .entry(k)
                .or_insert((at, name.clone(), shown.clone()));
            if at < first.0 {
                *first = (at, name.clone(), shown);
            }
            pins.names.insert(name, k);
        }
    }
    let mut stmt = conn.prepare_cached("SELECT member FROM confirmed_members WHERE mesh = ?1")?;
    for row in stmt.query_map(params![mesh.as_bytes()], |r| r.get::<_, Vec<u8>>(0))? {
        if let Ok(k) = <[u8; 32]>::try_from(row?.as_slice()) {
            pins.confirmed.insert(MemberKey(k));
        }
    }
    Ok(pins)
}

/// The profile fields stored as one JSON object (`presence.extra`, version 16).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
struct Extra {
    avatar: String,
    title: String,
    bio: String,
    capabilities: Vec<String>,
    group_roles: std::collections::BTreeMap<String, String>,
}

impl Extra {
    fn of(p: &Profile) -> Self {
        Self {
            avatar: p.avatar.clone(),
            title: p.title.clone(),
            bio: p.bio.clone(),
            capabilities: p.capabilities.clone(),
            group_roles: p.group_roles.clone(),
        }
    }
}

fn presence_rows(
    conn: &Connection,
    mesh: MeshId,
    only: Option<SessionId>,
) -> Result<Vec<PresenceRow>> {
    const COLS: &str = "session, member, session_key, seq, name, kind, status, summary, groups,
        hostname, cwd, visible, online, last_seen, delivery, role, client, member_name";
    let stmt = conn
        .prepare_cached(&format!(
            "SELECT {COLS}, extra FROM presence WHERE mesh = ?1 AND (?2 IS NULL OR session = ?2)"
        ))
        .or_else(|_| {
            // A store from before version 16, read with the daemon down.
            conn.prepare_cached(&format!(
                "SELECT {COLS} FROM presence WHERE mesh = ?1 AND (?2 IS NULL OR session = ?2)"
            ))
        });
    let mut stmt = stmt?;
    let only = only.map(|s| s.as_bytes().to_vec());
    let rows = stmt.query_map(params![mesh.as_bytes(), only], |r| presence_row(mesh, r))?;
    // A store from before names were pinned (read by a newer CLI) has no pins yet.
    let pins = pins_tx(conn, mesh).unwrap_or_default();
    let mut out = Vec::new();
    for r in rows {
        let mut p = r.map_err(unwrap_corrupt)?;
        p.name_holder = pins.holder_other_than(&p.names().0, &p.member);
        p.confirmed = pins.confirmed.contains(&p.member);
        p.renamed_from = pins.renamed_from(&p.names().0, &p.member);
        out.push(p);
    }
    Ok(out)
}
