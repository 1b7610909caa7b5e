//! A three-member cluster starts and serves etcdctl put/get on every member.
mod common;

use common::{Cluster, etcdctl_ok};

#[test]
fn three_members_serve_put_and_get_everywhere() {
    let cluster = Cluster::start(3);
    let first = cluster.members[0].endpoint();
    assert_eq!(etcdctl_ok(&first, &["put", "greeting", "hello"]), "OK\n");
    for member in &cluster.members {
        assert_eq!(
            etcdctl_ok(&member.endpoint(), &["get", "greeting"]),
            "greeting\nhello\n"
        );
    }
    let list = etcdctl_ok(&first, &["member", "list"]);
    assert_eq!(list.lines().count(), 3, "{list}");
    assert!(list.lines().all(|l| l.contains(", started, m")), "{list}");
}
