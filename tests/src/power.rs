//! A disk that can lose power: a FUSE filesystem, held in this process's memory, that
//! keeps what was written but not yet synced apart from what is durable, and drops it at a
//! simulated power cut.
//!
//! `kill -9` proves nothing about `fsync`: the kernel's page cache outlives the process, so
//! a store that never syncs passes every crash test. Here the filesystem itself plays the
//! disk. Every file has a *durable* image and the *current* contents: `write` and
//! `truncate` change only the current contents, `fsync`/`fdatasync` of the file makes them
//! durable. Every directory has a durable set of entries and the current one: `create`,
//! `mkdir`, `rename`, `unlink` and `rmdir` change the current set, and only an `fsync` of
//! the directory makes it durable (what POSIX promises, and what SQLite relies on when it
//! syncs the directory after creating its WAL). [`Disk::power_cut`] then unmounts, puts
//! every file and directory back to its durable image, forgets whatever is no longer
//! reachable from the root through durable entries, and mounts again: what a machine
//! finds after its power went out. Modes, owners and times are not modelled (they change
//! at once, durably).
//!
//! The kernel must not hide writes from the filesystem: no writeback cache is negotiated
//! (so every `write` reaches it before the call returns) and files are opened with
//! `direct_io`, except SQLite's `-shm` files, which SQLite maps shared (`mmap` needs the
//! page cache; their contents are rebuilt from the WAL after a crash anyway, and are
//! never synced, so here too they keep nothing across a cut). The kernel's page cache and
//! attribute cache die with the unmount at the cut.
//!
//! Every process using the disk must be dead before a cut (the unmount fails otherwise).
//! Mounting needs `/dev/fuse` and the right to mount (root); [`Disk::mount`] says which is
//! missing.

use fuser::{
    BackgroundSession, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// The unit of dirtiness: a write marks the pages it touched, a sync copies only those.
const PAGE: usize = 4096;
/// How long the kernel may cache names and attributes. Every change goes through the
/// kernel, so its caches never go stale while mounted, and a cut unmounts.
const TTL: Duration = Duration::from_secs(1);

const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const S_IFSOCK: u32 = 0o140_000;
const S_IFIFO: u32 = 0o010_000;

/// A file's bytes: what readers see now, and what survives a power cut.
#[derive(Debug, Default)]
struct Data {
    cur: Vec<u8>,
    durable: Vec<u8>,
    /// Pages of `cur` that may differ from `durable` (every other page within both
    /// lengths is equal).
    dirty: BTreeSet<usize>,
}

impl Data {
    fn mark(&mut self, from: usize, to: usize) {
        if from < to {
            self.dirty.extend(from / PAGE..=(to - 1) / PAGE);
        }
    }

    fn write(&mut self, off: usize, buf: &[u8]) {
        let end = off + buf.len();
        if end > self.cur.len() {
            // The gap a write past the end leaves is zeros, and new.
            self.mark(self.cur.len(), end);
            self.cur.resize(end, 0);
        }
        self.cur[off..end].copy_from_slice(buf);
        self.mark(off, end);
    }

    fn set_len(&mut self, len: usize) {
        // Shrinking changes no byte below the new end; growing adds zeros.
        self.mark(self.cur.len(), len);
        self.cur.resize(len, 0);
    }

    fn sync(&mut self) {
        self.durable.resize(self.cur.len(), 0);
        for p in std::mem::take(&mut self.dirty) {
            let (a, b) = (p * PAGE, ((p + 1) * PAGE).min(self.cur.len()));
            if a < b {
                self.durable[a..b].copy_from_slice(&self.cur[a..b]);
            }
        }
    }

    /// Back to the durable image; says whether anything was lost.
    fn revert(&mut self) -> bool {
        let lost = !self.dirty.is_empty() || self.cur.len() != self.durable.len();
        self.cur = self.durable.clone();
        self.dirty.clear();
        lost
    }
}

#[derive(Debug)]
enum Body {
    File(Data),
    Dir {
        cur: BTreeMap<OsString, u64>,
        durable: BTreeMap<OsString, u64>,
        parent: u64,
    },
    Symlink(PathBuf),
    /// A socket or FIFO: a name only (the kernel does the rest).
    Special(FileType),
}

#[derive(Debug)]
struct Inode {
    body: Body,
    perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
    /// SQLite's shared-memory index, which it maps: opened through the page cache.
    shm: bool,
}

impl Inode {
    fn kind(&self) -> FileType {
        match &self.body {
            Body::File(_) => FileType::RegularFile,
            Body::Dir { .. } => FileType::Directory,
            Body::Symlink(_) => FileType::Symlink,
            Body::Special(k) => *k,
        }
    }

    fn attr(&self, ino: u64) -> FileAttr {
        let size = match &self.body {
            Body::File(d) => d.cur.len() as u64,
            Body::Symlink(t) => t.as_os_str().len() as u64,
            Body::Dir { .. } | Body::Special(_) => 0,
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
            crtime: self.ctime,
            kind: self.kind(),
            perm: self.perm,
            nlink: if matches!(self.body, Body::Dir { .. }) {
                2
            } else {
                1
            },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: PAGE as u32,
            flags: 0,
        }
    }
}

/// What a power cut threw away.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Lost {
    /// Files whose contents went back to an older image.
    pub files: usize,
    /// Directories whose entries went back to an older set.
    pub dirs: usize,
    /// Files and directories no durable entry reached any more.
    pub forgotten: usize,
}

#[derive(Debug)]
struct Tree {
    nodes: HashMap<u64, Inode>,
    next: u64,
}

const ROOT: u64 = 1;

impl Tree {
    fn new() -> Self {
        let now = SystemTime::now();
        let root = Inode {
            body: Body::Dir {
                cur: BTreeMap::new(),
                durable: BTreeMap::new(),
                parent: ROOT,
            },
            perm: 0o755,
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
            atime: now,
            mtime: now,
            ctime: now,
            shm: false,
        };
        Self {
            nodes: HashMap::from([(ROOT, root)]),
            next: ROOT + 1,
        }
    }

    fn node(&mut self, ino: u64) -> Result<&mut Inode, Errno> {
        self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn entries(&mut self, dir: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match &mut self.node(dir)?.body {
            Body::Dir { cur, .. } => Ok(cur),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn lookup(&mut self, dir: u64, name: &OsStr) -> Result<u64, Errno> {
        self.entries(dir)?.get(name).copied().ok_or(Errno::ENOENT)
    }

    /// A new inode named `name` in `dir`.
    fn add(
        &mut self,
        req: &Request,
        dir: u64,
        name: &OsStr,
        body: Body,
        mode: u32,
    ) -> Result<FileAttr, Errno> {
        if self.entries(dir)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next;
        self.next += 1;
        let now = SystemTime::now();
        let node = Inode {
            body,
            perm: (mode & 0o7777) as u16,
            uid: req.uid(),
            gid: req.gid(),
            atime: now,
            mtime: now,
            ctime: now,
            shm: name.as_encoded_bytes().ends_with(b"-shm"),
        };
        let attr = node.attr(ino);
        self.nodes.insert(ino, node);
        self.entries(dir)?.insert(name.to_owned(), ino);
        Ok(attr)
    }

    fn data(&mut self, ino: u64) -> Result<&mut Data, Errno> {
        match &mut self.node(ino)?.body {
            Body::File(d) => Ok(d),
            Body::Dir { .. } => Err(Errno::EISDIR),
            _ => Err(Errno::EINVAL),
        }
    }

    fn is_dir(&self, ino: u64) -> bool {
        matches!(
            self.nodes.get(&ino).map(|n| &n.body),
            Some(Body::Dir { .. })
        )
    }

    fn is_empty_dir(&self, ino: u64) -> bool {
        matches!(self.nodes.get(&ino).map(|n| &n.body), Some(Body::Dir { cur, .. }) if cur.is_empty())
    }

    fn set_parent(&mut self, ino: u64, new_parent: u64) {
        if let Some(Inode {
            body: Body::Dir { parent, .. },
            ..
        }) = self.nodes.get_mut(&ino)
        {
            *parent = new_parent;
        }
    }

    fn rename(
        &mut self,
        from: (u64, &OsStr),
        to: (u64, &OsStr),
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        let moved = self.lookup(from.0, from.1)?;
        let target = self.entries(to.0)?.get(to.1).copied();
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            let Some(other) = target else {
                return Err(Errno::ENOENT);
            };
            self.entries(from.0)?.insert(from.1.to_owned(), other);
            self.entries(to.0)?.insert(to.1.to_owned(), moved);
            self.set_parent(other, from.0);
            self.set_parent(moved, to.0);
            return Ok(());
        }
        if let Some(t) = target {
            if t == moved {
                return Ok(());
            }
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EEXIST);
            }
            match (self.is_dir(moved), self.is_dir(t)) {
                (true, true) if !self.is_empty_dir(t) => return Err(Errno::ENOTEMPTY),
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                _ => {}
            }
        }
        self.entries(from.0)?.remove(from.1);
        self.entries(to.0)?.insert(to.1.to_owned(), moved);
        self.set_parent(moved, to.0);
        Ok(())
    }

    fn sync_file(&mut self, ino: u64) -> Result<(), Errno> {
        match &mut self.node(ino)?.body {
            Body::File(d) => d.sync(),
            Body::Dir { cur, durable, .. } => *durable = cur.clone(),
            _ => {}
        }
        Ok(())
    }

    /// Everything current becomes durable (a clean shutdown, or the setup a test takes as
    /// given).
    fn sync_all(&mut self) {
        for n in self.nodes.values_mut() {
            match &mut n.body {
                Body::File(d) => d.sync(),
                Body::Dir { cur, durable, .. } => *durable = cur.clone(),
                _ => {}
            }
        }
    }

    fn power_cut(&mut self) -> Lost {
        let mut lost = Lost::default();
        // What the disk holds: the inodes durable entries reach from the root, each
        // directory with its durable entries (and the parent that reaches it).
        let mut reached = HashSet::from([ROOT]);
        let mut todo = vec![(ROOT, ROOT)];
        while let Some((ino, from)) = todo.pop() {
            let Some(node) = self.nodes.get_mut(&ino) else {
                continue;
            };
            match &mut node.body {
                Body::File(d) => lost.files += usize::from(d.revert()),
                Body::Dir {
                    cur,
                    durable,
                    parent,
                } => {
                    if cur != durable {
                        lost.dirs += 1;
                        *cur = durable.clone();
                    }
                    *parent = from;
                    for &child in durable.values() {
                        if reached.insert(child) {
                            todo.push((child, ino));
                        }
                    }
                }
                _ => {}
            }
        }
        let before = self.nodes.len();
        self.nodes.retain(|ino, _| reached.contains(ino));
        lost.forgotten = before - self.nodes.len();
        lost
    }
}

/// The filesystem the kernel talks to; shares its tree with the [`Disk`].
#[derive(Debug)]
struct PowerFs(Arc<Mutex<Tree>>);

impl PowerFs {
    fn tree(&self) -> MutexGuard<'_, Tree> {
        // A panic inside a request leaves the tree as consistent as any other moment.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn entry(reply: ReplyEntry, r: Result<FileAttr, Errno>) {
    match r {
        Ok(a) => reply.entry(&TTL, &a, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl Filesystem for PowerFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut t = self.tree();
        let r = t
            .lookup(parent.0, name)
            .and_then(|ino| Ok(t.node(ino)?.attr(ino)));
        entry(reply, r);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.tree().node(ino.0) {
            Ok(n) => reply.attr(&TTL, &n.attr(ino.0)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut t = self.tree();
        let r = (|| {
            if let Some(size) = size {
                t.data(ino.0)?.set_len(size as usize);
            }
            let n = t.node(ino.0)?;
            if let Some(m) = mode {
                n.perm = (m & 0o7777) as u16;
            }
            if let Some(u) = uid {
                n.uid = u;
            }
            if let Some(g) = gid {
                n.gid = g;
            }
            if let Some(a) = atime {
                n.atime = time(a);
            }
            if let Some(m) = mtime {
                n.mtime = time(m);
            }
            n.ctime = SystemTime::now();
            Ok(n.attr(ino.0))
        })();
        match r {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.tree().node(ino.0).map(|n| &n.body) {
            Ok(Body::Symlink(target)) => reply.data(target.as_os_str().as_encoded_bytes()),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let body = match mode & S_IFMT {
            S_IFREG => Body::File(Data::default()),
            // The daemon's local socket: bind(2) makes the name here, the kernel keeps
            // the socket.
            S_IFSOCK => Body::Special(FileType::Socket),
            S_IFIFO => Body::Special(FileType::NamedPipe),
            _ => return reply.error(Errno::EPERM),
        };
        let r = self.tree().add(req, parent.0, name, body, mode);
        entry(reply, r);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let body = Body::Dir {
            cur: BTreeMap::new(),
            durable: BTreeMap::new(),
            parent: parent.0,
        };
        let r = self.tree().add(req, parent.0, name, body, mode);
        entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut t = self.tree();
        let r = (|| {
            let ino = t.lookup(parent.0, name)?;
            if t.is_dir(ino) {
                return Err(Errno::EISDIR);
            }
            // The inode stays (open handles still read it; a durable entry may still
            // name it); a cut forgets it if nothing durable does.
            t.entries(parent.0)?.remove(name);
            Ok(())
        })();
        empty(reply, r);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut t = self.tree();
        let r = (|| {
            let ino = t.lookup(parent.0, name)?;
            if !t.is_dir(ino) {
                return Err(Errno::ENOTDIR);
            }
            if !t.is_empty_dir(ino) {
                return Err(Errno::ENOTEMPTY);
            }
            t.entries(parent.0)?.remove(name);
            Ok(())
        })();
        empty(reply, r);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let body = Body::Symlink(target.to_path_buf());
        let r = self.tree().add(req, parent.0, link_name, body, 0o777);
        entry(reply, r);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = self
            .tree()
            .rename((parent.0, name), (newparent.0, newname), flags);
        empty(reply, r);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.tree().node(ino.0) {
            Ok(n) if matches!(n.body, Body::File(_)) => reply.opened(FileHandle(0), open_flags(n)),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut t = self.tree();
        let r = t
            .add(req, parent.0, name, Body::File(Data::default()), mode)
            .and_then(|a| Ok((a, open_flags(t.node(a.ino.0)?))));
        match r {
            Ok((a, flags)) => reply.created(&TTL, &a, Generation(0), FileHandle(0), flags),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut t = self.tree();
        match t.data(ino.0) {
            Ok(d) => {
                let a = (offset as usize).min(d.cur.len());
                let b = (a + size as usize).min(d.cur.len());
                reply.data(&d.cur[a..b]);
            }
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut t = self.tree();
        let r = (|| {
            t.data(ino.0)?.write(offset as usize, data);
            let n = t.node(ino.0)?;
            n.mtime = SystemTime::now();
            n.ctime = n.mtime;
            Ok(())
        })();
        match r {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) promises nothing about durability.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // fdatasync keeps the size too (the data is unreachable without it). A directory's
        // sync (fsyncdir) lands here too.
        let r = self.tree().sync_file(ino.0);
        empty(reply, r);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let t = self.tree();
        let Some(Body::Dir { cur, parent, .. }) = t.nodes.get(&ino.0).map(|n| &n.body) else {
            return reply.error(Errno::ENOTDIR);
        };
        let dots = [
            (ino.0, FileType::Directory, OsStr::new(".")),
            (*parent, FileType::Directory, OsStr::new("..")),
        ];
        let children = cur.iter().map(|(name, &child)| {
            let kind = t
                .nodes
                .get(&child)
                .map_or(FileType::RegularFile, Inode::kind);
            (child, kind, name.as_os_str())
        });
        for (i, (child, kind, name)) in dots
            .into_iter()
            .chain(children)
            .enumerate()
            .skip(offset as usize)
        {
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        // The same promotion: the directory's current entries become durable.
        self.fsync(req, ino, fh, datasync, reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Plenty of room: disk-full behaviour is tested elsewhere, with small tmpfs mounts.
        let blocks = 16 << 20;
        reply.statfs(
            blocks,
            blocks,
            blocks,
            1 << 20,
            1 << 20,
            PAGE as u32,
            255,
            PAGE as u32,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // The kernel checks modes itself (`default_permissions`).
        reply.ok();
    }
}

/// `direct_io` for every file but a mapped one: every read and write of it reaches the
/// filesystem, none stays in (or is answered from) the page cache.
fn open_flags(n: &Inode) -> FopenFlags {
    if n.shm {
        FopenFlags::empty()
    } else {
        FopenFlags::FOPEN_DIRECT_IO
    }
}

/// A mounted power-cut disk; unmounted when dropped.
#[derive(Debug)]
pub struct Disk {
    tree: Arc<Mutex<Tree>>,
    at: PathBuf,
    session: Option<BackgroundSession>,
}

impl Disk {
    /// Mount an empty disk at `at` (created if missing). Panics, naming what is missing,
    /// when FUSE is not available: a power-cut test that cannot cut power must not pass.
    pub fn mount(at: &Path) -> Self {
        if let Err(e) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
        {
            panic!(
                "power-cut tests need FUSE: cannot open /dev/fuse ({e}); run them on Linux as \
                 root with the fuse module loaded (`modprobe fuse`)"
            );
        }
        std::fs::create_dir_all(at).expect("mount point");
        let mut disk = Self {
            tree: Arc::new(Mutex::new(Tree::new())),
            at: at.to_path_buf(),
            session: None,
        };
        disk.attach();
        disk
    }

    fn attach(&mut self) {
        let mut cfg = fuser::Config::default();
        cfg.mount_options = vec![
            MountOption::FSName("claudemesh-power".into()),
            MountOption::DefaultPermissions,
        ];
        let fs = PowerFs(self.tree.clone());
        let session = fuser::spawn_mount(fs, &self.at, &cfg).unwrap_or_else(|e| {
            panic!(
                "power-cut tests need to mount a FUSE filesystem at {} and could not ({e}): \
                 they must run as root (mount(2) on /dev/fuse, no fusermount needed)",
                self.at.display()
            )
        });
        self.session = Some(session);
    }

    fn detach(&mut self) {
        if let Some(s) = self.session.take() {
            s.umount_and_join().unwrap_or_else(|e| {
                panic!(
                    "cannot unmount the power-cut disk at {} ({e}): is a process still using it?",
                    self.at.display()
                )
            });
        }
    }

    fn tree(&self) -> MutexGuard<'_, Tree> {
        self.tree.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.at
    }

    /// Make everything written so far durable, as if it had been there for long (a test's
    /// setup, which is not what it tests).
    pub fn sync_all(&self) {
        self.tree().sync_all();
    }

    /// Cut the power: unmount (every process using the disk must be dead by now), drop
    /// everything not durable, and mount what is left at the same place.
    pub fn power_cut(&mut self) -> Lost {
        self.detach();
        let lost = self.tree().power_cut();
        self.attach();
        lost
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if let Some(s) = self.session.take()
            && s.umount_and_join().is_err()
        {
            // Still busy (a test panicked with a process on the disk): detach it lazily so
            // the temporary directory can go; the kernel ends the connection when this
            // process exits.
            let _ = rustix::mount::unmount(&self.at, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Write as _;

    fn write(path: &Path, bytes: &[u8], sync: bool) {
        let mut f = std::fs::File::create(path).unwrap();
        f.write_all(bytes).unwrap();
        if sync {
            f.sync_all().unwrap();
        }
    }

    fn sync_dir(path: &Path) {
        std::fs::File::open(path).unwrap().sync_all().unwrap();
    }

    /// The negative control: data and names not synced are gone after a cut, synced ones
    /// are kept. Without it a power-cut test could pass against a disk that keeps all.
    #[test]
    fn a_cut_keeps_what_was_synced_and_drops_the_rest() {
        let root = tempfile::tempdir().unwrap();
        let mut disk = Disk::mount(&root.path().join("disk"));
        let d = disk.path().to_path_buf();

        write(&d.join("kept"), b"durable", true);
        write(&d.join("unsynced-data"), b"gone", false);
        // Overwritten and grown, not synced: the old image comes back.
        std::fs::OpenOptions::new()
            .write(true)
            .open(d.join("kept"))
            .unwrap()
            .write_all(b"changed, and longer")
            .unwrap();
        // A rename not synced did not happen.
        write(&d.join("old"), b"renamed", true);
        sync_dir(&d);
        // After the last sync of the directory: synced data under a name never synced.
        write(&d.join("unsynced-name"), b"x", true);
        std::fs::rename(d.join("old"), d.join("new")).unwrap();
        // A directory whose name was never synced is gone, with what was synced inside.
        std::fs::create_dir(d.join("sub")).unwrap();
        write(&d.join("sub/inner"), b"in", true);
        sync_dir(&d.join("sub"));
        // Read back through the kernel before the cut: it is all there.
        assert_eq!(
            std::fs::read(d.join("kept")).unwrap(),
            b"changed, and longer"
        );
        assert_eq!(std::fs::read(d.join("sub/inner")).unwrap(), b"in");

        let lost = disk.power_cut();

        assert_eq!(std::fs::read(d.join("kept")).unwrap(), b"durable");
        assert_eq!(std::fs::read(d.join("unsynced-data")).unwrap(), b"");
        assert!(!d.join("unsynced-name").exists());
        assert_eq!(std::fs::read(d.join("old")).unwrap(), b"renamed");
        assert!(!d.join("new").exists());
        assert!(!d.join("sub").exists());
        assert!(
            lost.files >= 2 && lost.dirs >= 1 && lost.forgotten >= 3,
            "{lost:?}"
        );

        // What survived a cut is durable, and a second cut loses nothing more.
        assert_eq!(disk.power_cut(), Lost::default());
        assert_eq!(std::fs::read(d.join("kept")).unwrap(), b"durable");
    }

    /// SQLite as the stores use it, on this disk: commits made with `synchronous=FULL`
    /// survive a cut, the last ones made with `NORMAL` (WAL appended, not synced) do not.
    #[test]
    fn sqlite_commits_survive_a_cut_only_when_synced() {
        use claudemesh_relay::sqlite::{self, Durability};
        let root = tempfile::tempdir().unwrap();
        let mut disk = Disk::mount(&root.path().join("disk"));
        let migrations = ["CREATE TABLE t (v TEXT NOT NULL);"];
        let rows = |conn: &rusqlite::Connection| -> Vec<String> {
            let mut s = conn.prepare("SELECT v FROM t ORDER BY rowid").unwrap();
            s.query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        for (name, durability) in [
            ("full.db", Durability::Full),
            ("normal.db", Durability::Normal),
        ] {
            let path = disk.path().join(name);
            let conn = sqlite::open(&path, &migrations, Durability::Full).unwrap();
            conn.execute("INSERT INTO t VALUES ('before')", []).unwrap();
            conn.pragma_update(
                None,
                "synchronous",
                if durability == Durability::Full {
                    "FULL"
                } else {
                    "NORMAL"
                },
            )
            .unwrap();
            conn.execute("INSERT INTO t VALUES ('after')", []).unwrap();
            // As a killed process would: no checkpoint (and so no sync) on the way out.
            conn.set_db_config(
                rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
                true,
            )
            .unwrap();
            drop(conn);
        }
        disk.power_cut();
        let full =
            sqlite::open(&disk.path().join("full.db"), &migrations, Durability::Full).unwrap();
        assert_eq!(rows(&full), ["before", "after"]);
        let normal = sqlite::open(
            &disk.path().join("normal.db"),
            &migrations,
            Durability::Full,
        )
        .unwrap();
        assert_eq!(
            rows(&normal),
            ["before"],
            "NORMAL's last commit was never synced"
        );
    }
}
