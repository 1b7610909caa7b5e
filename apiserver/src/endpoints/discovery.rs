//! `/version`, aggregated discovery (`apidiscovery.k8s.io/v2`), legacy discovery (`/api`,
//! `/apis`, `/api/v1`, `/apis/<g>/<v>`) and `/openapi/v3`: per group-version, the PATCH
//! operations that let `kubectl apply` and `create -f` use server-side field validation, and the
//! kinds' schemas (from k8s-openapi) for `kubectl explain`.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

use k8s_openapi::schemars::generate::SchemaSettings;

use serde_json::{Value, json};

use crate::registry::resources::ResourceInfo;
use crate::registry::strategy::Subresource;

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
    // kube-apiserver lists its connect subresources with both verbs (GET and POST upgrade).
    const CONNECT: &[&str] = &["create", "get"];
    r.strategy
        .subresources()
        .iter()
        .map(|sub| match sub {
            Subresource::Status => ("status", r.group, r.version, r.kind, GPU),
            Subresource::Scale => ("scale", "autoscaling", "v1", "Scale", GPU),
            Subresource::Binding => ("binding", "", "v1", "Binding", &["create"][..]),
            Subresource::Log => ("log", "", "v1", "Pod", &["get"][..]),
            Subresource::Exec => ("exec", "", "v1", "PodExecOptions", CONNECT),
            Subresource::Attach => ("attach", "", "v1", "PodAttachOptions", CONNECT),
            Subresource::PortForward => ("portforward", "", "v1", "PodPortForwardOptions", CONNECT),
        })
        .collect()
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
        if !r.strategy.categories().is_empty() {
            res["categories"] = json!(r.strategy.categories());
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

/// The content type of aggregated discovery, answered exactly so (client-go compares `g`, `v`
/// and `as`).
pub const AGGREGATED_DISCOVERY: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether an `Accept` header asks for aggregated discovery v2 (any entry with
/// `g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`).
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|media| {
        let params = media.split(';').skip(1).filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            Some((k.trim(), v.trim()))
        });
        let (mut g, mut v, mut r#as) = (false, false, false);
        for (key, value) in params {
            match key {
                "g" => g = value == "apidiscovery.k8s.io",
                "v" => v = value == "v2",
                "as" => r#as = value == "APIGroupDiscoveryList",
                _ => {}
            }
        }
        g && v && r#as
    })
}

/// `apidiscovery.k8s.io/v2 APIGroupDiscoveryList`: for `/api` (`core`) the core group alone
/// (one item with empty metadata), for `/apis` every named group.
pub fn aggregated(resources: &[ResourceInfo], core: bool) -> Value {
    let mut items: Vec<Value> = Vec::new();
    for (group, version) in group_versions(resources) {
        if group.is_empty() != core {
            continue;
        }
        let mut list: Vec<Value> = Vec::new();
        for r in resources
            .iter()
            .filter(|r| r.group == group && r.version == version)
        {
            let subresources: Vec<Value> = subresources(r)
                .into_iter()
                .map(|(sub, g, v, kind, verbs)| {
                    json!({"subresource": sub,
                           "responseKind": {"group": g, "version": v, "kind": kind},
                           "verbs": verbs})
                })
                .collect();
            let mut res = json!({"resource": r.resource,
                "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": r.singular, "verbs": VERBS, "shortNames": r.short_names,
                "subresources": subresources});
            if !r.strategy.categories().is_empty() {
                res["categories"] = json!(r.strategy.categories());
            }
            list.push(res);
        }
        let metadata = if core {
            json!({})
        } else {
            json!({"name": group})
        };
        items.push(json!({"metadata": metadata, "versions": [
            {"version": version, "freshness": "Current", "resources": list}]}));
    }
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2",
           "metadata": {}, "items": items})
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
    // The documents never change while the process runs; build each once (the schemas of
    // core/v1 are large).
    static DOCS: OnceLock<BTreeMap<(String, String), Value>> = OnceLock::new();
    let docs = DOCS.get_or_init(|| {
        group_versions(resources)
            .into_iter()
            .filter_map(|(g, v)| {
                let doc = build_openapi_group_version(resources, g, v)?;
                Some(((g.to_string(), v.to_string()), doc))
            })
            .collect()
    });
    docs.get(&(group.to_string(), version.to_string())).cloned()
}

fn build_openapi_group_version(
    resources: &[ResourceInfo],
    group: &str,
    version: &str,
) -> Option<Value> {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let mut kinds: Vec<(String, Value)> = Vec::new();
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
        let gvk = json!({"group": group, "version": version, "kind": r.kind});
        let reference = (r.schema)(&mut generator);
        let schema_name = reference
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|s| s.rsplit('/').next())
            .unwrap_or(r.kind)
            .to_string();
        kinds.push((schema_name.clone(), gvk.clone()));
        // `kubectl explain` finds a resource's kind through the GET of its collection
        // (all namespaces), then the schema carrying that kind.
        paths.insert(
            format!("{root}/{}", r.resource),
            json!({"get": {
                "x-kubernetes-group-version-kind": gvk,
                "x-kubernetes-action": "list",
                "responses": {"200": {"description": "OK", "content": {"application/json": {
                    "schema": {"$ref": format!("#/components/schemas/{schema_name}")}}}}}}}),
        );
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
    let mut schemas = generator.take_definitions(true);
    for (name, gvk) in kinds {
        if let Some(schema) = schemas.get_mut(&name).and_then(Value::as_object_mut) {
            schema.insert("x-kubernetes-group-version-kind".into(), json!([gvk]));
        }
    }
    Some(json!({"openapi": "3.0.0",
                "info": {"title": "Kubernetes", "version": KUBE_GIT_VERSION},
                "paths": paths, "components": {"schemas": schemas}}))
}

/// A stable hash of a document, for the `?hash=` of `serverRelativeURL`.
pub fn doc_hash(doc: &Value) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    doc.to_string().hash(&mut hasher);
    format!("{:016X}", hasher.finish())
}

/// `GET /openapi/v3`: each group-version's document URL with its content hash (kubectl caches
/// documents by that URL). Built once: hashing the documents is not free and kubectl fetches
/// the index on every apply.
pub fn openapi_index(resources: &[ResourceInfo]) -> Value {
    static INDEX: OnceLock<Value> = OnceLock::new();
    INDEX
        .get_or_init(|| {
            let mut paths = BTreeMap::new();
            for (g, v) in group_versions(resources) {
                let Some(doc) = openapi_group_version(resources, g, v) else {
                    continue;
                };
                let path = openapi_path(g, v);
                let url = format!("/openapi/v3/{path}?hash={}", doc_hash(&doc));
                paths.insert(path, json!({ "serverRelativeURL": url }));
            }
            json!({ "paths": paths })
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::resources::registry;

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
        // The pod subresources a kubelet serves, as kube-apiserver lists them.
        let sub = |name: &str| {
            core["resources"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["name"] == name)
                .cloned()
                .unwrap_or_else(|| panic!("{name} not listed"))
        };
        assert_eq!(sub("pods/log")["kind"], "Pod");
        assert_eq!(sub("pods/log")["verbs"], json!(["get"]));
        assert_eq!(sub("pods/exec")["kind"], "PodExecOptions");
        assert_eq!(sub("pods/exec")["verbs"], json!(["create", "get"]));
        assert_eq!(sub("pods/attach")["kind"], "PodAttachOptions");
        assert_eq!(sub("pods/portforward")["kind"], "PodPortForwardOptions");
        let core_agg = aggregated(&reg, true);
        let pods = core_agg["items"][0]["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "pods")
            .unwrap();
        let subs: Vec<&str> = pods["subresources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["subresource"].as_str().unwrap())
            .collect();
        assert_eq!(
            subs,
            ["status", "binding", "log", "exec", "attach", "portforward"]
        );
        let agg = aggregated(&reg, false);
        let apps = agg["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["metadata"]["name"] == "apps")
            .unwrap();
        let deploy = &apps["versions"][0]["resources"][0];
        assert_eq!(deploy["responseKind"]["kind"], "Deployment");
        assert_eq!(deploy["scope"], "Namespaced");
        assert_eq!(
            aggregated(&reg, true)["items"][0]["versions"][0]["version"],
            "v1"
        );
        assert!(wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
        ));
        assert!(!wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
        ));
        assert!(!wants_aggregated("application/json"));
        let doc = openapi_group_version(&reg, "apps", "v1").unwrap();
        let deployment = &doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            deployment["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        assert!(doc["components"]["schemas"]["io.k8s.api.apps.v1.DeploymentSpec"]["properties"]["replicas"].is_object());
        let index = openapi_index(&reg);
        assert!(
            index["paths"]["apis/apps/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .starts_with("/openapi/v3/apis/apps/v1?hash=")
        );
    }
}
