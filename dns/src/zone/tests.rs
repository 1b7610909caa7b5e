//! The zone's names and answers, as CoreDNS's kubernetes plugin gives them.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

use super::*;

fn service(ns: &str, name: &str, spec: serde_json::Value) -> Service {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}))
        .unwrap()
}

fn slice(ns: &str, service: &str, endpoints: serde_json::Value) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"name": format!("{service}-abc"), "namespace": ns,
                     "labels": {SERVICE_NAME_LABEL: service}},
        "addressType": "IPv4", "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    }))
    .unwrap()
}

fn zone() -> Zone {
    let web = service(
        "default",
        "web",
        json!({"clusterIP": "10.43.5.6", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"port": 81}]}),
    );
    let db = service(
        "shop",
        "db",
        json!({"clusterIP": "None", "ports": [{"name": "http", "port": 8080}]}),
    );
    let ext = service(
        "shop",
        "ext",
        json!({"type": "ExternalName", "externalName": "Example.COM."}),
    );
    let db_slice = slice(
        "shop",
        "db",
        json!([
            {"addresses": ["10.42.0.9"], "conditions": {"ready": true}, "hostname": "db-0"},
            {"addresses": ["10.42.0.8"], "conditions": {"ready": true}},
            {"addresses": ["10.42.0.7"], "conditions": {"ready": false}}
        ]),
    );
    let web_slice = slice("default", "web", json!([{"addresses": ["10.42.0.2"]}]));
    Zone::build(
        "cluster.local.",
        &[&web, &db, &ext],
        &[&db_slice, &web_slice],
    )
}

fn a(name: &str, ip: [u8; 4]) -> Record {
    Record::A {
        name: name.into(),
        ip: Ipv4Addr::from(ip),
    }
}

fn answers(answer: Answer) -> Vec<Record> {
    match answer {
        Answer::Found { answers, .. } => answers,
        other => panic!("expected records, got {other:?}"),
    }
}

#[test]
fn a_service_name_is_its_cluster_ip_in_any_case_with_or_without_the_dot() {
    let z = zone();
    for name in [
        "web.default.svc.cluster.local",
        "WEB.default.svc.cluster.local.",
    ] {
        assert_eq!(
            answers(z.answer(name, QueryType::A)),
            [a("web.default.svc.cluster.local", [10, 43, 5, 6])]
        );
    }
    assert_eq!(
        z.answer("web.default.svc.cluster.local", QueryType::Other),
        Answer::NoData
    );
    assert_eq!(
        z.answer("nope.default.svc.cluster.local", QueryType::A),
        Answer::NxDomain
    );
    assert_eq!(
        z.answer("web.other.svc.cluster.local", QueryType::A),
        Answer::NxDomain
    );
}

#[test]
fn a_headless_service_lists_its_ready_endpoints_each_with_a_name() {
    let z = zone();
    assert_eq!(
        answers(z.answer("db.shop.svc.cluster.local", QueryType::A)),
        [
            a("db.shop.svc.cluster.local", [10, 42, 0, 8]),
            a("db.shop.svc.cluster.local", [10, 42, 0, 9])
        ]
    );
    assert_eq!(
        answers(z.answer("db-0.db.shop.svc.cluster.local", QueryType::A)),
        [a("db-0.db.shop.svc.cluster.local", [10, 42, 0, 9])]
    );
    assert_eq!(
        answers(z.answer("10-42-0-8.db.shop.svc.cluster.local", QueryType::A)),
        [a("10-42-0-8.db.shop.svc.cluster.local", [10, 42, 0, 8])]
    );
    // The not-ready endpoint has no name.
    assert_eq!(
        z.answer("10-42-0-7.db.shop.svc.cluster.local", QueryType::A),
        Answer::NxDomain
    );
}

#[test]
fn named_ports_have_srv_records() {
    let z = zone();
    assert_eq!(
        z.answer("_http._tcp.web.default.svc.cluster.local", QueryType::Srv),
        Answer::Found {
            answers: vec![Record::Srv {
                name: "_http._tcp.web.default.svc.cluster.local".into(),
                port: 80,
                target: "web.default.svc.cluster.local".into()
            }],
            additional: vec![a("web.default.svc.cluster.local", [10, 43, 5, 6])],
        }
    );
    let Answer::Found {
        answers,
        additional,
    } = z.answer("_http._tcp.db.shop.svc.cluster.local", QueryType::Srv)
    else {
        panic!("SRV of a headless service");
    };
    let targets: Vec<_> = answers
        .iter()
        .map(|r| match r {
            Record::Srv { port, target, .. } => (*port, target.as_str()),
            _ => panic!("{r:?}"),
        })
        .collect();
    assert_eq!(
        targets,
        [
            (8080, "10-42-0-8.db.shop.svc.cluster.local"),
            (8080, "db-0.db.shop.svc.cluster.local")
        ]
    );
    assert_eq!(additional.len(), 2);
    assert_eq!(
        z.answer("_nope._tcp.web.default.svc.cluster.local", QueryType::Srv),
        Answer::NxDomain
    );
}

#[test]
fn pods_external_names_and_the_names_above_services() {
    let z = zone();
    assert_eq!(
        answers(z.answer("10-42-3-4.any.pod.cluster.local", QueryType::A)),
        [a("10-42-3-4.any.pod.cluster.local", [10, 42, 3, 4])]
    );
    assert_eq!(
        z.answer("not-an-ip.any.pod.cluster.local", QueryType::A),
        Answer::NxDomain
    );
    assert_eq!(
        answers(z.answer("ext.shop.svc.cluster.local", QueryType::A)),
        [Record::Cname {
            name: "ext.shop.svc.cluster.local".into(),
            target: "example.com".into()
        }]
    );
    for name in [
        "cluster.local",
        "svc.cluster.local",
        "shop.svc.cluster.local",
        "pod.cluster.local",
    ] {
        assert_eq!(z.answer(name, QueryType::A), Answer::NoData, "{name}");
    }
    assert_eq!(
        z.answer("nons.svc.cluster.local", QueryType::A),
        Answer::NxDomain
    );
    assert_eq!(z.answer("x.cluster.local", QueryType::A), Answer::NxDomain);
    assert_eq!(z.answer("example.com", QueryType::A), Answer::NotOurs);
    assert_eq!(z.answer("notcluster.local", QueryType::A), Answer::NotOurs);
}
