//! Why the kernel refused to let coresnap attach (EPERM from
//! `PTRACE_SEIZE`), told in the order the kernel checks
//! (`__ptrace_may_access` in kernel/ptrace.c, then the security modules:
//! commoncap, then Yama), with what to do about each.

use crate::process::info::status_field;

/// Capability bit of CAP_SYS_PTRACE.
const CAP_SYS_PTRACE: u32 = 19;

/// What the kernel's checks look at, read from `/proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PtraceFacts {
    /// `kernel.yama.ptrace_scope`, when Yama is in the kernel.
    pub yama_scope: Option<u32>,
    /// coresnap's real uid and gid (PTRACE_SEIZE checks the real ids).
    pub caller_uid: u32,
    pub caller_gid: u32,
    /// coresnap's permitted and effective capability sets.
    pub caller_permitted: u64,
    pub caller_effective: u64,
    /// The target's real, effective and saved uids and gids.
    pub target_uids: [u32; 3],
    pub target_gids: [u32; 3],
    pub target_permitted: u64,
    /// `None` when it cannot be told (a root target).
    pub target_dumpable: Option<bool>,
    /// coresnap is an ancestor of the target (Yama scope 1 allows that).
    pub target_is_descendant: bool,
}

impl PtraceFacts {
    /// Reads the facts for target `pid` from `/proc`; `None` if the target
    /// is gone.
    pub fn read(pid: i32) -> Option<PtraceFacts> {
        let me = std::fs::read_to_string("/proc/self/status").ok()?;
        let target = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let ids = |text: &str, key: &str| -> Option<[u32; 3]> {
            let mut values = status_field(text, key)?
                .split_whitespace()
                .map(|v| v.parse().ok());
            Some([values.next()??, values.next()??, values.next()??])
        };
        let caps = |text: &str, key: &str| u64::from_str_radix(status_field(text, key)?, 16).ok();
        let target_uids = ids(&target, "Uid:")?;
        // A process that is not dumpable has its /proc files owned by root
        // (task_dump_owner), whoever it runs as.
        let target_dumpable = match target_uids[1] {
            0 => None,
            _ => {
                use std::os::unix::fs::MetadataExt;
                std::fs::metadata(format!("/proc/{pid}/stat"))
                    .ok()
                    .map(|m| m.uid() != 0)
            }
        };
        Some(PtraceFacts {
            yama_scope: std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
                .ok()
                .and_then(|s| s.trim().parse().ok()),
            caller_uid: ids(&me, "Uid:")?[0],
            caller_gid: ids(&me, "Gid:")?[0],
            caller_permitted: caps(&me, "CapPrm:")?,
            caller_effective: caps(&me, "CapEff:")?,
            target_uids,
            target_gids: ids(&target, "Gid:")?,
            target_permitted: caps(&target, "CapPrm:")?,
            target_dumpable,
            target_is_descendant: is_descendant(pid, std::process::id() as i32),
        })
    }

    fn has_sys_ptrace(&self) -> bool {
        self.caller_effective & (1 << CAP_SYS_PTRACE) != 0
    }

    /// The first check that fails, in the kernel's order (the kernel stops
    /// there too), with the way out.
    pub fn explain(&self) -> String {
        let mut reasons = Vec::new();
        let privileged = self.has_sys_ptrace();
        let same_uid = self.target_uids.iter().all(|&u| u == self.caller_uid);
        let same_gid = self.target_gids.iter().all(|&g| g == self.caller_gid);
        if !same_uid && !privileged {
            let [real, effective, saved] = self.target_uids;
            let runs_as = if real == effective && effective == saved {
                format!("uid {effective}")
            } else {
                format!("uids {real} (real), {effective} (effective), {saved} (saved)")
            };
            reasons.push(format!(
                "the process runs as {runs_as} and coresnap as uid {}; only the same user, or a process with CAP_SYS_PTRACE, may attach: run coresnap as uid {effective} or as root",
                self.caller_uid
            ));
        } else if !same_gid && !privileged {
            reasons.push(format!(
                "the process runs with gid {} and coresnap with gid {}; only the same user and group, or a process with CAP_SYS_PTRACE, may attach: run coresnap with gid {} or as root",
                self.target_gids[1], self.caller_gid, self.target_gids[1]
            ));
        } else if self.target_dumpable == Some(false) && !privileged {
            reasons.push(
                "the process is not dumpable (it called prctl(PR_SET_DUMPABLE, 0), or changed its credentials, as a setuid program does); only a process with CAP_SYS_PTRACE may attach: run coresnap as root"
                    .to_string(),
            );
        }
        let extra = self.target_permitted & !self.caller_permitted;
        if extra != 0 && !privileged {
            reasons.push(format!(
                "the process holds capabilities that coresnap lacks ({}) and coresnap has no CAP_SYS_PTRACE: run it as root with CAP_SYS_PTRACE (in a container: --cap-add SYS_PTRACE)",
                capability_names(extra)
            ));
        }
        match self.yama_scope {
            Some(1) if !privileged && !self.target_is_descendant => reasons.push(
                "kernel.yama.ptrace_scope is 1: only a parent may attach to its descendants (or a process the target named with PR_SET_PTRACER): run coresnap as root, or set the sysctl to 0".to_string(),
            ),
            Some(2) if !privileged => reasons.push(
                "kernel.yama.ptrace_scope is 2: only a process with CAP_SYS_PTRACE may attach: run coresnap as root".to_string(),
            ),
            Some(3) => reasons.push(
                "kernel.yama.ptrace_scope is 3: attaching is disabled for everyone until the next reboot; no dump is possible".to_string(),
            ),
            _ => {}
        }
        reasons.into_iter().next().unwrap_or_else(|| {
            "none of the usual reasons applies (same user, dumpable, no missing capability, Yama allows it), so a security module (SELinux, AppArmor) probably forbids it; see the audit log".to_string()
        })
    }
}

/// `ancestor` is on `pid`'s chain of parents.
fn is_descendant(pid: i32, ancestor: i32) -> bool {
    let mut current = pid;
    for _ in 0..4096 {
        let Some(parent) = std::fs::read_to_string(format!("/proc/{current}/status"))
            .ok()
            .and_then(|s| status_field(&s, "PPid:")?.parse::<i32>().ok())
        else {
            return false;
        };
        if parent == ancestor {
            return true;
        }
        if parent <= 1 {
            return false;
        }
        current = parent;
    }
    false
}

/// `CAP_SYS_PTRACE, CAP_NET_ADMIN, ...` for the bits set in `mask`.
fn capability_names(mask: u64) -> String {
    const NAMES: [&str; 41] = [
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ];
    let names: Vec<String> = (0..64)
        .filter(|bit| mask & (1u64 << bit) != 0)
        .map(|bit| match NAMES.get(bit) {
            Some(name) => format!("CAP_{name}"),
            None => format!("capability {bit}"),
        })
        .collect();
    // Root's full set is forty-odd names; the first few make the point.
    match names.len() {
        0..=4 => names.join(", "),
        n => format!("{} and {} more", names[..3].join(", "), n - 3),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_CAPS: u64 = (1 << 41) - 1;

    fn user(uid: u32) -> PtraceFacts {
        PtraceFacts {
            yama_scope: None,
            caller_uid: uid,
            caller_gid: uid,
            caller_permitted: 0,
            caller_effective: 0,
            target_uids: [uid; 3],
            target_gids: [uid; 3],
            target_permitted: 0,
            target_dumpable: Some(true),
            target_is_descendant: false,
        }
    }

    #[test]
    fn another_users_process() {
        let facts = PtraceFacts {
            target_uids: [0; 3],
            target_gids: [0; 3],
            target_permitted: ALL_CAPS,
            target_dumpable: None,
            ..user(1000)
        };
        let why = facts.explain();
        assert!(
            why.starts_with("the process runs as uid 0 and coresnap as uid 1000"),
            "{why}"
        );
        assert!(why.contains("run coresnap as uid 0 or as root"), "{why}");
    }

    #[test]
    fn a_setuid_style_change_of_saved_uid_counts_as_another_user() {
        let facts = PtraceFacts {
            target_uids: [1000, 1000, 0],
            ..user(1000)
        };
        assert!(facts.explain().contains(
            "runs as uids 1000 (real), 1000 (effective), 0 (saved) and coresnap as uid 1000"
        ));
    }

    #[test]
    fn a_process_that_is_not_dumpable() {
        let facts = PtraceFacts {
            target_dumpable: Some(false),
            ..user(1000)
        };
        assert!(facts.explain().starts_with("the process is not dumpable"));
    }

    #[test]
    fn root_without_cap_sys_ptrace() {
        let without = ALL_CAPS & !(1 << CAP_SYS_PTRACE);
        let facts = PtraceFacts {
            caller_permitted: without,
            caller_effective: without,
            target_permitted: ALL_CAPS,
            target_dumpable: None,
            ..user(0)
        };
        let why = facts.explain();
        assert!(
            why.starts_with("the process holds capabilities that coresnap lacks (CAP_SYS_PTRACE)"),
            "{why}"
        );
    }

    #[test]
    fn cap_sys_ptrace_overrides_the_user_and_capability_rules() {
        let facts = PtraceFacts {
            caller_effective: 1 << CAP_SYS_PTRACE,
            caller_permitted: 1 << CAP_SYS_PTRACE,
            target_uids: [0; 3],
            target_permitted: ALL_CAPS,
            target_dumpable: Some(false),
            ..user(1000)
        };
        assert!(facts.explain().contains("security module"));
    }

    #[test]
    fn each_yama_scope() {
        let scope = |value, descendant| {
            PtraceFacts {
                yama_scope: Some(value),
                target_is_descendant: descendant,
                ..user(1000)
            }
            .explain()
        };
        assert!(scope(0, false).contains("security module"));
        assert!(scope(1, false).starts_with("kernel.yama.ptrace_scope is 1"));
        assert!(scope(1, true).contains("security module"));
        assert!(scope(2, true).starts_with("kernel.yama.ptrace_scope is 2"));
        assert!(scope(3, true).contains("disabled for everyone"));
    }

    #[test]
    fn names_capabilities() {
        assert_eq!(capability_names(1 << 19), "CAP_SYS_PTRACE");
        assert_eq!(
            capability_names(ALL_CAPS),
            "CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and 38 more"
        );
    }

    /// The facts of a child of this test, as /proc has them.
    #[test]
    fn reads_the_facts_of_a_live_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let facts = PtraceFacts::read(child.id() as i32);
        child.kill().unwrap();
        child.wait().unwrap();
        let facts = facts.unwrap();
        let uid = nix::unistd::getuid().as_raw();
        assert_eq!(facts.caller_uid, uid);
        assert_eq!(facts.target_uids, [uid; 3]);
        assert!(facts.target_is_descendant);
    }
}
