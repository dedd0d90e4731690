//! The jail itself: the steps of [`crate`]'s list, in Firecracker's jailer's order.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{Gid, Uid};

use crate::cgroup::{self, Plan};
use crate::{Error, JailArgs};

/// The device nodes of the jail: (path under root, major, minor, required).
const DEVICES: &[(&str, u64, u64, bool)] = &[
    ("dev/kvm", 10, 232, true),
    ("dev/net/tun", 10, 200, true),
    ("dev/urandom", 1, 9, false),
];

/// CLOCK_MONOTONIC or the process's CPU clock, in microseconds (0 if it cannot be read).
pub fn clock_us(clock: libc::clockid_t) -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::from_raw(clock))
        .map(|ts| ts.tv_sec() as u64 * 1_000_000 + ts.tv_nsec() as u64 / 1_000)
        .unwrap_or(0)
}

/// Removes what it made (directories and files, newest first) if the jail is not finished
/// (dropped before `keep`). What was there before (Kata makes `root/run` itself) stays.
pub(crate) struct Undo {
    made: Vec<PathBuf>,
    cgroups: Option<cgroup::Made>,
}

impl Undo {
    /// `path` was made by the jailer.
    pub(crate) fn made(&mut self, path: &Path) {
        self.made.push(path.to_path_buf());
    }

    /// Make `path` and each missing parent, noting each one made.
    pub(crate) fn mkdirs(&mut self, path: &Path, mode: u32) -> Result<(), Error> {
        use std::os::unix::fs::DirBuilderExt;
        let mut missing = Vec::new();
        let mut at = Some(path);
        while let Some(p) = at.filter(|p| !p.exists()) {
            missing.push(p.to_path_buf());
            at = p.parent();
        }
        for dir in missing.into_iter().rev() {
            std::fs::DirBuilder::new()
                .mode(mode)
                .create(&dir)
                .map_err(Error::step("make the directory", &dir))?;
            self.made(&dir);
        }
        Ok(())
    }

    fn keep(mut self) {
        self.made.clear();
        if let Some(c) = self.cgroups.take() {
            c.keep();
        }
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if let Some(mut c) = self.cgroups.take() {
            c.undo();
        }
        for path in self.made.drain(..).rev() {
            if path.is_dir() && !path.is_symlink() {
                let _ = std::fs::remove_dir(&path);
            } else {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// The checked flags.
struct Checked {
    exec_file: PathBuf,
    exec_name: OsString,
    root: PathBuf,
    cgroups: Plan,
    limits: Vec<(nix::sys::resource::Resource, u64)>,
}

fn check(args: &JailArgs) -> Result<Checked, Error> {
    crate::check_id(&args.id)?;
    let shown = args.exec_file.display().to_string();
    if !args.exec_file.is_absolute() {
        return Err(Error::ExecFile(shown, "give an absolute path"));
    }
    let meta = std::fs::metadata(&args.exec_file)
        .map_err(|_| Error::ExecFile(shown.clone(), "no such file"))?;
    if !meta.is_file() {
        return Err(Error::ExecFile(shown, "is not a regular file"));
    }
    let exec_name = args
        .exec_file
        .file_name()
        .map(OsString::from)
        .ok_or_else(|| Error::ExecFile(shown.clone(), "has no file name"))?;
    let base_shown = args.chroot_base_dir.display().to_string();
    let base = match std::fs::metadata(&args.chroot_base_dir) {
        Ok(m) if m.is_dir() => args
            .chroot_base_dir
            .canonicalize()
            .map_err(|e| Error::Base(base_shown.clone(), e.to_string()))?,
        Ok(_) => return Err(Error::Base(base_shown, "is not a directory".into())),
        Err(_) => {
            return Err(Error::Base(
                base_shown,
                "no such directory (create it first)".into(),
            ));
        }
    };
    let settings = args
        .cgroup
        .iter()
        .map(|s| cgroup::parse_setting(s))
        .collect::<Result<Vec<_>, _>>()?;
    let parent = args
        .parent_cgroup
        .clone()
        .unwrap_or_else(|| PathBuf::from(&exec_name));
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let cgroups = Plan::new(args.cgroup_version, settings, &parent, &args.id, &mounts)?;
    let limits = args
        .resource_limit
        .iter()
        .map(|l| crate::parse_limit(l))
        .collect::<Result<Vec<_>, _>>()?;
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::Flag(
            "the jailer must run as root (it makes device nodes, mounts, and changes to --uid/--gid): run it as root".into(),
        ));
    }
    let root = base.join(&exec_name).join(&args.id).join("root");
    Ok(Checked {
        exec_file: args.exec_file.clone(),
        exec_name,
        root,
        cgroups,
        limits,
    })
}

/// Close every descriptor above stdio (Firecracker's jailer does too).
fn close_inherited() {
    // SAFETY: close_range closes descriptors of this process only; nothing in this process
    // holds one above 2 at this point (std opens none of its own).
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
}

/// A directory of the jail: made if missing, mode 0700, owned by the VMM's user.
fn jail_dir(undo: &mut Undo, path: &Path, uid: Uid, gid: Gid) -> Result<(), Error> {
    undo.mkdirs(path, 0o700)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .map_err(Error::step("set the mode of", path))?;
    nix::unistd::chown(path, Some(uid), Some(gid))
        .map_err(Error::errno("change the owner of", path))
}

/// The executable copied into the jail, owned by the VMM's user (over a copy already there,
/// as Firecracker's jailer does, but never through a link).
fn copy_exec(undo: &mut Undo, from: &Path, to: &Path, uid: Uid, gid: Gid) -> Result<(), Error> {
    let mut src = File::open(from).map_err(Error::step("open the exec file", from))?;
    let mode = src
        .metadata()
        .map_err(Error::step("look at the exec file", from))?
        .mode();
    let existed = to.symlink_metadata().is_ok();
    let mut dst = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(mode & 0o7777)
        .open(to)
        .map_err(Error::step("copy the exec file to", to))?;
    if !existed {
        undo.made(to);
    }
    let links = dst.metadata().map_err(Error::step("look at", to))?.nlink();
    if links > 1 {
        return Err(Error::Step {
            step: "copy the exec file to",
            path: to.display().to_string(),
            source: std::io::Error::other("it is a hard link to another file; remove it"),
        });
    }
    nix::unistd::fchown(&dst, Some(uid), Some(gid))
        .map_err(Error::errno("change the owner of", to))?;
    std::io::copy(&mut src, &mut dst).map_err(Error::step("copy the exec file to", to))?;
    Ok(())
}

/// /dev/userfaultfd's minor number, from /proc/misc, if the host has the device.
fn userfaultfd_minor() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/misc").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let minor = f.next()?.parse().ok()?;
        (f.next()? == "userfaultfd").then_some(minor)
    })
}

fn make_device(
    undo: &mut Undo,
    root: &Path,
    rel: &str,
    major: u64,
    minor: u64,
    uid: Uid,
    gid: Gid,
) -> Result<(), Error> {
    let path = root.join(rel);
    nix::sys::stat::mknod(
        &path,
        SFlag::S_IFCHR,
        Mode::S_IRUSR | Mode::S_IWUSR,
        nix::sys::stat::makedev(major, minor),
    )
    .map_err(Error::errno("make the device node", &path))?;
    undo.made(&path);
    nix::unistd::chown(&path, Some(uid), Some(gid))
        .map_err(Error::errno("change the owner of", &path))
}

/// Enter `root`: a mount namespace of our own, `root` bind-mounted on itself, pivot_root into
/// it and the old root detached.
fn enter(root: &Path) -> Result<(), Error> {
    nix::sched::unshare(CloneFlags::CLONE_NEWNS)
        .map_err(Error::errno("make a mount namespace for", root))?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(Error::errno("make mounts private (slave) at", "/"))?;
    nix::mount::mount(
        Some(root),
        root,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(Error::errno("bind-mount the jail on itself at", root))?;
    std::env::set_current_dir(root).map_err(Error::step("enter", root))?;
    let old = root.join("old_root");
    std::fs::create_dir(&old).map_err(Error::step("make", &old))?;
    nix::unistd::pivot_root(".", "old_root").map_err(Error::errno("pivot_root into", root))?;
    std::env::set_current_dir("/").map_err(Error::step("enter", "/ (the jail)"))?;
    nix::mount::umount2("old_root", MntFlags::MNT_DETACH)
        .map_err(Error::errno("detach the old root at", "/old_root"))?;
    std::fs::remove_dir("old_root").map_err(Error::step("remove", "/old_root"))
}

/// Fork; the parent exits at once (daemonizing). Returns in the child.
fn fork_and_leave(step: &'static str) -> Result<(), Error> {
    // SAFETY: the jailer is single-threaded here; the child only goes on with plain code
    // and exec.
    match unsafe { nix::unistd::fork() }.map_err(Error::errno(step, "the jailer"))? {
        nix::unistd::ForkResult::Parent { .. } => std::process::exit(0),
        nix::unistd::ForkResult::Child => Ok(()),
    }
}

fn write_pid_file(name: &OsString, pid: i32) -> Result<(), Error> {
    let mut path = OsString::from("/");
    path.push(name);
    path.push(".pid");
    let path = PathBuf::from(path);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(Error::step("write the pid file", &path))?;
    write!(f, "{pid}").map_err(Error::step("write the pid file", &path))
}

/// Make the jail and exec the VMM in it. Returns only on failure (nothing is left made).
/// `start_us` and `start_cpu_us` are the jailer's own start (CLOCK_MONOTONIC, CPU time).
pub fn run(
    args: &JailArgs,
    start_us: u64,
    start_cpu_us: u64,
) -> Result<std::convert::Infallible, Error> {
    let c = check(args)?;
    close_inherited();
    let (uid, gid) = (Uid::from_raw(args.uid), Gid::from_raw(args.gid));
    let mut undo = Undo {
        made: Vec::new(),
        cgroups: None,
    };
    if let Some(jail) = c.root.parent() {
        undo.mkdirs(jail, 0o755)?;
    }
    for dir in ["", "dev", "dev/net", "run"] {
        jail_dir(&mut undo, &c.root.join(dir), uid, gid)?;
    }
    copy_exec(
        &mut undo,
        &c.exec_file,
        &c.root.join(&c.exec_name),
        uid,
        gid,
    )?;
    let libs = crate::libs::needed(&c.exec_file)?;
    crate::libs::copy_into(&mut undo, &c.root, &libs)?;
    for &(rel, major, minor, required) in DEVICES {
        // A node left by an earlier jail of this id is taken as it is.
        if c.root.join(rel).exists() {
            continue;
        }
        match make_device(&mut undo, &c.root, rel, major, minor, uid, gid) {
            Ok(()) => {}
            Err(e) if !required => eprintln!("jailer: warning: {e} (going on without it)"),
            Err(e) => return Err(e),
        }
    }
    if let Some(minor) = userfaultfd_minor().filter(|_| !c.root.join("dev/userfaultfd").exists()) {
        make_device(&mut undo, &c.root, "dev/userfaultfd", 10, minor, uid, gid)?;
    }
    if let Some(netns) = &args.netns {
        let f = File::open(netns).map_err(Error::step("open the network namespace", netns))?;
        nix::sched::setns(&f, CloneFlags::CLONE_NEWNET)
            .map_err(Error::errno("join the network namespace", netns))?;
    }
    for &(resource, value) in &c.limits {
        nix::sys::resource::setrlimit(resource, value, value).map_err(Error::errno(
            "set the resource limit",
            format!("{resource:?}"),
        ))?;
    }
    undo.cgroups = Some(c.cgroups.make()?);
    let dev_null = if args.daemonize {
        Some(
            File::options()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(Error::step("open", "/dev/null"))?,
        )
    } else {
        None
    };
    enter(&c.root)?;
    // Past pivot_root the jail's directories cannot be reached to be removed; nothing below
    // fails but exec.
    undo.keep();
    let mut parent_cpu_us = clock_us(libc::CLOCK_PROCESS_CPUTIME_ID).saturating_sub(start_cpu_us);
    if let Some(null) = dev_null {
        use std::os::fd::AsRawFd;
        fork_and_leave("fork (daemonize)")?;
        nix::unistd::setsid().map_err(Error::errno(
            "start a session (daemonize) for",
            "the jailer",
        ))?;
        fork_and_leave("fork (daemonize)")?;
        for fd in 0..3 {
            // SAFETY: dup2 onto our own stdio descriptors.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
        parent_cpu_us += clock_us(libc::CLOCK_PROCESS_CPUTIME_ID);
    }
    if args.new_pid_ns {
        nix::sched::unshare(CloneFlags::CLONE_NEWPID)
            .map_err(Error::errno("make a PID namespace for", "the VMM"))?;
        // SAFETY: single-threaded; the child only execs.
        match unsafe { nix::unistd::fork() }
            .map_err(Error::errno("fork into the PID namespace", "the VMM"))?
        {
            nix::unistd::ForkResult::Parent { child } => {
                write_pid_file(&c.exec_name, child.as_raw())?;
                std::process::exit(0);
            }
            nix::unistd::ForkResult::Child => {
                let _ = nix::unistd::setsid();
            }
        }
    } else {
        write_pid_file(&c.exec_name, std::process::id() as i32)?;
    }
    let mut exe = OsString::from("/");
    exe.push(&c.exec_name);
    let err = std::process::Command::new(&exe)
        .args(["--id", &args.id])
        .args(["--start-time-us", &start_us.to_string()])
        .args([
            "--start-time-cpu-us",
            &clock_us(libc::CLOCK_PROCESS_CPUTIME_ID).to_string(),
        ])
        .args(["--parent-cpu-time-us", &parent_cpu_us.to_string()])
        .args(&args.vmm_args)
        .uid(args.uid)
        .gid(args.gid)
        .exec();
    Err(Error::Step {
        step: "exec",
        path: PathBuf::from(exe).display().to_string(),
        source: err,
    })
}
