//! `--cgroup FILE=VALUE`, `--cgroup-version`, `--parent-cgroup`: the VM's cgroup is
//! `<hierarchy>/<parent>/<id>` (in cgroup v1, one per controller named by the files), made
//! before the jail is entered, given the values, and joined by the jailer (so the VMM it
//! execs is in it). Undone if a later step fails.

use std::path::{Component, Path, PathBuf};

use crate::Error;

/// One `FILE=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub file: String,
    pub value: String,
    /// The controller, the file's name up to its first dot (`cpu` of `cpu.max`).
    pub controller: String,
}

/// The cgroups to make: each directory with its settings.
#[derive(Debug, Default)]
pub struct Plan {
    pub version: u8,
    /// (hierarchy root, the VM's cgroup directory, its settings) per hierarchy.
    pub groups: Vec<(PathBuf, PathBuf, Vec<Setting>)>,
}

/// What [`Plan::make`] made: directories to remove (deepest first) and where the jailer was.
#[derive(Debug, Default)]
pub struct Made {
    dirs: Vec<PathBuf>,
    /// (hierarchy root) for each joined hierarchy: undoing moves the process back there.
    joined: Vec<PathBuf>,
}

fn relative_and_plain(p: &Path) -> bool {
    p.components().all(|c| matches!(c, Component::Normal(_)))
}

pub fn parse_setting(text: &str) -> Result<Setting, Error> {
    let bad = |why: &str| Error::Flag(format!("--cgroup {text}: {why}"));
    let (file, value) = text
        .split_once('=')
        .ok_or_else(|| bad("use FILE=VALUE, e.g. cpu.max=50000"))?;
    if value.is_empty() {
        return Err(bad("the value is empty"));
    }
    if file.is_empty() || !relative_and_plain(Path::new(file)) || file.contains('/') {
        return Err(bad("the file must be a plain name such as cpu.max"));
    }
    let controller = match file.split_once('.') {
        Some((c, _)) if !c.is_empty() => c.to_string(),
        _ => return Err(bad("the file must be <controller>.<name>, such as cpu.max")),
    };
    Ok(Setting {
        file: file.to_string(),
        value: value.to_string(),
        controller,
    })
}

/// Where each mount of `fstype` is, with its options, from /proc/mounts' text.
fn mounts<'a>(text: &'a str, fstype: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
    text.lines().filter_map(move |l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() >= 4 && f[2] == fstype).then(|| (f[1], f[3]))
    })
}

impl Plan {
    /// The plan for `settings` under `parent`/`id`, from /proc/mounts' `mounts_text`.
    pub fn new(
        version: u8,
        settings: Vec<Setting>,
        parent: &Path,
        id: &str,
        mounts_text: &str,
    ) -> Result<Plan, Error> {
        if !relative_and_plain(parent) {
            return Err(Error::Flag(format!(
                "--parent-cgroup {}: give a relative path without '..'",
                parent.display()
            )));
        }
        let mut plan = Plan {
            version,
            groups: Vec::new(),
        };
        if version == 2 {
            let Some((root, _)) = mounts(mounts_text, "cgroup2").next() else {
                return Err(Error::Flag(
                    "--cgroup-version 2: no cgroup2 file system is mounted (/proc/mounts)".into(),
                ));
            };
            let root = PathBuf::from(root);
            if settings.is_empty() {
                return Ok(plan);
            }
            let controllers = std::fs::read_to_string(root.join("cgroup.controllers"))
                .map_err(Error::step("read", root.join("cgroup.controllers")))?;
            for s in &settings {
                if !controllers.split_whitespace().any(|c| c == s.controller) {
                    return Err(Error::Flag(format!(
                        "--cgroup {}={}: cgroup v2 at {} has no {} controller (it has: {}); use another --cgroup-version or host",
                        s.file,
                        s.value,
                        root.display(),
                        s.controller,
                        controllers.trim()
                    )));
                }
            }
            let dir = root.join(parent).join(id);
            plan.groups.push((root, dir, settings));
            return Ok(plan);
        }
        for s in settings {
            let Some((root, _)) = mounts(mounts_text, "cgroup")
                .find(|(_, opts)| opts.split(',').any(|o| o == s.controller))
            else {
                return Err(Error::Flag(format!(
                    "--cgroup {}={}: no cgroup v1 hierarchy has the {} controller (/proc/mounts)",
                    s.file, s.value, s.controller
                )));
            };
            let root = PathBuf::from(root);
            match plan.groups.iter_mut().find(|(r, _, _)| *r == root) {
                Some((_, _, list)) => list.push(s),
                None => {
                    let dir = root.join(parent).join(id);
                    plan.groups.push((root, dir, vec![s]));
                }
            }
        }
        Ok(plan)
    }

    /// Make each cgroup, write its settings and move this process into it.
    pub fn make(&self) -> Result<Made, Error> {
        let mut made = Made::default();
        let result = self.make_into(&mut made);
        match result {
            Ok(()) => Ok(made),
            Err(e) => {
                made.undo();
                Err(e)
            }
        }
    }

    fn make_into(&self, made: &mut Made) -> Result<(), Error> {
        for (root, dir, settings) in &self.groups {
            if dir.exists() {
                return Err(Error::Step {
                    step: "make the cgroup",
                    path: dir.display().to_string(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "it exists already (another VM with this id?); remove it first",
                    ),
                });
            }
            // Each directory from the hierarchy's root down: made if missing (and noted),
            // and in cgroup v2 each parent passes the controllers down.
            let mut at = root.clone();
            let rel = dir.strip_prefix(root).unwrap_or(dir);
            for part in rel.components() {
                if self.version == 2 {
                    for s in settings {
                        let control = at.join("cgroup.subtree_control");
                        std::fs::write(&control, format!("+{}", s.controller))
                            .map_err(Error::step("enable the controller in", &control))?;
                    }
                }
                let parent = at.clone();
                at.push(part);
                if !at.exists() {
                    std::fs::create_dir(&at).map_err(Error::step("make the cgroup", &at))?;
                    made.dirs.push(at.clone());
                    if self.version == 1 {
                        inherit_cpuset(&parent, &at)?;
                    }
                }
            }
            for s in settings {
                let file = dir.join(&s.file);
                std::fs::write(&file, &s.value)
                    .map_err(Error::step("write the cgroup file", &file))?;
            }
            let procs = dir.join("cgroup.procs");
            std::fs::write(&procs, std::process::id().to_string())
                .map_err(Error::step("join the cgroup", &procs))?;
            made.joined.push(root.clone());
        }
        Ok(())
    }
}

/// A new cpuset cgroup (v1) has no CPUs or memory nodes until given its parent's.
fn inherit_cpuset(parent: &Path, dir: &Path) -> Result<(), Error> {
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let (from, to) = (parent.join(f), dir.join(f));
        if let Ok(value) = std::fs::read_to_string(&from) {
            std::fs::write(&to, value.trim()).map_err(Error::step("write the cgroup file", &to))?;
        }
    }
    Ok(())
}

impl Made {
    /// Move this process back to each hierarchy's root and remove what was made.
    pub fn undo(&mut self) {
        for root in self.joined.drain(..) {
            let _ = std::fs::write(root.join("cgroup.procs"), std::process::id().to_string());
        }
        for dir in self.dirs.drain(..).rev() {
            let _ = std::fs::remove_dir(&dir);
        }
    }

    /// Keep what was made (the VMM runs in it).
    pub fn keep(mut self) {
        self.dirs.clear();
        self.joined.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0\n\
        cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n\
        cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n";

    #[test]
    fn settings_are_checked() {
        let s = parse_setting("cpu.max=50000 100000").unwrap();
        assert_eq!(
            (s.controller.as_str(), s.value.as_str()),
            ("cpu", "50000 100000")
        );
        for bad in [
            "cpu.max", "cpu.max=", "../x.y=1", "a/b.c=1", "nodot=1", ".x=1",
        ] {
            assert!(parse_setting(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn v1_groups_follow_their_controllers_mounts() {
        let settings = vec![parse_setting("pids.max=10").unwrap()];
        let p = Plan::new(1, settings, Path::new("firecracker"), "vm1", MOUNTS).unwrap();
        assert_eq!(
            p.groups[0].1,
            Path::new("/sys/fs/cgroup/pids/firecracker/vm1")
        );
        let e = Plan::new(
            1,
            vec![parse_setting("memory.max=1").unwrap()],
            Path::new("fc"),
            "vm1",
            MOUNTS,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("no cgroup v1 hierarchy has the memory controller")
        );
        let e = Plan::new(1, vec![], Path::new("../x"), "vm1", MOUNTS).unwrap_err();
        assert!(e.to_string().contains("--parent-cgroup ../x"));
    }
}
