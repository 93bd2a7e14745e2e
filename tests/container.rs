//! A target in its own pid and mount namespaces (a container), dumped from
//! the host by its host pid: the core names files as the container sees
//! them, and the manifest records both pids and the namespace ids.

mod common;

use common::*;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// `unshare --pid --mount --fork`, killed (with the whole namespace) on drop.
struct Container(Child);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn container_target_is_dumped_with_its_own_paths_and_both_pids() {
    require!(
        ptrace_access(),
        capability(
            Capability::SysAdmin,
            "to make pid and mount namespaces and mount a tmpfs in them"
        ),
        program("unshare", "--version", "util-linux"),
    );
    let scratch = Scratch::new("container");
    // Inside the namespace a tmpfs is mounted over this directory: the file
    // mapped there exists only for the container.
    let inner = scratch.path().join("inner");
    std::fs::create_dir(&inner).unwrap();
    let exe = build(Program::MapNames);
    let child = Command::new("unshare")
        // --kill-child: the target (pid 1 inside) dies with unshare.
        .args(["--pid", "--mount", "--fork", "--mount-proc", "--kill-child", "sh", "-c"])
        .arg(r#"mount -t tmpfs none "$1" && printf 'only inside the container' > "$1/private.txt" && exec "$0" "$1/private.txt""#)
        .arg(&exe)
        .arg(&inner)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let unshare_pid = child.id() as i32;
    let _container = Container(child);
    let mut host_pid = 0;
    assert!(
        wait_until(Duration::from_secs(10), || {
            host_pid =
                std::fs::read_to_string(format!("/proc/{unshare_pid}/task/{unshare_pid}/children"))
                    .ok()
                    .and_then(|c| c.split_whitespace().next()?.parse().ok())
                    .unwrap_or(0);
            host_pid != 0
                && std::fs::read_to_string(format!("/proc/{host_pid}/maps"))
                    .is_ok_and(|m| m.contains("private.txt"))
        }),
        "the container's target did not start"
    );
    assert!(
        !inner.join("private.txt").exists(),
        "the file must not be visible from the host"
    );
    wait_threads_sleeping(host_pid, &[]);

    let core = dump(Dumper::Coresnap, host_pid, scratch.path(), &["-a"]);
    assert_running_untraced(host_pid);
    let bytes = std::fs::read(&core).unwrap();
    let inside_path = format!("{}/private.txt", inner.display());
    assert!(
        bytes
            .windows(inside_path.len())
            .any(|w| w == inside_path.as_bytes()),
        "NT_FILE must name {inside_path}"
    );
    // The file's bytes, readable only inside the container, are in the core.
    let needle = b"only inside the container";
    assert!(bytes.windows(needle.len()).any(|w| w == needle));

    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{}.json", core.display())).unwrap())
            .unwrap();
    let ns = &manifest["target"]["namespaces"];
    assert_eq!(ns["pid_inside"], 1, "{ns}");
    assert_eq!(ns["pids"][0], host_pid, "{ns}");
    let pid_ns = std::fs::read_link(format!("/proc/{host_pid}/ns/pid")).unwrap();
    assert_eq!(ns["pid_ns"], pid_ns.to_string_lossy().as_ref(), "{ns}");
    assert_eq!(manifest["target"]["pid"], host_pid);
}
