//! Service addresses over an in-memory store: ranges parsed as kube-apiserver's flags,
//! ClusterIPs and NodePorts unique, provided ones checked with upstream's messages, kept on
//! update, given back on delete, on a failed write and when a type change drops them.

use std::collections::HashSet;

use super::*;
use crate::registry::fake_storage::Fake;

fn registry(ranges: ServiceRanges) -> Registry {
    Registry::new(
        Arc::new(Fake::default()),
        "/registry",
        resources::registry(),
        Vec::new(),
    )
    .with_service_ranges(ranges)
}

fn small() -> ServiceRanges {
    ServiceRanges::parse("10.96.0.0/28", "30000-30004").expect("ranges")
}

fn target<'r>(r: &'r Registry, name: Option<&str>) -> Target<'r> {
    Target {
        info: r.find("", "v1", "services").expect("services are served"),
        namespace: Some("ns".into()),
        name: name.map(str::to_string),
        subresource: None,
    }
}

fn service(name: &str, spec: Value) -> Bytes {
    let mut spec = spec;
    if spec["ports"].is_null() {
        spec["ports"] = json!([{"port": 80}]);
    }
    Bytes::from(
        serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "ns"}, "spec": spec}))
        .unwrap(),
    )
}

async fn create(r: &Registry, name: &str, spec: Value) -> Result<Value, ApiError> {
    r.create(
        &target(r, None),
        &HashMap::new(),
        &HeaderMap::new(),
        &service(name, spec),
    )
    .await?;
    Ok(stored(r, name).await.expect("stored"))
}

async fn stored(r: &Registry, name: &str) -> Option<Value> {
    let info = r.find("", "v1", "services").unwrap();
    let found = r
        .storage
        .get(&r.key(info, Some("ns"), name))
        .await
        .unwrap()?;
    Some(serde_json::from_slice(&found.value).unwrap())
}

async fn update(r: &Registry, obj: &Value) -> Result<Value, ApiError> {
    let name = obj["metadata"]["name"].as_str().unwrap().to_string();
    let body = Bytes::from(serde_json::to_vec(obj).unwrap());
    r.update(
        &target(r, Some(&name)),
        &HashMap::new(),
        &HeaderMap::new(),
        &body,
    )
    .await?;
    Ok(stored(r, &name).await.expect("stored"))
}

async fn delete(r: &Registry, name: &str) {
    r.delete(&target(r, Some(name)), &HashMap::new(), &Bytes::new())
        .await
        .expect("delete");
}

fn ip_of(obj: &Value) -> Ipv4Addr {
    obj["spec"]["clusterIP"].as_str().unwrap().parse().unwrap()
}

fn node_port_of(obj: &Value) -> u64 {
    obj["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .expect("a nodePort")
}

#[test]
fn ranges_parse_as_kube_apiservers_flags() {
    let r = ServiceRanges::parse("10.43.7.9/16", "30000-32767").unwrap();
    assert_eq!(r, ServiceRanges::default());
    assert_eq!(r.first_ip(), Ipv4Addr::new(10, 43, 0, 1));
    assert_eq!(r.cluster_ip_cidr(), "10.43.0.0/16");
    assert!(!r.contains(Ipv4Addr::new(10, 43, 0, 0)), "network address");
    assert!(
        !r.contains(Ipv4Addr::new(10, 43, 255, 255)),
        "broadcast address"
    );
    assert!(r.contains(Ipv4Addr::new(10, 43, 255, 254)));
    assert_eq!(
        ServiceRanges::parse("10.0.0.0/24", "31000+10")
            .unwrap()
            .node_ports,
        (31000, 31009)
    );
    for (ips, ports) in [
        ("10.0.0.0", "30000-32767"),
        ("fd00::/108", "30000-32767"),
        ("10.0.0.0/8", "30000-32767"),
        ("10.0.0.0/31", "30000-32767"),
        ("10.0.0.0/24", "32767-30000"),
        ("10.0.0.0/24", "x"),
        ("10.0.0.0/24", "65535+2"),
    ] {
        assert!(ServiceRanges::parse(ips, ports).is_err(), "{ips} {ports}");
    }
}

#[tokio::test]
async fn every_service_gets_its_own_cluster_ip_until_the_range_is_full() {
    let r = registry(small());
    let mut seen = HashSet::new();
    // 10.96.0.1–14 usable.
    for i in 0..14 {
        let svc = create(&r, &format!("s{i}"), json!({}))
            .await
            .expect("created");
        let ip = ip_of(&svc);
        assert!(r.service_ranges.contains(ip), "{ip}");
        assert_eq!(svc["spec"]["clusterIPs"], json!([ip.to_string()]));
        assert!(seen.insert(ip), "{ip} handed out twice");
    }
    let full = create(&r, "s14", json!({})).await.unwrap_err();
    assert_eq!(full.code, 500);
    assert_eq!(
        full.message,
        "Internal error occurred: failed to allocate a serviceIP: range is full"
    );
    // Deleting one gives its address back.
    let freed = ip_of(&stored(&r, "s3").await.unwrap());
    delete(&r, "s3").await;
    let again = create(&r, "s14", json!({})).await.expect("created");
    assert_eq!(ip_of(&again), freed);
}

#[tokio::test]
async fn dynamic_cluster_ips_stay_out_of_the_lower_band() {
    let r = registry(ServiceRanges::default());
    for i in 0..50 {
        let ip = ip_of(&create(&r, &format!("s{i}"), json!({})).await.unwrap());
        // 65,534 usable: the lower 256 are for users' choices.
        assert!(
            u32::from(ip) > u32::from(Ipv4Addr::new(10, 43, 1, 0)),
            "{ip}"
        );
    }
}

#[tokio::test]
async fn provided_addresses_are_checked_as_upstream_does() {
    let r = registry(small());
    let a = create(&r, "a", json!({"clusterIP": "10.96.0.5"}))
        .await
        .unwrap();
    assert_eq!(ip_of(&a), Ipv4Addr::new(10, 96, 0, 5));
    let taken = create(&r, "b", json!({"clusterIP": "10.96.0.5"}))
        .await
        .unwrap_err();
    assert_eq!(taken.code, 422);
    assert_eq!(
        taken.message,
        "Service \"b\" is invalid: spec.clusterIPs: Invalid value: []string{\"10.96.0.5\"}: \
         failed to allocate IP 10.96.0.5: provided IP is already allocated"
    );
    let outside = create(&r, "b", json!({"clusterIP": "10.0.0.1"}))
        .await
        .unwrap_err();
    assert_eq!(
        outside.message,
        "Service \"b\" is invalid: spec.clusterIPs: Invalid value: []string{\"10.0.0.1\"}: \
         failed to allocate IP 10.0.0.1: the provided IP (10.0.0.1) is not in the valid range. \
         The range of valid IPs is 10.96.0.0/28"
    );
    let np = create(
        &r,
        "np",
        json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30002}]}),
    )
    .await
    .unwrap();
    assert_eq!(node_port_of(&np), 30002);
    let taken = create(
        &r,
        "np2",
        json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30002}]}),
    )
    .await
    .unwrap_err();
    assert_eq!(
        taken.message,
        "Service \"np2\" is invalid: spec.ports[0].nodePort: Invalid value: 30002: provided \
         port is already allocated"
    );
    let outside = create(
        &r,
        "np2",
        json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 80}]}),
    )
    .await
    .unwrap_err();
    assert_eq!(
        outside.message,
        "Service \"np2\" is invalid: spec.ports[0].nodePort: Invalid value: 80: provided port \
         is not in the valid range. The range of valid ports is 30000-30004"
    );
    // The refused creates left nothing allocated: every other address is still free.
    for i in 0..12 {
        create(&r, &format!("fill{i}"), json!({}))
            .await
            .expect("free address");
    }
}

#[tokio::test]
async fn headless_and_external_name_services_get_no_address() {
    let r = registry(small());
    let headless = create(&r, "h", json!({"clusterIP": "None"})).await.unwrap();
    assert_eq!(headless["spec"]["clusterIPs"], json!(["None"]));
    let external = create(
        &r,
        "e",
        json!({"type": "ExternalName", "externalName": "example.com"}),
    )
    .await
    .unwrap();
    assert!(external["spec"]["clusterIP"].is_null());
    let info = r.find("", "v1", "services").unwrap();
    assert!(r.service_address_keys(info, &headless).is_empty());
    assert!(r.service_address_keys(info, &external).is_empty());
}

#[tokio::test]
async fn node_ports_are_unique_and_the_range_fills() {
    let r = registry(small());
    let mut seen = HashSet::new();
    for i in 0..5 {
        let svc = create(&r, &format!("np{i}"), json!({"type": "NodePort"}))
            .await
            .unwrap();
        let port = node_port_of(&svc);
        assert!((30000..=30004).contains(&port));
        assert!(seen.insert(port));
    }
    let full = create(&r, "np5", json!({"type": "NodePort"}))
        .await
        .unwrap_err();
    assert_eq!(
        full.message,
        "Internal error occurred: failed to allocate a nodePort: range is full"
    );
    // The refused create gave its ClusterIP back: 14 − 5 = 9 still free.
    for i in 0..9 {
        create(&r, &format!("c{i}"), json!({}))
            .await
            .expect("free address");
    }
}

#[tokio::test]
async fn updates_keep_addresses_and_type_changes_give_node_ports_back() {
    let r = registry(small());
    let svc = create(&r, "web", json!({"type": "NodePort"}))
        .await
        .unwrap();
    let (ip, port) = (ip_of(&svc), node_port_of(&svc));
    // A client that leaves clusterIP and nodePort out keeps both.
    let mut edited = svc.clone();
    edited["spec"].as_object_mut().unwrap().remove("clusterIP");
    edited["spec"].as_object_mut().unwrap().remove("clusterIPs");
    edited["spec"]["ports"][0]
        .as_object_mut()
        .unwrap()
        .remove("nodePort");
    let kept = update(&r, &edited).await.unwrap();
    assert_eq!((ip_of(&kept), node_port_of(&kept)), (ip, port));
    // The ClusterIP may not change.
    let mut moved = kept.clone();
    moved["spec"]["clusterIP"] = json!("10.96.0.9");
    moved["spec"]["clusterIPs"] = json!(["10.96.0.9"]);
    let err = update(&r, &moved).await.unwrap_err();
    assert_eq!(err.code, 422);
    assert!(
        err.message
            .ends_with("spec.clusterIPs[0]: Invalid value: \"10.96.0.9\": may not change once set"),
        "{}",
        err.message
    );
    // NodePort → ClusterIP gives the port back.
    let mut cluster = kept.clone();
    cluster["spec"]["type"] = json!("ClusterIP");
    cluster["spec"]
        .as_object_mut()
        .unwrap()
        .remove("externalTrafficPolicy");
    let now = update(&r, &cluster).await.unwrap();
    assert!(now["spec"]["ports"][0]["nodePort"].is_null());
    let again = create(
        &r,
        "other",
        json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": port}]}),
    )
    .await
    .expect("the port was given back");
    assert_eq!(node_port_of(&again), port);
    // Deleting gives the ClusterIP back.
    delete(&r, "web").await;
    let reuse = create(&r, "reuse", json!({"clusterIP": ip.to_string()}))
        .await
        .unwrap();
    assert_eq!(ip_of(&reuse), ip);
}

#[tokio::test]
async fn concurrent_creates_never_share_an_address() {
    let r = Arc::new(registry(
        ServiceRanges::parse("10.96.0.0/26", "30000-30099").unwrap(),
    ));
    let mut tasks = Vec::new();
    for i in 0..60 {
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            let spec = if i % 2 == 0 {
                json!({"type": "NodePort"})
            } else {
                json!({})
            };
            create(&r, &format!("s{i}"), spec).await.expect("created")
        }));
    }
    let mut ips = HashSet::new();
    let mut ports = HashSet::new();
    for t in tasks {
        let svc = t.await.unwrap();
        assert!(ips.insert(ip_of(&svc)));
        if let Some(p) = svc["spec"]["ports"][0]["nodePort"].as_u64() {
            assert!(ports.insert(p));
        }
    }
    assert_eq!((ips.len(), ports.len()), (60, 30));
}
