use enforcer::netns::{self, NetnsError};

use crate::kernel;

/// Removes the namespace when dropped, so a failing assertion still cleans up.
struct Guard(String);

impl Guard {
    fn new(tag: &str) -> Self {
        let name = format!("{}-0", kernel::prefix(tag));
        netns::add(&name).unwrap();
        Guard(name)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = netns::delete(&self.0);
    }
}

fn current_netns() -> std::path::PathBuf {
    std::fs::read_link("/proc/thread-self/ns/net").unwrap()
}

#[test]
fn run_in_enters_only_a_dedicated_thread() {
    if !kernel::available("run_in_enters_only_a_dedicated_thread") {
        return;
    }
    let ns = Guard::new("runin");
    assert!(netns::exists(&ns.0));
    assert!(netns::list().unwrap().contains(&ns.0));
    let outside = current_netns();
    let inside = netns::run_in(&ns.0, current_netns).unwrap();
    assert_ne!(inside, outside);
    assert_eq!(current_netns(), outside, "caller's thread must not move");
    // The new namespace has only a down loopback interface.
    let links = netns::run_in(&ns.0, || {
        std::fs::read_to_string("/proc/thread-self/net/dev")
    })
    .unwrap();
    let links = links.unwrap();
    assert!(links.contains("lo:") && !links.contains("eth0"), "{links}");

    let t = netns::spawn_in(&ns.0, current_netns).unwrap();
    assert_eq!(t.netns(), ns.0);
    assert_eq!(t.join().unwrap(), inside);
}

#[test]
fn errors_name_the_netns_and_carry_stderr() {
    if !kernel::available("errors_name_the_netns_and_carry_stderr") {
        return;
    }
    let ns = Guard::new("err");
    let err = netns::exec_checked(&ns.0, "ip", &["link", "show", "nosuchdev"], None).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&ns.0) && msg.contains("nosuchdev"), "{msg}");

    let missing = format!("{}x", ns.0);
    let err = netns::run_in(&missing, || ()).unwrap_err();
    assert!(matches!(err, NetnsError::Open { .. }), "{err}");
    assert!(err.to_string().contains(&missing));
    assert!(netns::spawn_in(&missing, || ()).is_err());
    assert!(netns::delete(&missing).is_err());
}
