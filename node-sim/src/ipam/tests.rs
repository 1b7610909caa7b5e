//! Pod CIDR parsing and splitting, and per-node address assignment.

use std::net::Ipv4Addr;

use super::*;

fn cidr(s: &str) -> PodCidr {
    s.parse().expect("valid CIDR")
}

#[test]
fn parses_and_refuses_cidrs() {
    assert_eq!(cidr("10.42.0.0/16").to_string(), "10.42.0.0/16");
    for bad in [
        "10.42.0.0",
        "10.42.0.1/16",
        "10.42.0.0/33",
        "10.42.0.0/4",
        "x/16",
        "10.42.0.0/x",
    ] {
        assert!(bad.parse::<PodCidr>().is_err(), "{bad} accepted");
    }
}

#[test]
fn splits_into_node_subnets() {
    let subnets = cidr("10.42.0.0/16").subnets(24, 3).expect("fits");
    let names: Vec<String> = subnets.iter().map(ToString::to_string).collect();
    assert_eq!(names, ["10.42.0.0/24", "10.42.1.0/24", "10.42.2.0/24"]);
    assert_eq!(
        cidr("10.42.0.0/16").subnets(24, 256).expect("fits").len(),
        256
    );
    // 1,000 nodes need a bigger pool or smaller subnets.
    let err = cidr("10.42.0.0/16")
        .subnets(24, 1000)
        .expect_err("too many");
    assert!(
        err.to_string().contains("holds 256 /24 node subnets"),
        "{err}"
    );
    assert_eq!(
        cidr("10.40.0.0/14").subnets(24, 1000).expect("fits").len(),
        1000
    );
    assert_eq!(
        cidr("10.42.0.0/16").subnets(26, 1000).expect("fits").len(),
        1000
    );
    assert!(cidr("10.42.0.0/16").subnets(15, 1).is_err());
    assert!(cidr("10.42.0.0/16").subnets(31, 1).is_err());
}

#[test]
fn assigns_lowest_free_idempotently_and_reuses_released() {
    let mut ips = NodeIps::new(cidr("10.42.7.0/24"));
    assert_eq!(ips.assign("a", None), Some(Ipv4Addr::new(10, 42, 7, 1)));
    assert_eq!(ips.assign("b", None), Some(Ipv4Addr::new(10, 42, 7, 2)));
    // Same pod, same address, whatever it reports.
    assert_eq!(
        ips.assign("a", Some(Ipv4Addr::new(10, 42, 7, 9))),
        Some(Ipv4Addr::new(10, 42, 7, 1))
    );
    ips.release("a");
    assert_eq!(ips.assign("c", None), Some(Ipv4Addr::new(10, 42, 7, 1)));
    assert_eq!(ips.len(), 2);
}

#[test]
fn keeps_reported_addresses_inside_the_subnet() {
    let mut ips = NodeIps::new(cidr("10.42.7.0/24"));
    // A pod running before a restart keeps its address; nobody else gets it.
    assert_eq!(
        ips.assign("old", Some(Ipv4Addr::new(10, 42, 7, 1))),
        Some(Ipv4Addr::new(10, 42, 7, 1))
    );
    assert_eq!(ips.assign("new", None), Some(Ipv4Addr::new(10, 42, 7, 2)));
    // Outside the subnet, taken, network or broadcast address: a fresh one instead.
    for reported in [
        [10, 42, 8, 5],
        [10, 42, 7, 2],
        [10, 42, 7, 0],
        [10, 42, 7, 255],
    ] {
        let got = ips.assign(&format!("{reported:?}"), Some(Ipv4Addr::from(reported)));
        assert!(
            got.is_some_and(|ip| ip != Ipv4Addr::from(reported)),
            "{reported:?} → {got:?}"
        );
    }
}

#[test]
fn a_full_subnet_assigns_nothing_and_retain_frees() {
    let mut ips = NodeIps::new(cidr("10.42.7.0/30"));
    assert!(ips.assign("a", None).is_some());
    assert!(ips.assign("b", None).is_some());
    assert_eq!(ips.assign("c", None), None);
    ips.retain(|uid| uid == "b");
    assert_eq!(ips.assign("c", None), Some(Ipv4Addr::new(10, 42, 7, 1)));
}
