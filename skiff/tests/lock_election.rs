//! The server-side Lock and Election services (`v3lockpb`, `v3electionpb`) on a real
//! 3-member cluster, through tonic clients from `skiff-proto` (etcdctl 3.4's `lock` and
//! `elect` run the client-side recipe instead; they are used here to check that both
//! recipes agree on keys and exclude each other).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::Cluster;
use skiff_proto::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest, lease_client::LeaseClient};
use skiff_proto::v3electionpb::{
    CampaignRequest, LeaderRequest, ProclaimRequest, ResignRequest, election_client::ElectionClient,
};
use skiff_proto::v3lockpb::{LockRequest, UnlockRequest, lock_client::LockClient};
use tonic::transport::Channel;

async fn channel(endpoint: &str) -> Channel {
    Channel::from_shared(format!("http://{endpoint}"))
        .expect("endpoint URL")
        .connect()
        .await
        .expect("connect")
}

async fn grant(channel: &Channel, ttl: i64) -> i64 {
    LeaseClient::new(channel.clone())
        .lease_grant(LeaseGrantRequest { ttl, id: 0 })
        .await
        .expect("lease grant")
        .into_inner()
        .id
}

/// Whether `future` is still pending after `wait`.
async fn still_blocked<F: std::future::Future + Unpin>(future: &mut F, wait: Duration) -> bool {
    tokio::time::timeout(wait, future).await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_is_exclusive_and_follows_unlock_and_lease_revoke() {
    let cluster = Cluster::start(3);
    let a = channel(&cluster.members[0].endpoint()).await;
    let b = channel(&cluster.members[1].endpoint()).await;
    let c = channel(&cluster.members[2].endpoint()).await;
    let (lease_a, lease_b, lease_c) = (
        grant(&a, 60).await,
        grant(&b, 60).await,
        grant(&c, 60).await,
    );

    // A takes the lock at once; its key is <name>/<lease hex>.
    let held = LockClient::new(a.clone())
        .lock(LockRequest {
            name: b"jobs".to_vec(),
            lease: lease_a,
        })
        .await
        .expect("A locks")
        .into_inner();
    assert_eq!(held.key, format!("jobs/{lease_a:x}").into_bytes());
    assert!(held.header.expect("header").revision > 0);

    // B (through another member) and C wait behind it.
    let mut lock_b = LockClient::new(b.clone());
    let mut waiting_b = Box::pin(lock_b.lock(LockRequest {
        name: b"jobs".to_vec(),
        lease: lease_b,
    }));
    assert!(
        still_blocked(&mut waiting_b, Duration::from_millis(1500)).await,
        "B got the lock while A held it"
    );
    let mut lock_c = LockClient::new(c.clone());
    let mut waiting_c = Box::pin(lock_c.lock(LockRequest {
        name: b"jobs".to_vec(),
        lease: lease_c,
    }));
    assert!(still_blocked(&mut waiting_c, Duration::from_millis(300)).await);

    // Unlock hands the lock to B (the next in create-revision order), not C.
    LockClient::new(a.clone())
        .unlock(UnlockRequest { key: held.key })
        .await
        .expect("unlock");
    let got_b = tokio::time::timeout(Duration::from_secs(5), &mut waiting_b)
        .await
        .expect("B gets the lock after A unlocks")
        .expect("B's lock")
        .into_inner();
    assert_eq!(got_b.key, format!("jobs/{lease_b:x}").into_bytes());
    assert!(
        still_blocked(&mut waiting_c, Duration::from_millis(1000)).await,
        "C got the lock while B held it"
    );

    // Revoking the holder's lease releases the lock too.
    LeaseClient::new(b.clone())
        .lease_revoke(LeaseRevokeRequest { id: lease_b })
        .await
        .expect("revoke B's lease");
    let got_c = tokio::time::timeout(Duration::from_secs(5), &mut waiting_c)
        .await
        .expect("C gets the lock once B's lease is revoked")
        .expect("C's lock")
        .into_inner();
    assert_eq!(got_c.key, format!("jobs/{lease_c:x}").into_bytes());

    // A server-side holder excludes etcdctl's client-side recipe on the same name.
    let endpoints = cluster.endpoints();
    let mut etcdctl = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &endpoints,
            "lock",
            "jobs",
            "echo",
            "etcdctl-held",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcdctl");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        etcdctl.try_wait().expect("poll etcdctl").is_none(),
        "etcdctl lock succeeded while the gRPC Lock holder had it"
    );
    LockClient::new(c.clone())
        .unlock(UnlockRequest { key: got_c.key })
        .await
        .expect("unlock C");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = etcdctl.try_wait().expect("poll etcdctl") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = etcdctl.kill();
            panic!("etcdctl lock never got the lock after Unlock");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = etcdctl.wait_with_output().expect("etcdctl output");
    assert!(status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("etcdctl-held"));

    // Lease 0: the service grants a lease itself (as etcd's session does).
    let own = LockClient::new(a.clone())
        .lock(LockRequest {
            name: b"solo".to_vec(),
            lease: 0,
        })
        .await
        .expect("lock with lease 0")
        .into_inner();
    assert!(own.key.starts_with(b"solo/") && own.key.len() > 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_campaign_leader_observe_proclaim_resign() {
    let cluster = Cluster::start(3);
    let a = channel(&cluster.members[0].endpoint()).await;
    let b = channel(&cluster.members[2].endpoint()).await;
    let (lease_a, lease_b) = (grant(&a, 60).await, grant(&b, 60).await);
    let mut election = ElectionClient::new(a.clone());

    // No candidate yet.
    let none = election
        .leader(LeaderRequest {
            name: b"svc".to_vec(),
        })
        .await
        .expect_err("no leader yet");
    assert_eq!(none.code(), tonic::Code::Unknown);
    assert_eq!(none.message(), "election: no leader");

    // An observer started before anyone campaigns sees every leader in order.
    let mut observe = ElectionClient::new(b.clone())
        .observe(LeaderRequest {
            name: b"svc".to_vec(),
        })
        .await
        .expect("observe")
        .into_inner();

    let won = election
        .campaign(CampaignRequest {
            name: b"svc".to_vec(),
            lease: lease_a,
            value: b"a-1".to_vec(),
        })
        .await
        .expect("A campaigns")
        .into_inner();
    let leader_a = won.leader.expect("leader key");
    assert_eq!(leader_a.key, format!("svc/{lease_a:x}").into_bytes());
    assert_eq!(leader_a.lease, lease_a);
    assert_eq!(leader_a.name, b"svc".to_vec());
    assert_eq!(
        leader_a.rev,
        won.header.expect("header").revision,
        "a new candidate's rev is the revision that created its key"
    );

    // B campaigns and waits.
    let mut election_b = ElectionClient::new(b.clone());
    let mut campaign_b = Box::pin(election_b.campaign(CampaignRequest {
        name: b"svc".to_vec(),
        lease: lease_b,
        value: b"b-1".to_vec(),
    }));
    assert!(
        still_blocked(&mut campaign_b, Duration::from_millis(1500)).await,
        "B won while A leads"
    );

    let current = election
        .leader(LeaderRequest {
            name: b"svc".to_vec(),
        })
        .await
        .expect("leader")
        .into_inner();
    assert_eq!(current.kv.expect("kv").value, b"a-1".to_vec());

    // etcdctl's client-side observer agrees on key and value.
    let mut listener = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &cluster.endpoints(), "elect", "-l", "svc"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcdctl elect -l");

    election
        .proclaim(ProclaimRequest {
            leader: Some(leader_a.clone()),
            value: b"a-2".to_vec(),
        })
        .await
        .expect("proclaim");
    election
        .resign(ResignRequest {
            leader: Some(leader_a.clone()),
        })
        .await
        .expect("resign");
    let won_b = tokio::time::timeout(Duration::from_secs(5), &mut campaign_b)
        .await
        .expect("B wins after A resigns")
        .expect("B's campaign")
        .into_inner();
    let leader_b = won_b.leader.expect("B's leader key");
    assert_eq!(leader_b.key, format!("svc/{lease_b:x}").into_bytes());
    assert!(leader_b.rev > leader_a.rev);

    // The observer saw a-1, a-2, b-1 in that order.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let next = tokio::time::timeout(Duration::from_secs(5), observe.message())
            .await
            .expect("observe delivers")
            .expect("observe stream")
            .expect("observe not ended");
        let kv = next.kv.expect("kv");
        if seen.len() < 2 {
            // Seen as they happen: the header is the event's revision.
            assert_eq!(next.header.expect("header").revision, kv.mod_revision);
        }
        seen.push(String::from_utf8(kv.value).expect("utf8"));
    }
    assert_eq!(seen, ["a-1", "a-2", "b-1"]);

    // A's old leadership is gone: Proclaim with it fails as etcd's does.
    let stale = election
        .proclaim(ProclaimRequest {
            leader: Some(leader_a),
            value: b"late".to_vec(),
        })
        .await
        .expect_err("stale proclaim");
    assert_eq!(stale.message(), "election: not leader");
    let missing = election
        .resign(ResignRequest { leader: None })
        .await
        .expect_err("resign without leader");
    assert_eq!(missing.message(), "\"leader\" field must be provided");

    // etcdctl elect -l printed the leader key and values too.
    std::thread::sleep(Duration::from_millis(500));
    let _ = listener.kill();
    let out = listener.wait_with_output().expect("etcdctl output");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains(&format!("svc/{lease_b:x}")) && printed.contains("b-1"),
        "etcdctl elect -l printed {printed:?}"
    );
}

/// With auth on, the services act as their caller: a user may lock a name under the
/// prefix its role can write, and is refused (etcd's message) elsewhere and without a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_election_act_as_their_caller_under_auth() {
    use skiff_proto::etcdserverpb::{AuthenticateRequest, auth_client::AuthClient};
    let cluster = Cluster::start(1);
    let endpoint = cluster.members[0].endpoint();
    for args in [
        vec!["user", "add", "root:rootpw"],
        vec!["role", "add", "locker"],
        vec![
            "role",
            "grant-permission",
            "locker",
            "readwrite",
            "jobs/",
            "--prefix=true",
        ],
        vec!["user", "add", "alice:alicepw"],
        vec!["user", "grant-role", "alice", "locker"],
        vec!["auth", "enable"],
    ] {
        common::etcdctl_ok(&endpoint, &args);
    }
    let channel = channel(&endpoint).await;
    let token = AuthClient::new(channel.clone())
        .authenticate(AuthenticateRequest {
            name: "alice".into(),
            password: "alicepw".into(),
        })
        .await
        .expect("authenticate")
        .into_inner()
        .token;
    fn with<T>(token: &str, body: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(body);
        request
            .metadata_mut()
            .insert("token", token.parse().expect("ascii token"));
        request
    }
    let mut locks = LockClient::new(channel.clone());
    let held = locks
        .lock(with(
            &token,
            LockRequest {
                name: b"jobs".to_vec(),
                lease: 0,
            },
        ))
        .await
        .expect("alice locks jobs")
        .into_inner();
    assert!(held.key.starts_with(b"jobs/"));
    let denied = locks
        .lock(with(
            &token,
            LockRequest {
                name: b"payroll".to_vec(),
                lease: 0,
            },
        ))
        .await
        .expect_err("alice may not write payroll/");
    assert_eq!(denied.message(), "etcdserver: permission denied");
    let anonymous = LockClient::new(channel.clone())
        .lock(LockRequest {
            name: b"jobs".to_vec(),
            lease: 0,
        })
        .await
        .expect_err("no token");
    assert_eq!(anonymous.message(), "etcdserver: user name is empty");
    let elected = ElectionClient::new(channel.clone())
        .campaign(with(
            &token,
            CampaignRequest {
                name: b"jobs-leader".to_vec(),
                lease: 0,
                value: b"alice".to_vec(),
            },
        ))
        .await
        .expect_err("jobs-leader/ is outside alice's prefix jobs/... ");
    assert_eq!(elected.message(), "etcdserver: permission denied");
    locks
        .unlock(with(&token, UnlockRequest { key: held.key }))
        .await
        .expect("alice unlocks");
}
