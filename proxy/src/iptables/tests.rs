//! The batch: kube-proxy's chain layout, random spreading with falling probabilities, affinity,
//! NodePorts, REJECT without endpoints, stale chains deleted, stable names.

use std::collections::BTreeSet;

use super::*;
use crate::model::{Endpoint, ServicePort};

fn endpoint(ip: &str, local: bool) -> Endpoint {
    Endpoint {
        ip: ip.into(),
        port: 8080,
        ready: true,
        serving: true,
        terminating: false,
        local,
    }
}

fn web(endpoints: Vec<Endpoint>) -> ServicePort {
    ServicePort {
        name: "default/web:".into(),
        cluster_ip: "10.43.7.7".into(),
        port: 80,
        protocol: "tcp".into(),
        node_port: Some(30080),
        affinity_seconds: None,
        external_local: false,
        internal_local: false,
        endpoints,
    }
}

fn lines_with<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.contains(needle)).collect()
}

#[test]
fn chain_names_are_stable_hashes() {
    let a = chain_name("KUBE-SVC-", "default/web:tcp");
    assert_eq!(a, chain_name("KUBE-SVC-", "default/web:tcp"));
    assert_ne!(a, chain_name("KUBE-SVC-", "default/web2:tcp"));
    assert_eq!(a.len(), "KUBE-SVC-".len() + 16);
    assert!(
        a["KUBE-SVC-".len()..]
            .chars()
            .all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c))
    );
}

#[test]
fn a_service_spreads_over_its_endpoints_with_falling_probabilities() {
    let p = web(vec![
        endpoint("10.42.0.1", true),
        endpoint("10.42.0.2", false),
        endpoint("10.42.0.3", false),
    ]);
    let batch = render(
        std::slice::from_ref(&p),
        &Masquerade {
            all: false,
            cluster_cidr: Some("10.42.0.0/16".into()),
        },
        &BTreeSet::new(),
    );
    let svc = svc_chain(&p);
    let services = lines_with(&batch.text, "-A KUBE-SERVICES");
    assert!(
        services[0].contains("-d 10.43.7.7/32 -p tcp -m tcp --dport 80")
            && services[0].ends_with(&format!("-j {svc}")),
        "{services:?}"
    );
    assert!(
        services
            .last()
            .unwrap()
            .ends_with("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS")
    );
    let spread: Vec<&str> = lines_with(&batch.text, &format!("-A {svc} "));
    assert!(spread[0].contains("! -s 10.42.0.0/16") && spread[0].ends_with("-j KUBE-MARK-MASQ"));
    assert!(
        spread[1].contains("--probability 0.3333333333"),
        "{spread:?}"
    );
    assert!(
        spread[2].contains("--probability 0.5000000000"),
        "{spread:?}"
    );
    assert!(!spread[3].contains("--probability"));
    let dnat = lines_with(&batch.text, "-j DNAT");
    assert_eq!(dnat.len(), 3);
    assert!(
        dnat.iter()
            .any(|l| l.ends_with("--to-destination 10.42.0.2:8080"))
    );
    // NodePort through KUBE-EXT (masquerade, then the service chain).
    let ext = ext_chain(&p);
    assert!(
        lines_with(&batch.text, "-A KUBE-NODEPORTS")[0]
            .ends_with(&format!("--dport 30080 -j {ext}"))
    );
    assert_eq!(lines_with(&batch.text, &format!("-A {ext} ")).len(), 2);
    // 1 SVC + 3 SEP + 1 EXT chains, each declared.
    assert_eq!(batch.chains.len(), 5);
    for chain in &batch.chains {
        assert!(batch.text.contains(&format!(":{chain} - [0:0]")));
    }
    assert!(!batch.text.contains("REJECT"));
}

#[test]
fn no_endpoints_rejects_and_stale_chains_are_deleted() {
    let full = render(
        &[web(vec![endpoint("10.42.0.1", true)])],
        &Masquerade::default(),
        &BTreeSet::new(),
    );
    let empty = render(&[web(vec![])], &Masquerade::default(), &full.chains);
    assert!(empty.chains.is_empty());
    for chain in &full.chains {
        assert!(
            empty.text.contains(&format!(":{chain} - [0:0]")),
            "declared to flush it"
        );
        assert!(empty.text.contains(&format!("-X {chain}\n")));
    }
    let rejects = lines_with(&empty.text, "REJECT");
    assert_eq!(rejects.len(), 2, "ClusterIP and NodePort: {rejects:?}");
    assert!(rejects[0].starts_with("-A KUBE-SERVICES") && rejects[0].contains("-d 10.43.7.7/32"));
    assert!(
        rejects[1].starts_with("-A KUBE-EXTERNAL-SERVICES") && rejects[1].contains("--dport 30080")
    );
    // The nat table is committed before the filter table, each once.
    assert_eq!(empty.text.matches("COMMIT").count(), 2);
}

#[test]
fn affinity_and_local_external_traffic() {
    let mut p = web(vec![
        endpoint("10.42.0.1", true),
        endpoint("10.42.0.2", false),
    ]);
    p.affinity_seconds = Some(600);
    p.external_local = true;
    let batch = render(
        std::slice::from_ref(&p),
        &Masquerade {
            all: true,
            cluster_cidr: None,
        },
        &BTreeSet::new(),
    );
    let recent = lines_with(&batch.text, "--rcheck --seconds 600 --reap");
    assert_eq!(
        recent.len(),
        3,
        "two for the cluster chain, one for the local chain: {recent:?}"
    );
    assert_eq!(
        lines_with(&batch.text, "-m recent --name KUBE-SEP-").len(),
        5
    );
    let svl = svl_chain(&p);
    let local: Vec<&str> = lines_with(&batch.text, &format!("-A {svl} "));
    assert!(
        local.iter().all(|l| !l.contains("--probability")),
        "one local endpoint: {local:?}"
    );
    assert!(
        lines_with(&batch.text, &format!("-A {} ", ext_chain(&p)))
            .iter()
            .all(|l| !l.contains("KUBE-MARK-MASQ"))
    );
    // --masquerade-all: every packet to the ClusterIP is marked.
    assert!(
        lines_with(&batch.text, &format!("-A {} ", svc_chain(&p)))[0]
            .ends_with("-j KUBE-MARK-MASQ")
    );
}

#[test]
fn a_partial_batch_rewrites_only_the_chains_that_changed() {
    let mut other = web(vec![endpoint("10.42.1.1", false)]);
    other.name = "default/other:".into();
    other.cluster_ip = "10.43.8.8".into();
    let before = [
        web(vec![
            endpoint("10.42.0.1", true),
            endpoint("10.42.0.2", false),
        ]),
        other.clone(),
    ];
    let full = render(&before, &Masquerade::default(), &BTreeSet::new());
    // Nothing changed: only the fixed chains.
    let same = render_since(&before, &Masquerade::default(), &full.written, false);
    assert_eq!(same.rewritten, 0);
    assert!(!same.text.contains("KUBE-SEP-") && !same.text.contains(":KUBE-SVC-"));
    assert!(
        same.text.contains(&format!("-j {}", svc_chain(&other))),
        "KUBE-SERVICES is whole"
    );
    // One endpoint of web replaced: web's service chain, its new endpoint chain; the old one
    // deleted; nothing of `other`.
    let after = [
        web(vec![
            endpoint("10.42.0.1", true),
            endpoint("10.42.0.3", false),
        ]),
        other.clone(),
    ];
    let partial = render_since(&after, &Masquerade::default(), &full.written, false);
    let old_sep = sep_chain(&after[0], &endpoint("10.42.0.2", false));
    let new_sep = sep_chain(&after[0], &endpoint("10.42.0.3", false));
    assert!(partial.text.contains(&format!("-X {old_sep}\n")));
    assert!(partial.text.contains(&format!(":{new_sep} - [0:0]")));
    assert!(
        partial
            .text
            .contains(&format!(":{} - [0:0]", svc_chain(&after[0])))
    );
    assert!(
        !partial
            .text
            .contains(&format!(":{} - [0:0]", svc_chain(&other)))
    );
    assert!(!partial.chains.contains(&old_sep) && partial.chains.contains(&new_sep));
    // web's SVC and EXT chains (the EXT rules jump to the same SVC: unchanged) and the new SEP.
    assert_eq!(partial.rewritten, 2, "{}", partial.text);
    // A full resync writes everything again.
    let resync = render_since(&after, &Masquerade::default(), &partial.written, true);
    assert_eq!(resync.rewritten, resync.chains.len());
}
