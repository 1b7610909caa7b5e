//! kube-scheduler's ImageLocality Score plugin (weight 1 in the default profile): a node that
//! already holds the pod's images scores higher. Each of the pod's (init and app) container
//! images present on the node adds `sizeBytes * (nodes holding it / all nodes)` — the spread
//! factor keeps pods from piling onto the few nodes that pulled an image first — and the sum,
//! clamped to `[23 MiB, 1000 MiB * containers]`, maps linearly to 0..100.
//!
//! Image names are normalised as a Docker reference on both sides (`nginx`,
//! `library/nginx:latest` and `docker.io/library/nginx:latest` are one image). Upstream only
//! appends `:latest` to the pod's image and leaves the registry cases as a TODO; skiff
//! normalises fully so short names in pod specs match what container runtimes report.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod};

use crate::node_info::NodeInfo;
use crate::scores::MAX_NODE_SCORE;

const MB: i64 = 1024 * 1024;
/// Sums below this score 0 (upstream's `minThreshold`).
pub const MIN_THRESHOLD: i64 = 23 * MB;
/// Per container, sums above this score 100 (upstream's `maxContainerThreshold`).
pub const MAX_CONTAINER_THRESHOLD: i64 = 1000 * MB;

/// The implicit registry and namespace of Docker references.
const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";

/// An image reference as a fully qualified name: `docker.io/` (and `library/` for a single
/// path component) when no registry is given, `:latest` when neither tag nor digest is.
pub fn normalized_image_name(name: &str) -> String {
    let name = name.trim();
    if name.is_empty() {
        return String::new();
    }
    let (repo_and_tag, digest) = match name.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (name, None),
    };
    let (domain, remainder) = match repo_and_tag.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first, rest.to_string())
        }
        _ => (DEFAULT_DOMAIN, repo_and_tag.to_string()),
    };
    let domain = if domain == LEGACY_DEFAULT_DOMAIN {
        DEFAULT_DOMAIN
    } else {
        domain
    };
    let remainder = if domain == DEFAULT_DOMAIN && !remainder.contains('/') {
        format!("{OFFICIAL_REPO_PREFIX}{remainder}")
    } else {
        remainder
    };
    let last_segment = remainder.rsplit('/').next().unwrap_or("");
    let has_tag = last_segment.contains(':');
    match digest {
        Some(d) => format!("{domain}/{remainder}@{d}"),
        None if has_tag => format!("{domain}/{remainder}"),
        None => format!("{domain}/{remainder}:latest"),
    }
}

/// A node's `status.images`: every normalised name → `sizeBytes` (negative sizes count as 0).
pub fn node_images(node: &Node) -> BTreeMap<String, i64> {
    let mut images = BTreeMap::new();
    for image in node
        .status
        .as_ref()
        .and_then(|s| s.images.as_deref())
        .unwrap_or(&[])
    {
        let size = image.size_bytes.unwrap_or(0).max(0);
        for name in image.names.iter().flatten() {
            let normalized = normalized_image_name(name);
            if !normalized.is_empty() {
                images.entry(normalized).or_insert(size);
            }
        }
    }
    images
}

/// The pod's container images (init containers first), normalised.
fn pod_images(pod: &Pod) -> Vec<String> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .map(|c| normalized_image_name(c.image.as_deref().unwrap_or("")))
        .collect()
}

/// `calculatePriority`: the clamped sum mapped to 0..100.
pub fn calculate_priority(sum: i64, containers: usize) -> i64 {
    let containers = i64::try_from(containers).unwrap_or(i64::MAX);
    let max_threshold = MAX_CONTAINER_THRESHOLD.saturating_mul(containers);
    let clamped = if sum < MIN_THRESHOLD {
        MIN_THRESHOLD
    } else if sum > max_threshold {
        max_threshold
    } else {
        sum
    };
    let range = max_threshold - MIN_THRESHOLD;
    if range <= 0 {
        return 0;
    }
    // In i128: 100 × a sum near i64::MAX must not overflow.
    let score =
        i128::from(MAX_NODE_SCORE) * i128::from(clamped - MIN_THRESHOLD) / i128::from(range);
    i64::try_from(score).unwrap_or(0)
}

/// ImageLocality for each of `nodes` (the feasible ones), in order; `all` is every node of
/// the snapshot (the spread factor's population).
pub fn image_locality_scores(pod: &Pod, nodes: &[&NodeInfo], all: &[&NodeInfo]) -> Vec<i64> {
    let images = pod_images(pod);
    let total = all.len();
    if total == 0 || images.is_empty() {
        return vec![0; nodes.len()];
    }
    // How many nodes hold each of the pod's images, counted once per pod.
    let mut holders: BTreeMap<&str, usize> = BTreeMap::new();
    for image in &images {
        if !holders.contains_key(image.as_str()) {
            let n = all.iter().filter(|n| n.images.contains_key(image)).count();
            holders.insert(image.as_str(), n);
        }
    }
    nodes
        .iter()
        .map(|node| {
            let sum: i64 = images
                .iter()
                .filter_map(|image| {
                    let size = *node.images.get(image)?;
                    let spread =
                        holders.get(image.as_str()).copied().unwrap_or(0) as f64 / total as f64;
                    Some((size as f64 * spread) as i64)
                })
                .fold(0i64, i64::saturating_add);
            calculate_priority(sum, images.len())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use k8s_openapi::api::core::v1::{Container, ContainerImage};

    fn with_images(mut n: Node, images: &[(&[&str], i64)]) -> Node {
        n.status.get_or_insert_with(Default::default).images = Some(
            images
                .iter()
                .map(|(names, size)| ContainerImage {
                    names: Some(names.iter().map(|s| s.to_string()).collect()),
                    size_bytes: Some(*size),
                })
                .collect(),
        );
        n
    }

    fn pod_with_images(images: &[&str]) -> Pod {
        let mut p = pod_req("p", "", "");
        p.spec.as_mut().unwrap().containers = images
            .iter()
            .enumerate()
            .map(|(i, image)| Container {
                name: format!("c{i}"),
                image: Some(image.to_string()),
                ..Default::default()
            })
            .collect();
        p
    }

    #[test]
    fn image_names_normalise_like_docker_references() {
        let full = "docker.io/library/nginx:latest";
        assert_eq!(normalized_image_name("nginx"), full);
        assert_eq!(normalized_image_name("nginx:latest"), full);
        assert_eq!(normalized_image_name("library/nginx"), full);
        assert_eq!(normalized_image_name("index.docker.io/library/nginx"), full);
        assert_eq!(normalized_image_name(full), full);
        assert_eq!(
            normalized_image_name("nginx:1.25"),
            "docker.io/library/nginx:1.25"
        );
        assert_eq!(
            normalized_image_name("bitnami/redis"),
            "docker.io/bitnami/redis:latest"
        );
        assert_eq!(
            normalized_image_name("localhost:5000/app"),
            "localhost:5000/app:latest"
        );
        assert_eq!(
            normalized_image_name("registry.k8s.io/pause:3.9"),
            "registry.k8s.io/pause:3.9"
        );
        assert_eq!(
            normalized_image_name("nginx@sha256:abc"),
            "docker.io/library/nginx@sha256:abc"
        );
        assert_eq!(normalized_image_name(""), "");
    }

    #[test]
    fn priority_is_clamped_between_the_thresholds() {
        assert_eq!(calculate_priority(0, 1), 0);
        assert_eq!(calculate_priority(MIN_THRESHOLD, 1), 0);
        assert_eq!(calculate_priority(MAX_CONTAINER_THRESHOLD, 1), 100);
        assert_eq!(calculate_priority(i64::MAX, 1), 100);
        // Upstream's example: 250 MiB, one container: 100 * (250 - 23) / (1000 - 23) = 23.
        assert_eq!(calculate_priority(250 * MB, 1), 23);
        // Two containers double the ceiling: 100 * 977 / 1977.
        assert_eq!(calculate_priority(MAX_CONTAINER_THRESHOLD, 2), 49);
        assert_eq!(calculate_priority(0, 0), 0);
    }

    #[test]
    fn an_image_present_on_the_node_raises_its_score() {
        let big = 500 * MB;
        let with = info(with_images(
            node("a", "4", "4Gi", 10),
            &[(
                &[
                    "docker.io/library/nginx:latest",
                    "docker.io/library/nginx@sha256:1",
                ],
                big,
            )],
        ));
        let without = info(node("b", "4", "4Gi", 10));
        let pod = pod_with_images(&["nginx"]);
        let all = [&with, &without];
        let scores = image_locality_scores(&pod, &all, &all);
        // 500 MiB held by 1 of 2 nodes: 250 MiB → 23.
        assert_eq!(scores, vec![23, 0]);
        // Held everywhere: no spread discount, 100 * (500 - 23) / 977 = 48 on both.
        let b2 = info(with_images(
            node("b", "4", "4Gi", 10),
            &[(&["nginx:latest"], big)],
        ));
        let all = [&with, &b2];
        assert_eq!(image_locality_scores(&pod, &all, &all), vec![48, 48]);
    }

    #[test]
    fn tiny_images_score_nothing() {
        let n = info(with_images(
            node("a", "4", "4Gi", 10),
            &[(&["docker.io/library/busybox:latest"], 4 * MB)],
        ));
        let pod = pod_with_images(&["busybox", "busybox"]);
        assert_eq!(image_locality_scores(&pod, &[&n], &[&n]), vec![0]);
        // A pod without images, and bad sizes, do not panic.
        let bad = info(with_images(node("b", "4", "4Gi", 10), &[(&["x"], -5)]));
        assert_eq!(
            image_locality_scores(&pod_with_images(&["x"]), &[&bad], &[&bad]),
            vec![0]
        );
        assert_eq!(image_locality_scores(&pod, &[&n], &[]), vec![0]);
    }
}
