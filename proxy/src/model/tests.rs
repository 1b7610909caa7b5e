//! Service ports from Services and EndpointSlices: which Services count, endpoints matched by
//! port name, ready first, serving terminating ones as the fallback, local ones for Local.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::*;

fn service(name: &str, spec: serde_json::Value) -> Service {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "ns"}, "spec": spec
    }))
    .unwrap()
}

fn slice(service: &str, endpoints: serde_json::Value, ports: serde_json::Value) -> EndpointSlice {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("{service}-x"), "namespace": "ns",
                     "labels": {SERVICE_NAME_LABEL: service}},
        "addressType": "IPv4", "endpoints": endpoints, "ports": ports
    }))
    .unwrap()
}

fn ep(ip: &str, ready: bool, terminating: bool, node: &str) -> serde_json::Value {
    serde_json::json!({"addresses": [ip], "nodeName": node,
        "conditions": {"ready": ready, "serving": ready || terminating, "terminating": terminating}})
}

#[test]
fn services_with_a_cluster_ip_get_their_slices_endpoints_by_port_name() {
    let web = service(
        "web",
        serde_json::json!({"clusterIP": "10.43.1.1", "type": "NodePort", "ports": [
            {"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080},
            {"name": "dns", "port": 53, "protocol": "UDP"}]}),
    );
    let headless = service(
        "h",
        serde_json::json!({"clusterIP": "None", "ports": [{"port": 80}]}),
    );
    let external = service(
        "e",
        serde_json::json!({"type": "ExternalName", "externalName": "x"}),
    );
    let s = slice(
        "web",
        serde_json::json!([
            ep("10.42.0.5", true, false, "n1"),
            ep("10.42.0.4", true, false, "n2")
        ]),
        serde_json::json!([{"name": "http", "port": 8080, "protocol": "TCP"},
                           {"name": "dns", "port": 5353, "protocol": "UDP"}]),
    );
    let other = slice(
        "other",
        serde_json::json!([ep("10.42.0.9", true, false, "n1")]),
        serde_json::json!([{"name": "http", "port": 1}]),
    );
    let ports = service_ports(&[&web, &headless, &external], &[&s, &other], "n1");
    assert_eq!(ports.len(), 2);
    let dns = &ports[0];
    assert_eq!(
        (dns.name.as_str(), dns.protocol.as_str(), dns.node_port),
        ("ns/web:dns", "udp", None)
    );
    assert_eq!(
        dns.endpoints.iter().map(|e| e.port).collect::<Vec<_>>(),
        [5353, 5353]
    );
    let http = &ports[1];
    assert_eq!((http.port, http.node_port), (80, Some(30080)));
    let ips: Vec<_> = http
        .endpoints
        .iter()
        .map(|e| (e.ip.as_str(), e.local))
        .collect();
    assert_eq!(ips, [("10.42.0.4", false), ("10.42.0.5", true)]);
}

#[test]
fn ready_endpoints_first_then_serving_terminating_ones_and_local_ones_for_local() {
    let svc = service(
        "web",
        serde_json::json!({"clusterIP": "10.43.1.1", "type": "NodePort", "externalTrafficPolicy": "Local",
            "ports": [{"port": 80, "nodePort": 30080}]}),
    );
    let ports_of = |endpoints| {
        let s = slice("web", endpoints, serde_json::json!([{"port": 8080}]));
        service_ports(&[&svc], &[&s], "n1").remove(0)
    };
    let p = ports_of(serde_json::json!([
        ep("10.42.0.1", true, false, "n2"),
        ep("10.42.0.2", false, true, "n1"),
        ep("10.42.0.3", false, false, "n1")
    ]));
    let ips = |v: Vec<&Endpoint>| v.into_iter().map(|e| e.ip.clone()).collect::<Vec<_>>();
    assert_eq!(ips(p.cluster_endpoints()), ["10.42.0.1"]);
    // Local: no ready local endpoint, so the serving terminating one.
    assert_eq!(ips(p.external_endpoints()), ["10.42.0.2"]);
    let none = ports_of(serde_json::json!([ep("10.42.0.3", false, false, "n1")]));
    assert!(none.cluster_endpoints().is_empty());
}
