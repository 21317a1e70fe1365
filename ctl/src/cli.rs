//! Command-line syntax (clap), and the argument forms parsed by hand (`claudemesh --resume X`
//! for `launch`, durations). Behaviour lives in the modules `commands` dispatches to.

use clap::{Args, Parser, Subcommand};
use clap_complete::engine::ArgValueCandidates;
use std::ffi::OsString;

use crate::exit::{Exit, Failure, Res};
use crate::output;

/// What `claudemesh --help` says first.
pub(crate) const TAGLINE: &str = "A peer mesh for your Claude Code sessions: they see each other, \
message each other and share state, on one machine or many.";

/// The top-level help: commands in groups, by what a user wants to do (every visible
/// command is listed; a unit test holds it to that).
const HELP: &str = "\
{about}

{usage-heading} {usage}

Start:
  up            Start the local relay and daemon; create your personal mesh
  down          Stop the daemon and its embedded relay
  invite        Invite another machine or person (list, revoke, pending, approve, deny)
  join          Join a mesh with an invite link (or just `claudemesh <link>`)
  launch        Start Claude Code with mesh messages pushed in
  install       Register claudemesh with Claude Code (uninstall removes it)
  uninstall     Remove what install added
  doctor        Check the setup; each failure with its fix

Talk:
  peers         Who is here (works offline from the cache)
  send          Message a peer, @group or everyone (*)
  reply         Answer a message you received
  inbox         Read new messages (--follow, --all)
  history       Messages you received, read or not
  sent          How far your messages got
  profile       Your name, groups, summary, status
  status        The daemon and each mesh's relay link
  info          A mesh at a glance: members, groups, shared state
  whoami        Your identity in each mesh

Share:
  state         Shared key-value state
  remember      Store a memory every peer can recall
  recall        Search the mesh's memories
  forget        Delete a memory
  task          Shared tasks: create, claim, complete, list
  reserve       Reserve files so others know not to edit them
  release       Release a reservation
  reservations  Live file reservations
  skill         Shared skills (also MCP prompts)
  context       What sessions learned about the codebase
  remind        Reminders to yourself, a peer or @group
  file          Files, end to end encrypted: share, get, list, status, grant, rm
  share-dir     Share a folder (read-only) for peers to read; list, rm
  peer-file     List (ls) or read (cat) a file in a peer's shared folder
  tools         Shared MCP servers: list, call a tool, audit calls answered here
  deploy        Hosted MCP services: add, update, list, logs, rm, scope, schema

Meshes and trust:
  create        Create a mesh (you own it)
  list          Meshes you have joined
  leave         Leave a mesh
  mesh          Change a mesh (set-relay), the default one (use), its name here (rename)
  member        Remove a member or change a role
  verify        Compare safety numbers with a peer
  grant         Give a peer capabilities back
  revoke        Take capabilities from a peer
  block         Drop everything a peer sends
  grants        Peers whose capabilities differ from the default
  audit         Check the shared-state log for tampering

This machine:
  daemon        The background daemon (start, stop, status, run)
  service       Run the daemon as a user service
  relay         Run a relay for other machines
  backup        Back up identity, meshes and config
  vault         Secrets (API tokens) kept on this machine, per mesh
  mcp-host      Host a local MCP server for the mesh: add, list, rm, logs
  host          Run the mesh's hosted services here: enable, disable, status
  restore       Restore a backup
  completions   Shell completion scripts
  wait          Wait for a link or a peer (for scripts)
  status-line   One status line for Claude Code
  mcp           The MCP server Claude Code runs
  debug         Diagnostics

Options:
{options}

`claudemesh help <command>` for more.{after-help}";

#[derive(Debug, Parser)]
#[command(
    name = "claudemesh",
    version,
    about = TAGLINE,
    long_about = None,
    help_template = HELP,
    after_help = crate::exit::help()
)]
pub(crate) struct Cli {
    /// No confirmations, hints or progress (data you asked for and errors still print).
    #[arg(short, long, global = true)]
    pub(crate) quiet: bool,
    /// None: bare `claudemesh`, which prints the welcome (see `commands::welcome`).
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Start the local relay and the daemon, and create a personal mesh if you have none.
    Up(UpArgs),
    /// Stop the daemon and its embedded relay (commands that need the daemon start it
    /// again; `up --no-relay` runs it without the relay).
    Down(JsonArg),
    /// Manage the background daemon.
    Daemon {
        #[command(subcommand)]
        action: DaemonAction,
    },
    /// Create a mesh (you become its owner).
    Create(CreateArgs),
    /// Invite someone to a mesh; `invite list|revoke|pending|approve|deny` manage invites.
    Invite(InviteArgs),
    /// Join a mesh with an invite link.
    Join(JoinArgs),
    /// List the meshes you have joined.
    List(JsonArg),
    /// Leave a mesh and delete its keys (and its vault) from this machine.
    Leave(LeaveArgs),
    /// Change a mesh itself (owner or admin): `mesh set-relay <host:port>` moves it to
    /// another relay address, and every member follows.
    Mesh {
        #[command(subcommand)]
        action: MeshAction,
    },
    /// Change a mesh's members (owner or admin): `member remove <peer>`, `member role
    /// <peer> admin|member`.
    Member {
        #[command(subcommand)]
        action: MemberAction,
    },
    /// List peers (answers from the local cache when the relay or daemon is down).
    Peers(PeersArgs),
    /// Send a message to a peer (name or id), a group (@name) or everyone (*).
    Send(SendArgs),
    /// Read new messages.
    Inbox(InboxArgs),
    /// Answer a message you received: goes to the session that sent it.
    Reply(ReplyArgs),
    /// Messages you received, read or not, newest last (`inbox --all`).
    History(HistoryArgs),
    /// How far a message you sent got (queued, relayed, delivered, surfaced, read); no id:
    /// your last sends.
    Sent(SentArgs),
    /// Show the daemon and each mesh's relay link.
    Status(JsonArg),
    /// A mesh at a glance: relay and link, you, every member with role, groups and who
    /// is in them, shared-state keys and counts, unread and queued messages.
    Info(MeshJson),
    /// Show your identity in each mesh.
    Whoami(JsonArg),
    /// Show or change your display name, groups, summary or status.
    Profile(ProfileArgs),
    /// Wait until a relay link or a peer reaches a state (for scripts).
    Wait(WaitArgs),
    /// Run a relay in the foreground (to self-host one for other machines).
    Relay(claudemesh_relay::cli::RelayArgs),
    /// MCP server on stdio (Claude Code runs this; see `claudemesh install`).
    Mcp,
    /// Register claudemesh with Claude Code: MCP server, hooks, skill (and a status line).
    Install(InstallArgs),
    /// Remove what `install` added to Claude Code's configuration.
    Uninstall,
    /// Handle a Claude Code hook event (reads the hook JSON on stdin; always exits 0).
    #[command(hide = true)]
    Hook(HookArgs),
    /// Print one status line (mesh, peers online, unread) from the local cache.
    StatusLine,
    /// Start Claude Code in the mesh (`--resume`, `-c`, `--join <link>`, `--message-mode`,
    /// `--system-prompt`); flags it does not know go to `claude` (`claudemesh --resume X`
    /// works too).
    Launch(LaunchArgs),
    /// Shared key-value state of a mesh: get, set, list.
    State {
        #[command(subcommand)]
        action: StateAction,
    },
    /// Store a memory every peer can recall.
    Remember(RememberArgs),
    /// Search the mesh's memories (full text, ranked; works offline).
    Recall(RecallArgs),
    /// Delete a memory by id.
    Forget(ItemArgs),
    /// Shared tasks: create, claim, complete, list.
    Task {
        #[command(subcommand)]
        action: TaskAction,
    },
    /// Reserve files (globs) so sessions elsewhere know not to edit them (advisory;
    /// overlapping exclusive reservations are refused by log order, the same everywhere).
    Reserve(ReserveArgs),
    /// Release a file reservation.
    Release(ItemArgs),
    /// List live file reservations.
    Reservations(ReservationsArgs),
    /// Safety numbers: compare them with a peer (in person or another trusted channel) to
    /// know no one, relay included, swapped your keys.
    Verify(VerifyArgs),
    /// Give a peer capabilities back: dm, broadcast, state-read, state-write, file-read, all.
    Grant(GrantArgs),
    /// Take capabilities from a peer (enforced here: dm, broadcast, state-write, file-read).
    Revoke(GrantArgs),
    /// Drop everything a peer sends, silently (`--undo` lifts it).
    Block(BlockArgs),
    /// Peers whose capabilities differ from the default (everything).
    Grants(MeshJson),
    /// Print a shell completion script: `claudemesh completions bash > ~/.local/share/bash-completion/completions/claudemesh`.
    Completions(CompletionsArgs),
    /// Check the setup: daemon, config and key files, relays (QUIC and WebSocket), Claude
    /// Code registration, service, disk; each failure with its fix.
    Doctor(JsonArg),
    /// Back up identity, meshes and config to a passphrase-sealed file.
    Backup(BackupArgs),
    /// Restore a backup into the config directory (stop the daemon first).
    Restore(RestoreArgs),
    /// Run the daemon as a user service (systemd on Linux, launchd on macOS).
    Service {
        #[command(subcommand)]
        action: ServiceAction,
    },
    /// Shared skills: reusable instructions every peer can load (also MCP prompts).
    Skill {
        #[command(subcommand)]
        action: SkillAction,
    },
    /// Shared contexts: what sessions learned about the codebase.
    Context {
        #[command(subcommand)]
        action: ContextAction,
    },
    /// Files, end to end encrypted: share one with the mesh, a peer or @group, fetch,
    /// list (works offline), who fetched it, grant, delete.
    File {
        #[command(subcommand)]
        action: FileAction,
    },
    /// Schedule a reminder to yourself, a peer or @group (`remind list`, `remind cancel <id>`).
    Remind(RemindArgs),
    // Peer folders (issue 15).
    /// Share a folder of this machine for peers to read (read-only: peers never write);
    /// `share-dir list`, `share-dir rm <path>`.
    ShareDir(ShareDirArgs),
    /// A peer's shared folders: `peer-file ls <peer> [dir]`, `peer-file cat <peer> <path>`.
    PeerFile {
        #[command(subcommand)]
        action: PeerFileAction,
    },
    /// Host a local stdio MCP server for the mesh: the daemon runs it (restarted after a
    /// crash) and peers call its tools (`mcp-host add <name> -- <command…>`, `list`,
    /// `rm`, `logs`).
    McpHost {
        #[command(subcommand)]
        action: McpHostAction,
    },
    /// The mesh's shared MCP servers: `tools list` (works offline), `tools call <server>
    /// <tool> [JSON]`, `tools audit` (calls this machine's servers answered).
    Tools {
        #[command(subcommand)]
        action: ToolsAction,
    },
    // Hosted services (issue 16, tier 2).
    /// Offer this daemon as a host of the mesh's hosted services (`deploy`): `host enable`,
    /// `host disable`, `host status` (this machine's sandbox, what runs here, every host).
    Host {
        #[command(subcommand)]
        action: HostAction,
    },
    /// Hosted MCP services: deploy a server (a file, git commit, npm or PyPI package) to
    /// the members' daemons that ran `host enable`; it runs sandboxed there, without
    /// anyone's laptop (`deploy add|update|list|logs|rm|scope|schema`).
    Deploy {
        #[command(subcommand)]
        action: DeployAction,
    },
    // The vault (issue 16).
    /// Secrets (API tokens and the like) kept on this machine, sealed, per mesh: `vault set
    /// <name>` (the value from stdin, --file or typed without echo, never from the command
    /// line), `vault list` (never values), `vault rm <name>`.
    Vault {
        #[command(subcommand)]
        action: VaultAction,
    },
    /// Check the mesh's shared-state log for tampering.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Diagnostics: state digest, holding a relay link down.
    Debug {
        #[command(subcommand)]
        action: DebugAction,
    },
}

#[derive(Debug, Args)]
pub(crate) struct SentArgs {
    /// The message id `send` printed, or the start of it (none: list the last sends).
    #[arg(add = ArgValueCandidates::new(crate::complete::sent_ids))]
    pub(crate) id: Option<String>,
    /// With no id: how many of the last sends to list.
    #[arg(long, default_value_t = 20)]
    pub(crate) limit: u32,
    /// Wait until it got at least this far.
    #[arg(long, value_parser = ["relayed", "delivered", "surfaced", "read"])]
    pub(crate) wait_for: Option<String>,
    /// Give up waiting after this many seconds (exit code 9).
    #[arg(long, default_value_t = 30)]
    pub(crate) timeout: u64,
    /// Print JSON (with `schema_version`).
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct HookArgs {
    /// The event: user-prompt-submit, post-tool-use, stop, session-start.
    pub(crate) event: String,
}

#[derive(Debug, Args)]
pub(crate) struct ReservationsArgs {
    /// Also released, expired and refused ones.
    #[arg(long)]
    pub(crate) all: bool,
    #[command(flatten)]
    pub(crate) opts: MeshJson,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The peer (name, id or fingerprint prefix); default: every member.
    pub(crate) peer: Option<String>,
    /// You compared the safety number with this peer (in person, or over a channel you
    /// trust): its messages are shown as verified from now on.
    #[arg(long, requires = "peer")]
    pub(crate) confirm: bool,
    #[command(flatten)]
    pub(crate) opts: MeshJson,
}

#[derive(Debug, Args)]
pub(crate) struct BlockArgs {
    /// The peer (name, id or fingerprint prefix).
    pub(crate) peer: String,
    /// Lift the block.
    #[arg(long)]
    pub(crate) undo: bool,
    #[command(flatten)]
    pub(crate) opts: MeshJson,
}

#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    pub(crate) shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub(crate) struct BackupArgs {
    /// The file to write.
    pub(crate) file: std::path::PathBuf,
    /// Read the passphrase from this file (else CLAUDEMESH_BACKUP_PASSPHRASE, else it is asked
    /// twice on the terminal, not echoed; or the first line of stdin).
    #[arg(long)]
    pub(crate) passphrase_file: Option<std::path::PathBuf>,
    /// Print JSON (with `schema_version`).
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct RestoreArgs {
    /// The backup file.
    pub(crate) file: std::path::PathBuf,
    /// Read the passphrase from this file (else CLAUDEMESH_BACKUP_PASSPHRASE, else stdin).
    #[arg(long)]
    pub(crate) passphrase_file: Option<std::path::PathBuf>,
    /// Replace an identity that is already there.
    #[arg(long)]
    pub(crate) yes: bool,
}

/// Mesh selection and output format, shared by the shared-state commands.
#[derive(Debug, Args, Clone)]
pub(crate) struct MeshJson {
    /// Mesh name or id prefix (needed when you are in several).
    #[arg(long, add = ArgValueCandidates::new(crate::complete::meshes))]
    pub(crate) mesh: Option<String>,
    /// Print JSON (with `schema_version`).
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum StateAction {
    /// Print a key's value.
    Get {
        /// The key.
        key: String,
        #[command(flatten)]
        opts: MeshJson,
    },
    /// Set a key (the value is parsed as JSON when it is valid JSON, else kept as text;
    /// `null` deletes the key).
    Set {
        /// The key.
        key: String,
        /// The value.
        #[arg(required = true, num_args = 1..)]
        value: Vec<String>,
        #[command(flatten)]
        opts: MeshJson,
    },
    /// List keys (optionally only those starting with a prefix).
    List {
        /// Key prefix.
        prefix: Option<String>,
        #[command(flatten)]
        opts: MeshJson,
    },
    /// Print changes to shared keys as they happen (one line each; --json for JSON lines).
    Watch {
        /// Key prefix.
        prefix: Option<String>,
        #[command(flatten)]
        opts: MeshJson,
    },
}

#[derive(Debug, Args)]
pub(crate) struct RememberArgs {
    /// The text.
    #[arg(required = true, num_args = 1..)]
    pub(crate) text: Vec<String>,
    /// Tags, comma-separated.
    #[arg(long)]
    pub(crate) tags: Option<String>,
    #[command(flatten)]
    pub(crate) opts: MeshJson,
}

#[derive(Debug, Args)]
pub(crate) struct RecallArgs {
    /// Words to search for (none: the newest memories).
    pub(crate) query: Vec<String>,
    /// Only memories with this tag (repeatable).
    #[arg(long = "tag")]
    pub(crate) tags: Vec<String>,
    /// Most results.
    #[arg(long, default_value_t = 20)]
    pub(crate) limit: u32,
    #[command(flatten)]
    pub(crate) opts: MeshJson,
}

#[derive(Debug, Args)]
pub(crate) struct ItemArgs {
    /// Id or unique id prefix.
    pub(crate) id: String,
    #[command(flatten)]
    pub(crate) opts: MeshJson,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TaskAction {
    /// Create a task.
    Create {
        /// Title.
        #[arg(required = true, num_args = 1..)]
        title: Vec<String>,
        /// Details.
        #[arg(long, default_value = "")]
        body: String,
        /// low, normal, high or urgent.
        #[arg(long, default_value = "normal")]
        priority: String,
        /// Tags, comma-separated.
        #[arg(long)]
        tags: Option<String>,
        /// Suggested assignee (a peer name).
        #[arg(long)]
        assignee: Option<String>,
        #[command(flatten)]
        opts: MeshJson,
    },
    /// Claim an open task (the first claim in the mesh's log wins; exit code 10 if you lost).
    Claim(ItemArgs),
    /// Mark a task done.
    Complete {
        /// Id or unique id prefix.
        id: String,
        /// Result summary.
        #[arg(long, default_value = "")]
        result: String,
        #[command(flatten)]
        opts: MeshJson,
    },
    /// List tasks.
    List {
        /// open, claimed or done.
        #[arg(long)]
        status: Option<String>,
        /// Assignee name.
        #[arg(long)]
        assignee: Option<String>,
        #[command(flatten)]
        opts: MeshJson,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum FileAction {
    /// Share a file (at most 256 MiB): sealed on this machine, chunks stored at the relay
    /// as ciphertext (or served by this daemon when the relay stores none).
    Share {
        /// The file.
        path: std::path::PathBuf,
        /// Only for this peer or @group (default: everyone in the mesh).
        #[arg(long, add = ArgValueCandidates::new(crate::complete::peers))]
        to: Option<String>,
        /// Tags, comma-separated.
        #[arg(long)]
        tags: Option<String>,
        /// Dropped after a day (or `--ttl`) instead of kept until deleted.
        #[arg(long)]
        ephemeral: bool,
        /// Lifetime of an ephemeral share, with a unit (`90m`, `2h`, `7d`).
        #[arg(long, requires = "ephemeral")]
        ttl: Option<String>,
        /// The name others see (default: the file's name).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        opts: MeshJson,
    },
    /// Fetch a file: every chunk and the whole file are checked; nothing half-written
    /// ever sits at the target path.
    Get {
        /// File id or unique id prefix.
        id: String,
        /// Where to save it (a file or a directory; default: its name in the current
        /// directory).
        #[arg(short, long)]
        output: Option<std::path::PathBuf>,
        /// Replace a file already there.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        opts: MeshJson,
    },
    /// Files shared in the mesh (from the local copy; works offline).
    List {
        /// Only files with all these tags, comma-separated.
        #[arg(long)]
        tags: Option<String>,
        /// Only files shared by this peer.
        #[arg(long)]
        author: Option<String>,
        /// Only files you shared.
        #[arg(long, conflicts_with = "readable")]
        mine: bool,
        /// Only files you can read.
        #[arg(long)]
        readable: bool,
        #[command(flatten)]
        opts: MeshJson,
    },
    /// A file's readers and who fetched it.
    Status(ItemArgs),
    /// Delete a file you shared (admins: any file).
    Rm(ItemArgs),
    /// Give a peer or @group the key of a file you shared (nothing is uploaded again;
    /// a grant cannot be taken back: share anew to shut someone out of new versions).
    Grant {
        /// File id or unique id prefix.
        id: String,
        /// The peer or @group.
        #[arg(add = ArgValueCandidates::new(crate::complete::peers))]
        to: String,
        #[command(flatten)]
        opts: MeshJson,
    },
}

#[derive(Debug, Args)]
pub(crate) struct ReserveArgs {
    /// Glob patterns (`*`, `?`, `**`), relative to the repository root.
    #[arg(required = true, num_args = 1..)]
    pub(crate) patterns: Vec<String>,
    /// Shared instead of exclusive (others may hold shared reservations too).
    #[arg(long)]
    pub(crate) shared: bool,
    /// How long it lasts: 90s, 30m, 2h (default 1h).
    #[arg(long, default_value = "1h")]
    pub(crate) ttl: String,
    /// Why (shown to others).
    #[arg(long, default_value = "")]
    pub(crate) reason: String,
    #[command(flatten)]
    pub(crate) opts: MeshJson,
}

#[derive(Debug, Args)]
pub(crate) struct RemindArgs {
    /// The message (or `list`, or `cancel <id>`).
    #[arg(required = true, num_args = 1..)]
    pub(crate) message: Vec<String>,
    /// Deliver after this long: 90s, 30m, 2h, 1d.
    #[arg(long = "in", conflicts_with_all = ["at", "cron"])]
    pub(crate) after: Option<String>,
    /// Deliver at this time: RFC 3339 (2026-11-23T18:00:00Z) or unix seconds.
    #[arg(long, conflicts_with = "cron")]
    pub(crate) at: Option<String>,
    /// Deliver on a 5-field cron schedule, in UTC ("0 9 * * 1-5").
    #[arg(long)]
    pub(crate) cron: Option<String>,
    /// Recipient: a peer, @group or * (default: you).
    #[arg(long)]
    pub(crate) to: Option<String>,
    /// With `list`: also done and cancelled reminders.
    #[arg(long)]
    pub(crate) all: bool,
    #[command(flatten)]
    pub(crate) opts: MeshJson,
}

// Peer folders (issue 15).
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct ShareDirArgs {
    #[command(subcommand)]
    pub(crate) action: Option<ShareDirAction>,
    /// The folder to share (peers name it by its last component).
    pub(crate) path: Option<std::path::PathBuf>,
    /// Read-only: the default and the only mode (peers can list and read, never write).
    #[arg(long)]
    pub(crate) read_only: bool,
    /// Only these may read it: a member (name or fingerprint prefix) or @group; repeat
    /// for several. Default: every member holding the `file-read` grant.
    #[arg(long, value_name = "PEER|@GROUP")]
    pub(crate) to: Vec<String>,
    #[command(flatten)]
    pub(crate) opts: MeshJson,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ShareDirAction {
    /// The folders this machine shares.
    List(MeshJson),
    /// Stop sharing a folder.
    Rm {
        /// The folder.
        path: std::path::PathBuf,
        #[command(flatten)]
        opts: MeshJson,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PeerFileAction {
    /// List a peer's shared folders, or what is in one (names, kinds, sizes).
    Ls {
        /// The peer (name, fingerprint or session id prefix).
        peer: String,
        /// `<folder>/<path inside>`; none: the folders it shares with you.
        dir: Option<String>,
        /// Wait this many seconds for its daemon to answer.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
        #[command(flatten)]
        opts: MeshJson,
    },
    /// Print a file from a peer's shared folder, bytes as they are (at most 96 KiB).
    Cat {
        /// The peer (name, fingerprint or session id prefix).
        peer: String,
        /// `<folder>/<path inside>`, as `peer-file ls` shows it.
        path: String,
        /// Wait this many seconds for its daemon to answer.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
        /// Mesh name or id prefix (needed when you are in several).
        #[arg(long, add = ArgValueCandidates::new(crate::complete::meshes))]
        mesh: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum McpHostAction {
    /// Declare a local stdio MCP server; the daemon starts it, publishes its tools and
    /// keeps it running.
    Add {
        /// Server name: a-z, 0-9 and `-` (peers see its tools as `<name>__<tool>`).
        name: String,
        /// One-line description for the catalog.
        #[arg(long)]
        description: Option<String>,
        /// Offer only this tool (repeat for several; default: every tool it lists).
        #[arg(long, value_name = "TOOL")]
        allow: Vec<String>,
        /// Who may see and call it: `mesh` (default), `@group`, or members (names or
        /// fingerprint prefixes) separated by commas.
        #[arg(long)]
        scope: Option<String>,
        /// Set an environment variable for it (`KEY=VALUE`; repeat for several).
        #[arg(long, value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Its working directory (default: `<config>/mcp/<mesh>/<name>`).
        #[arg(long)]
        cwd: Option<std::path::PathBuf>,
        /// Replace a server of this name this daemon hosts.
        #[arg(long)]
        replace: bool,
        /// Wait this many seconds for it to list its tools (default 30).
        #[arg(long)]
        wait: Option<u64>,
        #[command(flatten)]
        opts: MeshJson,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// The servers this daemon hosts, with their state.
    List(MeshJson),
    /// Stop hosting a server; it leaves the mesh's catalog.
    Rm {
        /// Server name.
        name: String,
        #[command(flatten)]
        opts: MeshJson,
    },
    /// The last lines a hosted server wrote to stderr (and its starts and exits).
    Logs {
        /// Server name.
        name: String,
        /// Most lines.
        #[arg(long, default_value_t = 200)]
        lines: usize,
        #[command(flatten)]
        opts: MeshJson,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ToolsAction {
    /// The mesh's shared MCP servers and their tools, with whether each host is online.
    List(MeshJson),
    /// Call a tool of a shared server wherever it is hosted; prints its result.
    Call {
        /// Server name.
        server: String,
        /// Tool name.
        tool: String,
        /// Arguments, a JSON object (`-`: read from stdin); default `{}`.
        arguments: Option<String>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        #[command(flatten)]
        opts: MeshJson,
    },
    /// Calls this machine's hosted servers were asked to run (who, what, how it ended;
    /// never arguments or results), newest first.
    Audit {
        /// Most entries.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        opts: MeshJson,
    },
}

// Hosted services (issue 16, tier 2).
#[derive(Debug, Subcommand)]
pub(crate) enum HostAction {
    /// Offer this daemon to run the mesh's hosted services (sandboxed with bubblewrap:
    /// read-only root, home and /tmp hidden, no network unless deployed with `--network`).
    Enable(MeshJson),
    /// Stop offering this daemon as a host; services it runs move to their next host.
    Disable(MeshJson),
    /// Whether this daemon hosts, its sandbox (or why there is none), what runs here,
    /// and every host of the mesh.
    Status(MeshJson),
}

/// What a deploy says about a service, shared by `deploy add` and `deploy update` (in an
/// update, what is not given is kept from the current version).
#[derive(Debug, Args)]
pub(crate) struct DeploySpec {
    /// Run this local file: it is shared with the mesh and placed in the service's
    /// directory on each host.
    #[arg(long, value_name = "PATH")]
    pub(crate) file: Option<std::path::PathBuf>,
    /// Clone this git repository (`https://`, `http://`, `ssh://` or `git://`; a
    /// repository on the host's own disk is refused), at `--commit`.
    #[arg(long, value_name = "URL", requires = "commit")]
    pub(crate) git: Option<String>,
    /// The git commit to run (7 to 64 hex digits; a branch name is refused). In an update
    /// of a git service, alone: the same repository at another commit.
    #[arg(long, value_name = "SHA")]
    pub(crate) commit: Option<String>,
    /// Install this npm package at an exact version.
    #[arg(long, value_name = "PKG@VERSION")]
    pub(crate) npm: Option<String>,
    /// Install this PyPI package at an exact version.
    #[arg(long, value_name = "PKG==VERSION")]
    pub(crate) pypi: Option<String>,
    /// A member daemon to run it (name or fingerprint prefix); repeat for several, in
    /// order of preference (default: every member that ran `claudemesh host enable`).
    #[arg(long = "host", value_name = "SEL")]
    pub(crate) hosts: Vec<String>,
    /// An environment variable: `KEY=VALUE`, or `KEY=$vault:NAME` for a secret of your
    /// vault, sealed to each host (quote it so the shell leaves `$vault` alone); repeat
    /// for several. In an update, the list replaces the old one.
    #[arg(long, value_name = "KEY=VALUE")]
    pub(crate) env: Vec<String>,
    /// Memory limit, MiB (default 512).
    #[arg(long, value_name = "MIB")]
    pub(crate) memory: Option<u32>,
    /// Who may see and call it: `mesh` (default), `@group`, or members (names or
    /// fingerprint prefixes) separated by commas.
    #[arg(long)]
    pub(crate) scope: Option<String>,
    /// Offer only this tool (repeat for several; default: every tool it lists).
    #[arg(long, value_name = "TOOL")]
    pub(crate) allow: Vec<String>,
    /// One-line description for the catalog.
    #[arg(long)]
    pub(crate) description: Option<String>,
    #[command(flatten)]
    pub(crate) opts: MeshJson,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DeployAction {
    /// Deploy an MCP server to the mesh's hosts: exactly one source (--file, --git with
    /// --commit, --npm, --pypi), the command after `--` (default for a package: its
    /// name). It runs sandboxed on the first host online; the others stand by.
    #[command(group(
        clap::ArgGroup::new("source")
            .required(true)
            .args(["file", "git", "npm", "pypi"])
    ))]
    Add {
        /// Service name: a-z, 0-9 and `-` (peers see its tools as `<name>__<tool>`).
        name: String,
        #[command(flatten)]
        spec: DeploySpec,
        /// Let it open network sockets (default: a loopback of its own only).
        #[arg(long)]
        network: bool,
        /// The command and its arguments, after `--`.
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Deploy a new version of a service: what is given replaces what it had, the rest
    /// is kept (at most one source).
    #[command(group(clap::ArgGroup::new("source").args(["file", "git", "npm", "pypi"])))]
    Update {
        /// Service name.
        name: String,
        #[command(flatten)]
        spec: DeploySpec,
        /// Let it open network sockets.
        #[arg(long, conflicts_with = "no_network")]
        network: bool,
        /// No network sockets any more (a loopback of its own only).
        #[arg(long)]
        no_network: bool,
        /// A new command and its arguments, after `--` (none: keep it).
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// The mesh's hosted services: version, status, serving host, source, scope, tools
    /// (and how each runs here, on a host).
    List(MeshJson),
    /// A service's last log lines (its stderr and what its host said about it), asked of
    /// the host that runs it.
    Logs {
        /// Service name.
        name: String,
        /// Most lines.
        #[arg(long, default_value_t = 200)]
        lines: u32,
        #[command(flatten)]
        opts: MeshJson,
    },
    /// Take a service down everywhere; it leaves the mesh's catalog.
    Rm {
        /// Service name.
        name: String,
        #[command(flatten)]
        opts: MeshJson,
    },
    /// Change who may call a service: `mesh`, `@group`, or members separated by commas.
    Scope {
        /// Service name.
        name: String,
        /// The new scope.
        scope: String,
        #[command(flatten)]
        opts: MeshJson,
    },
    /// A service's tools, with their descriptions and input schemas.
    Schema {
        /// Service name.
        name: String,
        #[command(flatten)]
        opts: MeshJson,
    },
}

// The vault (issue 16).
#[derive(Debug, Subcommand)]
pub(crate) enum VaultAction {
    /// Store a secret, or replace the one of that name. The value comes from stdin (piped,
    /// or `-`; one trailing newline dropped), from --file (its exact bytes), or is typed
    /// without echo on a terminal; never from the command line, where other users could
    /// read it. UTF-8 text, at most 64 KiB.
    Set {
        /// Its name: 1 to 64 letters, digits, `_`, `.` or `-` (like GITHUB_TOKEN).
        name: String,
        /// `-` reads the value from stdin; a value given here is refused.
        #[arg(value_name = "-", num_args = 0..)]
        source: Vec<String>,
        /// Read the value from this file (its exact bytes).
        #[arg(long, conflicts_with = "source")]
        file: Option<std::path::PathBuf>,
        /// One line saying what it is (replacing without one keeps the old one).
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        opts: MeshJson,
    },
    /// The secrets' names, sizes, times and descriptions; never their values.
    List(MeshJson),
    /// Delete a secret.
    Rm {
        /// Its name.
        name: String,
        #[command(flatten)]
        opts: MeshJson,
    },
}

#[derive(Debug, Args)]
pub(crate) struct GrantArgs {
    /// The peer (name, id or fingerprint prefix).
    pub(crate) peer: String,
    /// Capabilities.
    #[arg(required = true, num_args = 1.., value_parser = ["dm", "broadcast", "state-read", "state-write", "file-read", "tools", "all"])]
    pub(crate) caps: Vec<String>,
    #[command(flatten)]
    pub(crate) opts: MeshJson,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ServiceAction {
    /// Install and start the service (idempotent; stops a daemon started by hand first).
    Install(ServiceArgs),
    /// Stop and remove the service.
    Uninstall(ServiceArgs),
    /// Is it installed, and running?
    Status(ServiceArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ServiceArgs {
    /// systemd or launchd (default: this platform's).
    #[arg(long)]
    pub(crate) platform: Option<String>,
    /// Print JSON (with `schema_version`).
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SkillAction {
    /// Publish (or replace) a skill; the instructions are read from --file or stdin.
    Share {
        /// Name: letters, digits, '-' or '_'.
        name: String,
        /// One-line description.
        #[arg(long)]
        description: String,
        /// File with the instructions (default: stdin).
        #[arg(long)]
        file: Option<std::path::PathBuf>,
        /// When to use it.
        #[arg(long, default_value = "")]
        when: String,
        /// Tags, comma-separated.
        #[arg(long)]
        tags: Option<String>,
        #[command(flatten)]
        opts: MeshJson,
    },
    /// Print a skill's instructions.
    Get {
        /// The skill's name.
        name: String,
        #[command(flatten)]
        opts: MeshJson,
    },
    /// List skills (optionally those mentioning a keyword).
    List {
        /// Keyword.
        query: Option<String>,
        #[command(flatten)]
        opts: MeshJson,
    },
    /// Remove a skill.
    Remove {
        /// The skill's name.
        name: String,
        #[command(flatten)]
        opts: MeshJson,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ContextAction {
    /// Share what you learned: a summary, files read, findings.
    Share {
        /// Summary.
        #[arg(required = true, num_args = 1..)]
        summary: Vec<String>,
        /// Files read, comma-separated.
        #[arg(long)]
        files: Option<String>,
        /// A key finding (repeatable).
        #[arg(long = "finding")]
        findings: Vec<String>,
        /// Tags, comma-separated.
        #[arg(long)]
        tags: Option<String>,
        #[command(flatten)]
        opts: MeshJson,
    },
    /// Contexts mentioning a file path, topic or keyword (none: all, newest first).
    List {
        /// Keyword.
        query: Option<String>,
        #[command(flatten)]
        opts: MeshJson,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditAction {
    /// Re-derive the log's hash chain and compare it with the relay's copy; names the first
    /// sequence number that does not match (exit code 1 if one does not).
    Verify(MeshJson),
}

#[derive(Debug, Subcommand)]
pub(crate) enum DebugAction {
    /// Print a hash of the mesh's folded shared state (equal on every member in sync).
    Digest(MeshJson),
    /// Move this daemon's reminder clock forward (to try schedules without waiting).
    Clock {
        /// How far: 90s, 30m, 2h, 1d.
        #[arg(long)]
        advance: String,
    },
    /// Hold a mesh's relay link down (`down`, writes queue locally) or let it reconnect (`up`).
    Link {
        /// down or up.
        #[arg(value_parser = ["down", "up"])]
        state: String,
        /// Mesh name or id prefix (needed when you are in several).
        #[arg(long, add = ArgValueCandidates::new(crate::complete::meshes))]
        mesh: Option<String>,
    },
}

#[derive(Debug, Args)]
pub(crate) struct InstallArgs {
    /// Do not register the hooks.
    #[arg(long)]
    pub(crate) no_hooks: bool,
    /// Also set Claude Code's status line (never replaces one you have).
    #[arg(long)]
    pub(crate) status_line: bool,
}

#[derive(Debug, Args)]
pub(crate) struct LaunchArgs {
    /// Display name of this session.
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Groups to join, comma-separated.
    #[arg(long)]
    pub(crate) groups: Option<String>,
    /// Mesh to join the session to (default: all).
    #[arg(long, add = ArgValueCandidates::new(crate::complete::meshes))]
    pub(crate) mesh: Option<String>,
    /// Role tag shown to peers (e.g. reviewer, lead).
    #[arg(long)]
    pub(crate) role: Option<String>,
    /// Ask nothing; Claude Code's own development-channel prompt still appears (it has no
    /// way to pre-accept it), and launch says so.
    #[arg(short = 'y', long = "yes")]
    pub(crate) yes: bool,
    /// Resume a Claude Code conversation by its session id (without one, Claude Code
    /// offers a list); the session is the same peer it was.
    #[arg(short = 'r', long, num_args = 0..=1, default_missing_value = "", value_name = "SESSION")]
    pub(crate) resume: Option<String>,
    /// Continue the most recent Claude Code conversation in this directory.
    #[arg(short = 'c', long = "continue", conflicts_with = "resume")]
    pub(crate) continue_last: bool,
    /// Join a mesh with this invite link first (`-` reads it from stdin), then launch.
    #[arg(long, value_name = "LINK")]
    pub(crate) join: Option<String>,
    /// How messages reach the session: push (into the conversation as they arrive, and
    /// by hooks), inbox (they wait until the session calls check_messages; hooks only say
    /// how many wait), off (nothing is shown; the session can still send and read).
    #[arg(long, default_value = "push", value_parser = ["push", "inbox", "off"])]
    pub(crate) message_mode: String,
    /// Extra instructions for the session, appended to Claude Code's own system prompt
    /// (passed as `--append-system-prompt`, so Claude Code's tools keep working).
    #[arg(long, value_name = "TEXT")]
    pub(crate) system_prompt: Option<String>,
    /// Arguments for `claude`.
    #[arg(last = true, allow_hyphen_values = true)]
    pub(crate) args: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct WaitArgs {
    /// link-up, link-down, link-error, peer-online, peer-offline, peer-working, peer-idle,
    /// claim-pending, or synced (shared state caught up with the relay, nothing pending).
    #[arg(value_parser = ["link-up", "link-down", "link-error", "peer-online", "peer-offline", "peer-working", "peer-idle", "claim-pending", "synced"])]
    pub(crate) condition: String,
    /// The peer (name, id, or @group for any member of it), for peer conditions.
    pub(crate) peer: Option<String>,
    /// Only this mesh (name or id prefix; default: all).
    #[arg(long, add = ArgValueCandidates::new(crate::complete::meshes))]
    pub(crate) mesh: Option<String>,
    /// Give up after this many seconds (exit code 9).
    #[arg(long, default_value_t = 30)]
    pub(crate) timeout: u64,
    /// For `synced`: also wait until this sequence of the shared-state log is applied.
    #[arg(long)]
    pub(crate) seq: Option<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct JsonArg {
    /// Print JSON (with `schema_version`).
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// Your display name in the new mesh.
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Name of the personal mesh to create if you have none.
    #[arg(long, default_value = "personal")]
    pub(crate) mesh: String,
    /// Where the local relay listens (use 0.0.0.0:7900 so other machines can join);
    /// saved as `[relay] listen` in config.toml once it is known to work.
    #[arg(long)]
    pub(crate) listen: Option<std::net::SocketAddr>,
    /// Address other machines use to reach the relay (host:port, written into invites
    /// and into the meshes this relay hosts; saved as `[relay] public_addr`).
    #[arg(long)]
    pub(crate) public_addr: Option<String>,
    /// Run the daemon without an embedded relay (a machine that only joins meshes hosted
    /// elsewhere); saved as `[relay] enabled = false`.
    #[arg(long, conflicts_with_all = ["listen", "public_addr"])]
    pub(crate) no_relay: bool,
    #[command(flatten)]
    pub(crate) json: JsonArg,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DaemonAction {
    /// Start the daemon in the background.
    Start,
    /// Stop the daemon.
    Stop,
    /// Is the daemon running?
    Status(JsonArg),
    /// Run the daemon in the foreground (for service managers).
    Run {
        /// Print `ready` on stdout once listening (used by `daemon start`).
        #[arg(long, hide = true)]
        notify_ready: bool,
    },
}

#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// Mesh name.
    #[arg(required_unless_present = "list_templates")]
    pub(crate) name: Option<String>,
    /// Start it from a template: solo, pair or team (groups, shared skills and a
    /// `template` key, written as ordinary changes you can undo).
    #[arg(long, value_name = "TEMPLATE")]
    pub(crate) template: Option<String>,
    /// List the templates and what each sets up.
    #[arg(long, exclusive = true)]
    pub(crate) list_templates: bool,
    /// Relay address host:port (default: the local relay started by `claudemesh up`).
    #[arg(long)]
    pub(crate) relay: Option<String>,
    /// Expected relay certificate fingerprint (`claudemesh-relay fingerprint` prints it
    /// on the relay's machine). Without it, `create` says what it saw and stops.
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) fingerprint: Option<String>,
    /// Pin whatever certificate the relay shows, unchecked.
    #[arg(long, conflicts_with = "fingerprint")]
    pub(crate) trust_first_use: bool,
    /// Your display name in this mesh.
    #[arg(long = "name", id = "display_name")]
    pub(crate) display_name: Option<String>,
    /// File holding a creation token, for a relay whose admission asks for one (or set
    /// CLAUDEMESH_CREATE_TOKEN; the token is never taken as an argument).
    #[arg(long, value_name = "PATH")]
    pub(crate) token_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub(crate) json: JsonArg,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct InviteArgs {
    #[command(subcommand)]
    pub(crate) action: Option<InviteAction>,
    /// Mesh name or id prefix (needed when you are in several).
    #[arg(long, add = ArgValueCandidates::new(crate::complete::meshes))]
    pub(crate) mesh: Option<String>,
    /// How many people may use the invite.
    #[arg(long, default_value_t = 1)]
    pub(crate) uses: u32,
    /// How long the invite is valid: 30m, 12h, 7d…
    #[arg(long, default_value = "7d")]
    pub(crate) expires: String,
    /// Role for people joining with it.
    #[arg(long, default_value = "member", value_parser = ["member", "admin"])]
    pub(crate) role: String,
    /// Require an admin to approve each join (`claudemesh invite approve`).
    #[arg(long)]
    pub(crate) approve: bool,
    #[command(flatten)]
    pub(crate) json: JsonArg,
}

#[derive(Debug, Subcommand)]
pub(crate) enum InviteAction {
    /// Invites minted on this machine.
    List {
        /// Only this mesh (name or id prefix; default: all).
        #[arg(long, add = ArgValueCandidates::new(crate::complete::meshes))]
        mesh: Option<String>,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Revoke an invite.
    Revoke {
        /// Invite id (or a unique prefix).
        id: String,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Join requests waiting for approval.
    Pending(JsonArg),
    /// Approve a waiting join request.
    Approve {
        /// Claim id (or a unique prefix).
        claim: String,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Deny a waiting join request.
    Deny {
        /// Claim id (or a unique prefix).
        claim: String,
        #[command(flatten)]
        json: JsonArg,
    },
}

#[derive(Debug, Args)]
pub(crate) struct JoinArgs {
    /// The invite link (claudemesh://join/…), or `-` to read it from stdin (it holds a
    /// secret: stdin keeps it out of the process list and shell history).
    pub(crate) invite: String,
    /// Your display name in this mesh.
    #[arg(long = "name", id = "display_name")]
    pub(crate) display_name: Option<String>,
    /// Wait until an admin admits you, up to this many seconds (300 with no value).
    /// Without it, `join` returns once the relay holds the claim, and the daemon finishes
    /// the join in the background when an admin's daemon is online.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "300")]
    pub(crate) wait: Option<u64>,
    #[command(flatten)]
    pub(crate) json: JsonArg,
}

#[derive(Debug, Subcommand)]
pub(crate) enum MeshAction {
    /// Move the mesh to another relay address (or a relay with another certificate): a
    /// record signed by you that every member's daemon checks before it dials there.
    SetRelay(SetRelayArgs),
    /// The mesh commands act in when you are in several and name none (`--clear` forgets
    /// it).
    Use {
        /// Mesh name or id prefix.
        #[arg(required_unless_present = "clear")]
        mesh: Option<String>,
        /// Forget the default: commands ask for --mesh again.
        #[arg(long, conflicts_with = "mesh")]
        clear: bool,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Usage per session: messages in and out, tool calls, errors and uptime (peers'
    /// daemons are asked now; offline peers show no counts), and shared-state counts.
    Stats(MeshJson),
    /// Call a mesh something else on this machine (the mesh, and what its members call
    /// it, stay the same; members this machine admits from now on get the new name).
    Rename {
        /// Mesh name or id prefix.
        mesh: String,
        /// The new name.
        name: String,
        #[command(flatten)]
        json: JsonArg,
    },
}

#[derive(Debug, Args)]
pub(crate) struct SetRelayArgs {
    /// The relay's new address, host:port (what members dial and invites carry).
    pub(crate) relay: String,
    /// The relay's certificate fingerprint at that address (`claudemesh-relay fingerprint`
    /// on its machine); default: the mesh's current one (the same relay, moved).
    #[arg(long)]
    pub(crate) fingerprint: Option<String>,
    /// Publish without connecting to the new address first (for a relay that is about to
    /// move there; members retry until it answers).
    #[arg(long)]
    pub(crate) no_check: bool,
    /// Mesh name or id (needed when several are joined).
    #[arg(long, add = ArgValueCandidates::new(crate::complete::meshes))]
    pub(crate) mesh: Option<String>,
    #[command(flatten)]
    pub(crate) json: JsonArg,
}

#[derive(Debug, Subcommand)]
pub(crate) enum MemberAction {
    /// Remove a member from the mesh (a signed roster entry; its link is closed).
    Remove(MemberArgs),
    /// Make a member an admin, or an admin a member again.
    Role(MemberRoleArgs),
}

#[derive(Debug, Args)]
pub(crate) struct MemberArgs {
    /// The member: a name, or a fingerprint or session id prefix.
    pub(crate) peer: String,
    /// Mesh name or id prefix (needed when you are in several).
    #[arg(long, add = ArgValueCandidates::new(crate::complete::meshes))]
    pub(crate) mesh: Option<String>,
    #[command(flatten)]
    pub(crate) json: JsonArg,
}

#[derive(Debug, Args)]
pub(crate) struct MemberRoleArgs {
    /// The member: a name, or a fingerprint or session id prefix.
    pub(crate) peer: String,
    /// The new role.
    #[arg(value_parser = ["admin", "member"])]
    pub(crate) role: String,
    /// Mesh name or id prefix (needed when you are in several).
    #[arg(long, add = ArgValueCandidates::new(crate::complete::meshes))]
    pub(crate) mesh: Option<String>,
    #[command(flatten)]
    pub(crate) json: JsonArg,
}

#[derive(Debug, Args)]
pub(crate) struct LeaveArgs {
    /// Mesh name or id.
    pub(crate) mesh: String,
    /// Do not ask (needed when not on a terminal: leaving deletes this machine's keys).
    #[arg(short = 'y', long = "yes")]
    pub(crate) yes: bool,
    /// Leave even as the mesh's last admin (no one could invite or admit after you).
    #[arg(long)]
    pub(crate) force: bool,
    #[command(flatten)]
    pub(crate) json: JsonArg,
}

#[derive(Debug, Args)]
pub(crate) struct PeersArgs {
    /// Only this mesh (name or id prefix; default: all).
    #[arg(long, add = ArgValueCandidates::new(crate::complete::meshes))]
    pub(crate) mesh: Option<String>,
    /// Also sessions that ended (beyond the grace of `[peers] offline_grace_secs`).
    #[arg(long)]
    pub(crate) all: bool,
    #[command(flatten)]
    pub(crate) json: JsonArg,
}

#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    /// A person's name (reaches their active session), `name/session`, a session id prefix,
    /// @group, or * for everyone.
    #[arg(add = ArgValueCandidates::new(crate::complete::peers))]
    pub(crate) to: String,
    #[command(flatten)]
    pub(crate) body: BodyArgs,
    /// Mesh name or id prefix (needed when you are in several).
    #[arg(long, add = ArgValueCandidates::new(crate::complete::meshes))]
    pub(crate) mesh: Option<String>,
    /// An idempotency key of your choosing: sending again with the same key sends nothing
    /// again and says how far the first got (retry with it after an error).
    #[arg(long, value_name = "KEY")]
    pub(crate) id: Option<String>,
    #[command(flatten)]
    pub(crate) json: JsonArg,
}

/// A message's text and priority, for `send` and `reply`.
#[derive(Debug, Args)]
pub(crate) struct BodyArgs {
    /// The message (several words are joined with spaces), or `-` to read it from stdin
    /// (out of the process list, and any length or number of lines).
    #[arg(required_unless_present = "file", conflicts_with = "file", num_args = 1..)]
    pub(crate) message: Vec<String>,
    /// Send the text of this file.
    #[arg(long, value_name = "FILE")]
    pub(crate) file: Option<std::path::PathBuf>,
    /// now: deliver at once; next: when the peer is idle; low: when it asks.
    #[arg(long, default_value = "next", value_parser = ["now", "next", "low"])]
    pub(crate) priority: String,
}

#[derive(Debug, Args)]
pub(crate) struct ReplyArgs {
    /// The id of a message you received (or the start of it, as `inbox` and `history`
    /// show it).
    #[arg(add = ArgValueCandidates::new(crate::complete::received_ids))]
    pub(crate) id: String,
    #[command(flatten)]
    pub(crate) body: BodyArgs,
    #[command(flatten)]
    pub(crate) json: JsonArg,
}

#[derive(Debug, Args)]
pub(crate) struct InboxArgs {
    /// Only this mesh (name or id prefix; default: all).
    #[arg(long, add = ArgValueCandidates::new(crate::complete::meshes))]
    pub(crate) mesh: Option<String>,
    /// Wait up to this many seconds for a message when there is none.
    #[arg(long)]
    pub(crate) wait: Option<u64>,
    /// Show without marking read.
    #[arg(long)]
    pub(crate) peek: bool,
    /// Read a hosted session's inbox (an id from `peers`) instead of the daemon's own.
    #[arg(long)]
    pub(crate) session: Option<String>,
    /// Only messages after this message id (with --wait: wait for a newer one).
    #[arg(long)]
    pub(crate) after: Option<String>,
    /// Most messages to show.
    #[arg(long)]
    pub(crate) limit: Option<u32>,
    /// Keep reading: print messages as they arrive, until interrupted.
    #[arg(long, conflicts_with_all = ["wait", "all"])]
    pub(crate) follow: bool,
    /// Read messages too (the newest, default 100): nothing read is out of reach.
    #[arg(long, conflicts_with_all = ["wait", "after"])]
    pub(crate) all: bool,
    #[command(flatten)]
    pub(crate) json: JsonArg,
}

#[derive(Debug, Args)]
pub(crate) struct HistoryArgs {
    /// Only this mesh (name or id prefix; default: all).
    #[arg(long, add = ArgValueCandidates::new(crate::complete::meshes))]
    pub(crate) mesh: Option<String>,
    /// A hosted session's messages (an id from `peers`) instead of the daemon's own.
    #[arg(long)]
    pub(crate) session: Option<String>,
    /// Most messages to show (default 100).
    #[arg(long)]
    pub(crate) limit: Option<u32>,
    #[command(flatten)]
    pub(crate) json: JsonArg,
}

#[derive(Debug, Args)]
pub(crate) struct ProfileArgs {
    /// Only this mesh (name or id prefix; default: all).
    #[arg(long, add = ArgValueCandidates::new(crate::complete::meshes))]
    pub(crate) mesh: Option<String>,
    /// New display name.
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// New groups, comma-separated (replaces the current ones; "" clears).
    #[arg(long)]
    pub(crate) groups: Option<String>,
    /// What you are working on.
    #[arg(long)]
    pub(crate) summary: Option<String>,
    /// idle, working or dnd.
    #[arg(long, value_parser = ["idle", "working", "dnd"])]
    pub(crate) status: Option<String>,
    #[command(flatten)]
    pub(crate) json: JsonArg,
}

/// The command line of this process, with the upstream shortcuts applied:
/// `claudemesh <invite-link>` means `claudemesh join <invite-link>`, and flag-first
/// invocations (`claudemesh --resume X`) mean `claudemesh launch …`. In `launch`, our own
/// flags stay ours and everything else goes to `claude`, with or without a `--`.
pub(crate) fn parse() -> Cli {
    Cli::parse_from(shortcuts(std::env::args_os().collect()))
}

/// What a `launch` flag takes after it.
enum Takes {
    Nothing,
    Value,
    /// `--resume` takes a session id, or nothing (Claude Code then offers a list).
    Maybe,
}

fn launch_flag(s: &str) -> Option<Takes> {
    match s {
        "-y" | "--yes" | "-c" | "--continue" | "-q" | "--quiet" | "-h" | "--help" => {
            Some(Takes::Nothing)
        }
        "--name" | "--groups" | "--mesh" | "--role" | "--join" | "--message-mode"
        | "--system-prompt" => Some(Takes::Value),
        "-r" | "--resume" => Some(Takes::Maybe),
        _ => None,
    }
}

fn shortcuts(mut argv: Vec<OsString>) -> Vec<OsString> {
    let Some(first) = argv.get(1).and_then(|a| a.to_str()).map(str::to_string) else {
        return argv;
    };
    if first.starts_with(claudemesh_schema::invite::LINK_PREFIX) {
        argv.insert(1, "join".into());
        return argv;
    }
    // `-q` first is the global `--quiet` before a command (`claudemesh -q peers`).
    let flag_first = first.starts_with('-')
        && !matches!(
            first.as_str(),
            "-h" | "--help" | "-V" | "--version" | "-q" | "--quiet"
        );
    // `launch … -- args` already says where claude's arguments start.
    let explicit_launch = first == "launch" && !argv.iter().skip(2).any(|a| a == "--");
    if !flag_first && !explicit_launch {
        return argv;
    }
    let rest: Vec<_> = argv.drain(1..).skip(usize::from(explicit_launch)).collect();
    argv.push("launch".into());
    let mut passthrough = Vec::new();
    let mut it = rest.into_iter().peekable();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy().to_string();
        let (flag, inline) = match s.split_once('=') {
            Some((f, _)) if f.starts_with("--") => (f.to_string(), true),
            _ => (s.clone(), false),
        };
        match launch_flag(&flag) {
            None => passthrough.push(a),
            Some(_) if inline => argv.push(a),
            Some(Takes::Nothing) => argv.push(a),
            Some(Takes::Value) => {
                argv.push(a);
                if let Some(v) = it.next() {
                    argv.push(v);
                }
            }
            Some(Takes::Maybe) => {
                argv.push(a);
                if it
                    .peek()
                    .is_some_and(|v| !v.to_string_lossy().starts_with('-'))
                    && let Some(v) = it.next()
                {
                    argv.push(v);
                }
            }
        }
    }
    argv.push("--".into());
    argv.extend(passthrough);
    argv
}

/// `claudemesh completions <shell>`: the script, generated from this command line.
pub(crate) fn completions(a: CompletionsArgs) -> Res {
    output::raw(&crate::complete::script(a.shell)?);
    Ok(())
}

/// Parse "30s", "15m", "12h", "7d", "2w" into seconds. A unit is required: a bare number
/// is refused (in `--ttl 5 years` the number alone would quietly mean 5 s).
pub(crate) fn parse_duration(s: &str) -> Result<u64, Failure> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    if unit.is_empty() && !num.is_empty() {
        return Err(Failure::new(
            Exit::Usage,
            format!("duration {s:?} needs a unit: {s}s, {s}m, {s}h, {s}d or {s}w"),
        ));
    }
    let n: u64 = num.parse().map_err(|_| {
        Failure::new(
            Exit::Usage,
            format!("invalid duration {s:?} (use e.g. 30m, 12h, 7d)"),
        )
    })?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => {
            return Err(Failure::new(
                Exit::Usage,
                format!("invalid duration unit in {s:?} (use s, m, h, d or w)"),
            ));
        }
    };
    Ok(n.saturating_mul(mult))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;
    use claudemesh_relay::cli::RelayCli;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_top_level_help_lists_every_visible_command_once() {
        for c in Cli::command()
            .get_subcommands()
            .filter(|c| !c.is_hide_set())
        {
            let name = c.get_name();
            if name == "help" {
                continue;
            }
            let listed = HELP
                .lines()
                .filter(|l| l.split_whitespace().next() == Some(name) && l.starts_with("  "))
                .count();
            assert_eq!(listed, 1, "`{name}` in the grouped help");
        }
    }

    #[test]
    fn durations_take_a_unit_and_refuse_others_as_usage_errors() {
        assert_eq!(parse_duration("90s").unwrap(), 90);
        assert_eq!(parse_duration("30m").unwrap(), 1800);
        assert_eq!(parse_duration(" 2w ").unwrap(), 14 * 86_400);
        for bad in ["", "m", "3y", "-1s", "90", "5 years"] {
            assert_eq!(
                parse_duration(bad).unwrap_err().code,
                Exit::Usage,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn flags_first_mean_launch_with_ours_kept_and_the_rest_for_claude() {
        let argv = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        for (given, want) in [
            (
                &[
                    "cm", "--resume", "X", "--name", "ann", "-y", "--mesh=m", "--model", "opus",
                ][..],
                &[
                    "cm", "launch", "--resume", "X", "--name", "ann", "-y", "--mesh=m", "--",
                    "--model", "opus",
                ][..],
            ),
            // `launch` with claude's flags mixed in, and no `--`.
            (
                &[
                    "cm",
                    "launch",
                    "-c",
                    "--model",
                    "opus",
                    "--message-mode",
                    "inbox",
                    "-q",
                ],
                &[
                    "cm",
                    "launch",
                    "-c",
                    "--message-mode",
                    "inbox",
                    "-q",
                    "--",
                    "--model",
                    "opus",
                ],
            ),
            // `--resume` without a session id, then one of claude's flags.
            (
                &["cm", "-r", "--verbose", "--system-prompt", "be brief"],
                &[
                    "cm",
                    "launch",
                    "-r",
                    "--system-prompt",
                    "be brief",
                    "--",
                    "--verbose",
                ],
            ),
            (
                &["cm", "claudemesh://join/h:1/fp/code"],
                &["cm", "join", "claudemesh://join/h:1/fp/code"],
            ),
        ] {
            assert_eq!(shortcuts(argv(given)), argv(want), "{given:?}");
            Cli::try_parse_from(argv(want)).unwrap();
        }
        for kept in [
            &["cm", "peers"][..],
            &["cm", "--help"],
            &["cm", "-V"],
            &["cm"],
            &["cm", "launch", "--name", "a", "--", "--model", "x"],
            &["cm", "-q", "peers"],
        ] {
            assert_eq!(shortcuts(argv(kept)), argv(kept));
        }
    }

    /// Every option of `c` and of its subcommands, by subcommand path: long name, short name,
    /// whether it takes a value, whether it is hidden (clap's own help/version left out: only
    /// the top level of a binary has --version).
    fn options(c: &clap::Command, path: &str, out: &mut Vec<String>) {
        for a in c.get_arguments() {
            let id = a.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            out.push(format!(
                "{path}: --{} -{:?} value={} hidden={} env={:?}",
                a.get_long().unwrap_or(id),
                a.get_short(),
                a.get_action().takes_values(),
                a.is_hide_set(),
                a.get_env(),
            ));
        }
        for s in c.get_subcommands() {
            options(s, &format!("{path} {}", s.get_name()), out);
        }
    }

    #[test]
    fn claudemesh_relay_takes_the_same_flags_as_the_relay_binary() {
        let mut ours = Cli::command();
        ours.build();
        let ours = ours.find_subcommand("relay").expect("relay subcommand");
        let mut theirs = RelayCli::command();
        theirs.build();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        options(ours, "", &mut a);
        // `--quiet` is claudemesh's global flag, not one of the relay's.
        a.retain(|o| !o.contains(" --quiet "));
        options(&theirs, "", &mut b);
        assert!(a.iter().any(|o| o.contains("--durability")), "{a:#?}");
        assert_eq!(a, b);
    }

    #[test]
    fn a_flag_set_means_the_same_to_both_relay_commands() {
        let flags = [
            "fingerprint",
            "--config",
            "/nonexistent/relay.toml",
            "--listen",
            "127.0.0.1:7901",
            "--data-dir",
            "/tmp/d",
            "--no-quic",
            "--durability",
            "normal",
            "--frame-log",
            "/tmp/f",
            "--metrics-listen",
            "127.0.0.1:9100",
            "--log-json",
            "--notify-ready",
        ];
        let ours = Cli::try_parse_from(["claudemesh", "relay"].into_iter().chain(flags)).unwrap();
        let Some(Command::Relay(ours)) = ours.command else {
            panic!("not the relay command: {ours:?}");
        };
        let theirs =
            RelayCli::try_parse_from(std::iter::once("claudemesh-relay").chain(flags)).unwrap();
        assert_eq!(format!("{ours:?}"), format!("{:?}", theirs.args));
    }
}
