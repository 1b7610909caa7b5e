//! `/version`, legacy discovery (`/api`, `/apis`, `/api/v1`, `/apis/<g>/<v>`) and the minimal
//! `/openapi/v3` that lets `kubectl apply` and `create -f` use server-side field validation.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use serde_json::{Value, json};

use crate::resources::ResourceInfo;

/// The Kubernetes version reported. The installed `kubectl` is a dispatcher that runs the
/// bundled kubectl of the server's minor version: 33 selects kubectl 1.33.
pub const KUBE_MAJOR: &str = "1";
pub const KUBE_MINOR: &str = "33";
pub const KUBE_GIT_VERSION: &str = "v1.33.0";

pub fn version() -> Value {
    json!({
        "major": KUBE_MAJOR, "minor": KUBE_MINOR, "gitVersion": KUBE_GIT_VERSION,
        "gitCommit": "skiff", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "rust", "compiler": "rustc", "platform": "linux/amd64",
        "emulationMajor": KUBE_MAJOR, "emulationMinor": KUBE_MINOR,
        "minCompatibilityMajor": KUBE_MAJOR, "minCompatibilityMinor": "32",
    })
}

/// `(group, version)` pairs in the order discovery lists them; the core group first.
fn group_versions(resources: &[ResourceInfo]) -> Vec<(&'static str, &'static str)> {
    let mut gvs: Vec<(&str, &str)> = Vec::new();
    for r in resources {
        if !gvs.contains(&(r.group, r.version)) {
            gvs.push((r.group, r.version));
        }
    }
    gvs
}

pub fn api_versions() -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"],
           "serverAddressByClientCIDRs": []})
}

pub fn api_group_list(resources: &[ResourceInfo]) -> Value {
    let groups: Vec<Value> = group_versions(resources)
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, v)| {
            let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn api_group(resources: &[ResourceInfo], group: &str) -> Option<Value> {
    let groups = api_group_list(resources);
    groups["groups"]
        .as_array()?
        .iter()
        .find(|g| g["name"] == group)
        .map(|g| {
            let mut g = g.clone();
            g["kind"] = json!("APIGroup");
            g["apiVersion"] = json!("v1");
            g
        })
}

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// The subresources of a kind: `(name, group, version, kind, verbs)`.
pub fn subresources(
    r: &ResourceInfo,
) -> Vec<(
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
)> {
    const GPU: &[&str] = &["get", "patch", "update"];
    let mut out = Vec::new();
    if crate::resources::has_status(r) {
        out.push(("status", r.group, r.version, r.kind, GPU));
    }
    if matches!(r.kind, "Deployment" | "ReplicaSet") {
        out.push(("scale", "autoscaling", "v1", "Scale", GPU));
    }
    if r.kind == "Pod" {
        out.push(("binding", "", "v1", "Binding", &["create"][..]));
    }
    out
}

pub fn api_resource_list(resources: &[ResourceInfo], group: &str, version: &str) -> Option<Value> {
    let mut list: Vec<Value> = Vec::new();
    for r in resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let mut res = json!({"name": r.resource, "singularName": r.singular,
            "namespaced": r.namespaced, "kind": r.kind, "verbs": VERBS,
            "shortNames": r.short_names});
        if matches!(r.kind, "Pod" | "Service" | "Deployment" | "ReplicaSet") {
            res["categories"] = json!(["all"]);
        }
        list.push(res);
        for (sub, g, v, kind, verbs) in subresources(r) {
            let mut res = json!({"name": format!("{}/{sub}", r.resource), "singularName": "",
                "namespaced": r.namespaced, "kind": kind, "verbs": verbs});
            if g != r.group || v != r.version {
                res["group"] = json!(g);
                res["version"] = json!(v);
            }
            list.push(res);
        }
    }
    if list.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                "resources": list}),
    )
}

/// The OpenAPI v3 path of a group-version ("api/v1", "apis/apps/v1").
fn openapi_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// A minimal OpenAPI v3 document for one group-version: per kind, a PATCH operation with its
/// group-version-kind and the `fieldValidation` parameter, and no schemas. kubectl then
/// validates on the server (`fieldValidation=Strict`) and computes apply patches from its
/// compiled-in types (kubeapi.md §4.2).
pub fn openapi_group_version(
    resources: &[ResourceInfo],
    group: &str,
    version: &str,
) -> Option<Value> {
    let mut paths = serde_json::Map::new();
    for r in resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let root = if group.is_empty() {
            format!("/api/{version}")
        } else {
            format!("/apis/{group}/{version}")
        };
        let path = if r.namespaced {
            format!("{root}/namespaces/{{namespace}}/{}/{{name}}", r.resource)
        } else {
            format!("{root}/{}/{{name}}", r.resource)
        };
        let body = json!({"schema": {"type": "object"}});
        paths.insert(
            path,
            json!({"patch": {
                "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": r.kind},
                "x-kubernetes-action": "patch",
                "parameters": [
                    {"in": "query", "name": "fieldValidation", "schema": {"type": "string"}},
                    {"in": "query", "name": "fieldManager", "schema": {"type": "string"}},
                    {"in": "query", "name": "dryRun", "schema": {"type": "string"}}],
                "requestBody": {"content": {
                    "application/json-patch+json": body,
                    "application/merge-patch+json": body}},
                "responses": {"200": {"description": "OK"}}}}),
        );
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({"openapi": "3.0.0",
                "info": {"title": "Kubernetes", "version": KUBE_GIT_VERSION},
                "paths": paths, "components": {"schemas": {}}}))
}

/// A stable hash of a document, for the `?hash=` of `serverRelativeURL`.
pub fn doc_hash(doc: &Value) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    doc.to_string().hash(&mut hasher);
    format!("{:016X}", hasher.finish())
}

pub fn openapi_index(resources: &[ResourceInfo]) -> Value {
    let mut paths = BTreeMap::new();
    for (g, v) in group_versions(resources) {
        let Some(doc) = openapi_group_version(resources, g, v) else {
            continue;
        };
        let path = openapi_path(g, v);
        paths.insert(
            path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={}", doc_hash(&doc))}),
        );
    }
    json!({"paths": paths})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::registry;

    #[test]
    fn discovery_lists_core_and_apps() {
        let reg = registry();
        assert_eq!(api_group_list(&reg)["groups"][0]["name"], "apps");
        let core = api_resource_list(&reg, "", "v1").unwrap();
        let names: Vec<&str> = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .filter(|n| !n.contains('/'))
            .collect();
        assert_eq!(
            names[..5],
            ["namespaces", "configmaps", "secrets", "services", "pods"]
        );
        assert!(names.contains(&"persistentvolumeclaims"));
        let index = openapi_index(&reg);
        assert!(
            index["paths"]["apis/apps/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .starts_with("/openapi/v3/apis/apps/v1?hash=")
        );
    }
}
