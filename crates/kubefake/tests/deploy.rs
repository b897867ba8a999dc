//! The manifests in `deploy/kubernetes`: every Kubernetes document is a valid object of
//! its kind (read as the fake reads what it is sent), and the RBAC gives corral's
//! server what it needs, bound to the ServiceAccount its StatefulSet runs as.

use std::path::PathBuf;

use corral_kubefake::parse_object;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject,
};
use serde_json::Value;

const WORKERS: &str = "corral-workers";

/// Every object of the manifests, by kind.
#[derive(Default)]
struct Manifests {
    namespaces: Vec<Namespace>,
    accounts: Vec<ServiceAccount>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    cluster_roles: Vec<ClusterRole>,
    cluster_bindings: Vec<ClusterRoleBinding>,
    stateful_sets: Vec<StatefulSet>,
    services: Vec<Service>,
    pools: Vec<Value>,
}

fn parsed<T: serde::de::DeserializeOwned + serde::Serialize>(file: &str, document: &Value) -> T {
    parse_object(document)
        .unwrap_or_else(|problems| panic!("{file}: {} is not valid:\n{problems}", document["kind"]))
}

fn read() -> Manifests {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes");
    let mut manifests = Manifests::default();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes exists")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    for path in files {
        let file = path
            .file_name()
            .expect("a file name")
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&path).expect("a manifest reads");
        let documents: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|error| panic!("{file}: not YAML: {error}"));
        for document in documents.into_iter().filter(|d| !d.is_null()) {
            match document["kind"].as_str() {
                Some("Pool") => manifests.pools.push(document),
                Some("Namespace") => manifests.namespaces.push(parsed(&file, &document)),
                Some("ServiceAccount") => manifests.accounts.push(parsed(&file, &document)),
                Some("Role") => manifests.roles.push(parsed(&file, &document)),
                Some("RoleBinding") => manifests.role_bindings.push(parsed(&file, &document)),
                Some("ClusterRole") => manifests.cluster_roles.push(parsed(&file, &document)),
                Some("ClusterRoleBinding") => {
                    manifests.cluster_bindings.push(parsed(&file, &document))
                }
                Some("StatefulSet") => manifests.stateful_sets.push(parsed(&file, &document)),
                Some("Service") => manifests.services.push(parsed(&file, &document)),
                other => panic!("{file}: a document of kind {other:?} the test does not check"),
            }
        }
    }
    manifests
}

fn names_account(subject: &Subject, name: &str, namespace: &str) -> bool {
    subject.kind == "ServiceAccount"
        && subject.name == name
        && subject.namespace.as_deref() == Some(namespace)
}

fn allows(rules: &[PolicyRule], resource: &str, verb: &str) -> bool {
    let has = |list: &Option<Vec<String>>, wanted: &str| {
        list.iter()
            .flatten()
            .any(|item| item == wanted || item == "*")
    };
    rules.iter().any(|rule| {
        has(&rule.api_groups, "")
            && has(&rule.resources, resource)
            && (rule.verbs.iter().any(|v| v == verb || v == "*"))
    })
}

impl Manifests {
    /// The rules `account` (in `namespace`) holds in `scope` (a namespace), or
    /// cluster-wide for `None`.
    fn rules(&self, account: &str, namespace: &str, scope: Option<&str>) -> Vec<PolicyRule> {
        let cluster_role = |name: &str| {
            self.cluster_roles
                .iter()
                .find(|role| role.metadata.name.as_deref() == Some(name))
                .and_then(|role| role.rules.clone())
                .unwrap_or_default()
        };
        let mut rules = Vec::new();
        for binding in &self.cluster_bindings {
            if binding
                .subjects
                .iter()
                .flatten()
                .any(|s| names_account(s, account, namespace))
            {
                rules.extend(cluster_role(&binding.role_ref.name));
            }
        }
        let Some(scope) = scope else {
            return rules;
        };
        for binding in &self.role_bindings {
            let bound = binding
                .subjects
                .iter()
                .flatten()
                .any(|s| names_account(s, account, namespace));
            if !bound || binding.metadata.namespace.as_deref() != Some(scope) {
                continue;
            }
            match binding.role_ref.kind.as_str() {
                "ClusterRole" => rules.extend(cluster_role(&binding.role_ref.name)),
                _ => rules.extend(
                    self.roles
                        .iter()
                        .filter(|role| {
                            role.metadata.name.as_deref() == Some(binding.role_ref.name.as_str())
                                && role.metadata.namespace.as_deref() == Some(scope)
                        })
                        .flat_map(|role| role.rules.clone().unwrap_or_default()),
                ),
            }
        }
        rules
    }
}

#[test]
fn every_manifest_is_a_valid_object_and_the_server_has_what_it_needs() {
    let manifests = read();
    let namespaces: Vec<_> = manifests
        .namespaces
        .iter()
        .filter_map(|n| n.metadata.name.as_deref())
        .collect();
    assert_eq!(namespaces, ["corral", WORKERS]);

    let [server] = manifests.stateful_sets.as_slice() else {
        panic!("one StatefulSet, the server's");
    };
    let namespace = server
        .metadata
        .namespace
        .as_deref()
        .expect("the server's namespace");
    let spec = &server.spec;
    assert_eq!(spec.replicas, Some(1));
    let pod = spec.template.spec.as_ref().expect("a pod spec");
    let account = pod
        .service_account_name
        .as_deref()
        .expect("the server's ServiceAccount");
    assert!(
        manifests
            .accounts
            .iter()
            .any(|a| a.metadata.name.as_deref() == Some(account)
                && a.metadata.namespace.as_deref() == Some(namespace)),
        "the ServiceAccount {account} is not in the manifests"
    );

    let in_workers = manifests.rules(account, namespace, Some(WORKERS));
    for verb in ["create", "get", "list", "watch", "delete"] {
        assert!(
            allows(&in_workers, "pods", verb),
            "pods {verb} in {WORKERS}"
        );
    }
    for verb in ["create", "get", "update", "delete"] {
        assert!(
            allows(&in_workers, "secrets", verb),
            "secrets {verb} in {WORKERS}"
        );
    }
    let cluster = manifests.rules(account, namespace, None);
    for verb in ["get", "list", "watch"] {
        assert!(allows(&cluster, "nodes", verb), "nodes {verb} cluster-wide");
    }
    for verb in ["list", "watch"] {
        assert!(allows(&cluster, "pods", verb), "pods {verb} cluster-wide");
    }
    assert!(
        !allows(&cluster, "secrets", "get"),
        "secrets are readable cluster-wide"
    );
    assert!(
        !allows(&cluster, "pods", "create"),
        "pods can be created anywhere"
    );

    let security = pod
        .security_context
        .as_ref()
        .expect("a pod security context");
    assert_eq!(security.run_as_non_root, Some(true));
    assert!(security.fs_group.is_some());

    let container = &pod.containers[0];
    let args = container.args.clone().unwrap_or_default();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|at| args.get(at + 1))
            .cloned()
    };
    assert_eq!(flag("--data-dir").as_deref(), Some("/var/lib/corral"));
    let mounts = container.volume_mounts.clone().unwrap_or_default();
    let claims = spec.volume_claim_templates.clone().unwrap_or_default();
    let data = mounts
        .iter()
        .find(|m| m.mount_path == "/var/lib/corral")
        .expect("the data dir is mounted");
    assert!(
        claims
            .iter()
            .any(|c| c.metadata.name.as_deref() == Some(data.name.as_str())),
        "the data dir is a claim"
    );
    let database = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "CORRAL_DATABASE_URL")
        .expect("the database URL");
    let reference = database
        .value_from
        .as_ref()
        .and_then(|v| v.secret_key_ref.as_ref())
        .expect("from a secret");
    assert_eq!(
        (
            reference.name.as_str(),
            reference.key.as_str(),
            reference.optional
        ),
        ("corral-database", "url", Some(true))
    );

    let advertised = flag("--advertise-url").expect("--advertise-url");
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let service = manifests
        .services
        .iter()
        .find(|service| {
            let name = service.metadata.name.as_deref().unwrap_or_default();
            let ns = service.metadata.namespace.as_deref().unwrap_or_default();
            advertised.starts_with(&format!("http://{name}.{ns}.svc:"))
        })
        .expect("--advertise-url names a Service");
    let service_spec = service.spec.as_ref().expect("a service spec");
    let selector = service_spec.selector.clone().unwrap_or_default();
    assert!(
        !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
        "the Service selects the server"
    );
    let port = service_spec
        .ports
        .iter()
        .flatten()
        .next()
        .expect("a port")
        .port;
    assert!(
        advertised.ends_with(&format!(":{port}")),
        "{advertised} and port {port}"
    );
    assert!(flag("--listen").is_some_and(|listen| listen.ends_with(&format!(":{port}"))));

    let worker = manifests
        .accounts
        .iter()
        .find(|a| a.metadata.namespace.as_deref() == Some(WORKERS))
        .expect("a ServiceAccount for worker pods");
    assert_eq!(worker.automount_service_account_token, Some(false));
    let worker_name = worker.metadata.name.clone().expect("a name");
    assert!(
        manifests
            .rules(&worker_name, WORKERS, Some(WORKERS))
            .is_empty(),
        "the worker account is bound"
    );

    let [pool] = manifests.pools.as_slice() else {
        panic!("one corral Pool example");
    };
    assert_eq!(pool["provider"], "kubernetes");
    assert_eq!(pool["kubernetes"]["namespace"], WORKERS);
    assert_eq!(pool["kubernetes"]["service_account"], worker_name.as_str());
}
