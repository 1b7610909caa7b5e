//! The NetworkPolicy batch: who is isolated, what each rule lets through, excepts, cleanup.

use std::collections::BTreeSet;

use serde_json::json;

use super::*;

fn pod(ns: &str, name: &str, labels: serde_json::Value, ip: &str, node: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i",
                  "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": ip}
    }))
    .unwrap()
}

fn namespace(name: &str, labels: serde_json::Value) -> Namespace {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
}

fn policy(ns: &str, spec: serde_json::Value) -> NetworkPolicy {
    serde_json::from_value(json!({"metadata": {"name": "p", "namespace": ns}, "spec": spec}))
        .unwrap()
}

struct World {
    pods: Vec<Pod>,
    namespaces: Vec<Namespace>,
}

fn world() -> World {
    World {
        pods: vec![
            pod("default", "web", json!({"app": "web"}), "10.42.0.10", "n1"),
            pod(
                "default",
                "good",
                json!({"access": "true"}),
                "10.42.0.11",
                "n1",
            ),
            pod("default", "bad", json!({}), "10.42.0.12", "n1"),
            pod(
                "other",
                "friend",
                json!({"role": "friend"}),
                "10.42.1.13",
                "n2",
            ),
        ],
        namespaces: vec![
            namespace("default", json!({"kubernetes.io/metadata.name": "default"})),
            namespace("other", json!({"team": "a"})),
        ],
    }
}

fn batch(
    w: &World,
    policies: &[NetworkPolicy],
    previous: &BTreeSet<String>,
) -> (String, BTreeSet<String>) {
    let pods: Vec<&Pod> = w.pods.iter().collect();
    let namespaces: Vec<&Namespace> = w.namespaces.iter().collect();
    let policies: Vec<&NetworkPolicy> = policies.iter().collect();
    render(
        &policies,
        &pods,
        &namespaces,
        &|p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("n1"),
        previous,
    )
}

fn lines_with<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.contains(needle)).collect()
}

#[test]
fn selectors_match_as_apimachinery_does() {
    let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
    let sel = |v: serde_json::Value| -> LabelSelector { serde_json::from_value(v).unwrap() };
    assert!(selects(&sel(json!({})), &labels));
    assert!(selects(
        &sel(json!({"matchLabels": {"app": "web"}})),
        &labels
    ));
    assert!(!selects(
        &sel(json!({"matchLabels": {"app": "db"}})),
        &labels
    ));
    assert!(selects(
        &sel(
            json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "x"]}]})
        ),
        &labels
    ));
    assert!(!selects(
        &sel(json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]})),
        &labels
    ));
    assert!(selects(
        &sel(json!({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]})),
        &labels
    ));
    assert!(!selects(
        &sel(json!({"matchExpressions": [{"key": "tier", "operator": "Exists"}]})),
        &labels
    ));
}

#[test]
fn without_policies_nothing_is_written() {
    let (text, chains) = batch(&world(), &[], &BTreeSet::new());
    assert!(text.is_empty() && chains.is_empty());
}

#[test]
fn default_deny_isolates_the_selected_pod_only() {
    let deny = policy(
        "default",
        json!({"podSelector": {"matchLabels": {"app": "web"}}}),
    );
    let (text, chains) = batch(&world(), &[deny], &BTreeSet::new());
    assert_eq!(chains.len(), 1, "{text}");
    let chain = chains.iter().next().unwrap();
    assert!(chain.starts_with("SKIFF-NP-I-"));
    assert_eq!(
        lines_with(&text, &format!("-A {CHAIN} ")).len(),
        2,
        "{text}"
    );
    assert!(text.contains(&format!("-A {CHAIN} -d 10.42.0.10/32 -j {chain}")));
    let rules = lines_with(&text, &format!("-A {chain} "));
    assert_eq!(
        rules.len(),
        2,
        "REJECT unless marked, then clear: {rules:?}"
    );
    assert!(rules[0].contains("REJECT") && rules[0].contains("-m mark ! --mark"));
}

#[test]
fn allowed_peers_by_pod_namespace_and_port() {
    let allow = policy(
        "default",
        json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [
            {"from": [{"podSelector": {"matchLabels": {"access": "true"}}}], "ports": [{"port": "http"}]},
            {"from": [{"namespaceSelector": {"matchLabels": {"team": "a"}}, "podSelector": {"matchLabels": {"role": "friend"}}}]}
        ]}),
    );
    let (text, chains) = batch(&world(), &[allow], &BTreeSet::new());
    let chain = chains.iter().next().unwrap();
    let marks = lines_with(&text, "--set-xmark 0x10000/0x10000");
    assert_eq!(marks.len(), 2, "{text}");
    assert!(marks[0].contains(&format!(
        "-A {chain} -s 10.42.0.11/32 -p tcp -m tcp --dport 8080"
    )));
    assert!(marks[1].contains("-s 10.42.1.13/32") && !marks[1].contains("--dport"));
    assert!(
        !text.contains("10.42.0.12"),
        "the unlabelled pod is not allowed"
    );
}

#[test]
fn egress_ip_blocks_with_excepts_and_stale_chains() {
    let egress = policy(
        "default",
        json!({"podSelector": {"matchLabels": {"access": "true"}}, "policyTypes": ["Egress"], "egress": [
            {"to": [{"ipBlock": {"cidr": "10.42.0.0/16", "except": ["10.42.0.10/32", "10.42.1.0/24"]}}],
             "ports": [{"protocol": "TCP", "port": 8000, "endPort": 8100}]}
        ]}),
    );
    let (text, chains) = batch(&world(), &[egress], &BTreeSet::new());
    assert_eq!(
        chains.len(),
        2,
        "the pod's egress chain and the except chain: {chains:?}"
    );
    let egress_chain = chains
        .iter()
        .find(|c| c.starts_with("SKIFF-NP-E-"))
        .unwrap();
    let block = chains
        .iter()
        .find(|c| c.starts_with("SKIFF-NP-B-"))
        .unwrap();
    assert!(text.contains(&format!("-A {CHAIN} -s 10.42.0.11/32 -j {egress_chain}")));
    assert!(text.contains(&format!(
        "-A {egress_chain} -d 10.42.0.0/16 -p tcp -m tcp --dport 8000:8100 -j {block}"
    )));
    assert_eq!(lines_with(&text, &format!("-A {block} ")).len(), 3);
    // The policy goes: the chains are declared (flushed) and deleted.
    let (text, now) = batch(&world(), &[], &chains);
    assert!(now.is_empty());
    for chain in &chains {
        assert!(text.contains(&format!("-X {chain}\n")), "{text}");
    }
}
