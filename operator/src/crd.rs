//! The `Broker` custom resource (`brokers.starling.dev/v1alpha1`).
//!
//! The schema is derived from these types: bounds, enums and defaults come from `schemars`
//! attributes, and the rules a schema cannot express (fields that exclude each other, transition
//! rules) are CEL `x-kubernetes-validations`. `crds/broker.yaml` is the committed output of
//! `starling-operator crd`; a test fails when it is stale.

// `KubeSchema` copies each struct it derives into a private module to generate the schema, and
// `unreachable_pub` fires on those copies; every type here is exported through `pub mod crd`.
#![allow(unreachable_pub)]

use std::collections::BTreeMap;

use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
/// The limits table, shared with the broker and the api.
pub use starling_types::{LimitsSpec, Profile as LimitsProfile};

/// The API group of Starling's custom resources.
pub const GROUP: &str = "starling.dev";
/// The finalizer that deregisters a broker from the api before the `Broker` goes away.
pub const FINALIZER: &str = "starling.dev/deregister";
/// Set to `"true"` on a `Broker` to release it without deregistering (its api is gone for good).
pub const SKIP_DEREGISTER_ANNOTATION: &str = "starling.dev/skip-deregister";
/// The path of the broker's WebSocket listener.
pub const WS_PATH: &str = "/mqtt";

/// A Starling MQTT broker: pods serving MQTT over TLS (8883) and WebSockets (443, 8884),
/// registered with the Starling api.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "starling.dev",
    version = "v1alpha1",
    kind = "Broker",
    namespaced,
    status = "BrokerStatus",
    shortname = "mqb",
    category = "starling",
    derive = "PartialEq",
    doc = "A Starling MQTT broker managed by the Starling operator",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoints.mqtts"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    validation = Rule::new("self.metadata.name.size() <= 40 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')")
        .message("metadata.name must be a DNS label of at most 40 characters: it names the api broker and the Service")
)]
#[x_kube(
    validation = Rule::new("!(has(self.hostname) && has(self.domain))")
        .message("set either hostname or domain, not both"),
    validation = Rule::new("(has(self.namespace) ? self.namespace : '') == (has(oldSelf.namespace) ? oldSelf.namespace : '')")
        .message("namespace is immutable: it cannot be set, changed or removed after creation")
)]
#[serde(rename_all = "camelCase")]
pub struct BrokerSpec {
    /// Number of broker pods. More than one needs the operator to give its brokers a NATS
    /// cluster (`--broker-cluster-nats`, the chart's `nats` values); without one a Broker asking
    /// for more is Degraded (`ReplicasNeedCluster`) and keeps the replicas it had.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 64))]
    pub replicas: i32,

    /// Container image of `starling-broker`; the operator's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Image pull policy of the broker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,

    /// CPU and memory requests and limits of the broker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<BrokerResources>,

    /// The pub/sub namespace of the broker in the api; the Kubernetes namespace when unset.
    /// It cannot be set, changed or removed after creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    )]
    #[x_kube(validation = Rule::new("self == oldSelf").message("namespace is immutable"))]
    pub namespace: Option<String>,

    /// The full host name clients connect to (for example `mqtt.example.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub hostname: Option<String>,

    /// A domain under which the host name is `<broker>.<namespace>.<domain>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 200),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub domain: Option<String>,

    /// A description kept in the api.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,

    /// The MQTT over TLS and MQTT over WebSockets listeners.
    #[serde(default)]
    pub listeners: Listeners,

    /// The Kubernetes Service in front of the pods.
    #[serde(default)]
    pub service: ServiceSpec,

    /// Where the TLS certificate comes from.
    #[serde(default)]
    pub tls: TlsSpec,

    /// Broker limits: a profile and explicit values over it. All of them are rendered into the
    /// broker's configuration file (`[limits]`); those a tenant may set also go to the api, which
    /// shows them and sends them to the pods with the broker's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("!has(self.publishBurst) || !has(self.maxPublishRate) || double(self.publishBurst) >= self.maxPublishRate")
        .message("publishBurst must be at least maxPublishRate"))]
    pub limits: Option<LimitsSpec>,

    /// Default lifetime in seconds of the tokens the api issues for this broker; none when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 315_360_000))]
    pub expiration: Option<i64>,

    /// The on-publish hook: every PUBLISH goes to this URL first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_publish: Option<OnPublish>,

    /// Scheduling and identity of the broker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodOptions>,

    /// Where the broker keeps its state (retained messages, persistent sessions, the managed
    /// keys and revocations): a PersistentVolumeClaim of this size. Without it the state lives
    /// in an emptyDir, which survives container restarts but not a pod moved to another node,
    /// and the status says so (`Durable` false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
}

/// The PersistentVolumeClaim that holds a broker's data directory.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("(has(self.storageClassName) ? self.storageClassName : '') == (has(oldSelf.storageClassName) ? oldSelf.storageClassName : '')")
        .message("storageClassName is immutable: a claim cannot move to another class")
)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Requested size, for example `1Gi`. A claim can grow where its storage class allows
    /// expansion; it never shrinks.
    #[schemars(
        length(min = 1, max = 32),
        regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$")
    )]
    pub size: String,
    /// The claim's storage class; the cluster's default class when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

fn object_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "nullable": true,
        "x-kubernetes-preserve-unknown-fields": true
    })
}

fn tolerations_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "maxItems": 32,
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
    })
}

/// What a cluster needs on the broker pods: where they may run, how images are pulled, and the
/// pods' own labels, annotations and ServiceAccount.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodOptions {
    /// Names of Secrets in the Broker's namespace to pull the image with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    pub image_pull_secrets: Vec<String>,
    /// Node labels the pods must run on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations, as in a PodSpec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "tolerations_schema")]
    pub tolerations: Vec<serde_json::Map<String, serde_json::Value>>,
    /// Affinity, as in a PodSpec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "object_schema")]
    pub affinity: Option<serde_json::Map<String, serde_json::Value>>,
    /// Annotations on the pods (the operator's own keys win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Labels on the pods (the operator's own keys, which select them, win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The pods' ServiceAccount; the namespace's `default` when unset. Its token is not mounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,
}

fn default_replicas() -> i32 {
    1
}

/// Image pull policy of the broker container.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    /// Pull on every start.
    Always,
    /// Pull when the node does not have it.
    IfNotPresent,
    /// Never pull.
    Never,
}

impl PullPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// CPU and memory of the broker container, as Kubernetes quantities.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BrokerResources {
    /// Requests (`cpu`, `memory`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<ResourceAmounts>,
    /// Limits (`cpu`, `memory`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceAmounts>,
}

/// A CPU and a memory quantity.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ResourceAmounts {
    /// CPU, for example `100m` or `1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+m|[0-9]+(\.[0-9]+)?)$"))]
    pub cpu: Option<String>,
    /// Memory, for example `64Mi` or `1Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"))]
    pub memory: Option<String>,
}

/// The broker's listeners.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(
    validation = Rule::new("self.mqtts.enabled || self.wss.enabled")
        .message("at least one listener must be enabled"),
    validation = Rule::new("!self.mqtts.enabled || !self.wss.enabled || !(self.mqtts.port in self.wss.ports)")
        .message("the mqtts port and the wss ports must differ")
)]
#[serde(rename_all = "camelCase")]
pub struct Listeners {
    /// MQTT over TLS.
    #[serde(default)]
    pub mqtts: MqttsListener,
    /// MQTT over secure WebSockets.
    #[serde(default)]
    pub wss: WssListener,
}

/// MQTT over TLS.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MqttsListener {
    /// Serve MQTT over TLS.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The Service port.
    #[serde(default = "default_mqtts_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

impl Default for MqttsListener {
    fn default() -> Self {
        Self {
            enabled: true,
            port: default_mqtts_port(),
        }
    }
}

/// MQTT over secure WebSockets.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WssListener {
    /// Serve MQTT over secure WebSockets.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The Service ports (443 and 8884 by default), all to the same container port.
    #[serde(default = "default_wss_ports")]
    #[schemars(length(min = 1, max = 4), inner(range(min = 1, max = 65535)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub ports: Vec<i32>,
}

impl Default for WssListener {
    fn default() -> Self {
        Self {
            enabled: true,
            ports: default_wss_ports(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_mqtts_port() -> i32 {
    8883
}

fn default_wss_ports() -> Vec<i32> {
    vec![443, 8884]
}

/// The Kubernetes Service in front of the broker pods.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// The Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Annotations put on the Service (for example for a cloud load balancer).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The Service type.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ServiceType {
    /// Reachable inside the cluster only.
    #[default]
    ClusterIP,
    /// A port on every node.
    NodePort,
    /// An external load balancer.
    LoadBalancer,
}

impl ServiceType {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Where the broker's TLS certificate comes from: an existing `kubernetes.io/tls` Secret (for
/// example cert-manager's), or a CA and a leaf the operator issues and renews.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.renewBeforeDays < self.validityDays")
        .message("renewBeforeDays must be less than validityDays"),
    validation = Rule::new("!(has(self.secretName) && has(self.issuerRef))")
        .message("tls.secretName and tls.issuerRef exclude each other")
)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// An existing `kubernetes.io/tls` Secret in the Broker's namespace; operator-issued when
    /// unset (and no `issuerRef`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: Option<String>,
    /// A cert-manager issuer: the operator keeps a cert-manager `Certificate` named like the
    /// Broker for its host names, cert-manager writes the Secret `<name>-tls`, and the broker
    /// reloads renewed certificates in place. Not together with `secretName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,
    /// Lifetime of an operator-issued leaf certificate, in days.
    #[serde(default = "default_validity_days")]
    #[schemars(range(min = 2, max = 397))]
    pub validity_days: i32,
    /// An operator-issued leaf is renewed this many days before it expires.
    #[serde(default = "default_renew_before_days")]
    #[schemars(range(min = 1, max = 396))]
    pub renew_before_days: i32,
}

/// A cert-manager `Issuer` or `ClusterIssuer`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// The issuer's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `Issuer` (in the Broker's namespace) or `ClusterIssuer`.
    #[serde(default = "default_issuer_kind")]
    #[schemars(regex(pattern = r"^(Issuer|ClusterIssuer)$"))]
    pub kind: String,
    /// The issuer's API group.
    #[serde(default = "default_issuer_group")]
    #[schemars(length(min = 1, max = 253))]
    pub group: String,
}

fn default_issuer_kind() -> String {
    "Issuer".to_owned()
}

fn default_issuer_group() -> String {
    "cert-manager.io".to_owned()
}

impl Default for TlsSpec {
    fn default() -> Self {
        Self {
            secret_name: None,
            issuer_ref: None,
            validity_days: default_validity_days(),
            renew_before_days: default_renew_before_days(),
        }
    }
}

fn default_validity_days() -> i32 {
    90
}

fn default_renew_before_days() -> i32 {
    30
}

/// The on-publish hook.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OnPublish {
    /// An `http` or `https` URL the broker POSTs every message to.
    #[schemars(length(min = 8, max = 2048), regex(pattern = r"^https?://[^\s]+$"))]
    pub url: String,
}

// === status ===

/// What the operator observed and did.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BrokerStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`, each with a reason.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// A one-word summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Pods that pass their readiness probe.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Pods of the broker's workload, old and new (the scale subresource's status replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// The label selector of the broker's pods, as a string (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The broker's id in the api.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_id: Option<String>,
    /// The pub/sub namespace the broker is registered in (`spec.namespace` cannot move it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_namespace: Option<String>,
    /// Where clients connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Endpoints>,
    /// The serving certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsStatus>,
}

/// A status condition, as in `metav1.Condition`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `Progressing` or `Degraded`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase reason.
    pub reason: String,
    /// A human-readable explanation.
    // No `default` in the schema: Kubernetes 1.20 rejects an empty-string default here.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When the status last changed (RFC 3339).
    pub last_transition_time: String,
    /// The generation this condition was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A one-word summary of the status.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Resources are being created or rolled out.
    Pending,
    /// Every replica is ready and the api knows the broker.
    Ready,
    /// Something needs attention; the conditions say what.
    Degraded,
    /// Being deleted.
    Terminating,
}

/// Where clients connect.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    /// `mqtts://host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtts: Option<String>,
    /// `wss://host:port/mqtt` for every WebSocket port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wss: Vec<String>,
    /// How the endpoints were found when something other than the Broker's spec decides them
    /// (a NodePort or LoadBalancer Service, an Ingress, a Gateway API route), or what is still
    /// missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The serving certificate.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TlsStatus {
    /// The Secret the pods mount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// When the leaf certificate expires (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
}

// === impl Broker ===

impl Broker {
    /// The pub/sub namespace in the api: `spec.namespace`, else the Kubernetes namespace.
    pub fn pubsub_namespace(&self) -> String {
        self.spec
            .namespace
            .clone()
            .or_else(|| self.metadata.namespace.clone())
            .unwrap_or_else(|| "default".to_owned())
    }

    /// The host name clients connect to.
    pub fn host(&self) -> String {
        let name = self.metadata.name.clone().unwrap_or_default();
        let k8s_ns = self
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        match (&self.spec.hostname, &self.spec.domain) {
            (Some(h), _) => h.clone(),
            (None, Some(d)) => format!("{name}.{}.{d}", self.pubsub_namespace()),
            (None, None) => format!("{name}.{k8s_ns}.svc"),
        }
    }

    /// The endpoints the spec alone gives (host name and Service ports); the status shows
    /// what exposes the Service on top of these (`crate::exposure`).
    pub fn endpoints(&self) -> Endpoints {
        self.endpoints_at(&self.host())
    }

    /// The spec's endpoints (its enabled listeners and their ports) on `host`.
    pub fn endpoints_at(&self, host: &str) -> Endpoints {
        let l = &self.spec.listeners;
        Endpoints {
            mqtts: l
                .mqtts
                .enabled
                .then(|| format!("mqtts://{host}:{}", l.mqtts.port)),
            wss: if l.wss.enabled {
                l.wss
                    .ports
                    .iter()
                    .map(|p| format!("wss://{host}:{p}{WS_PATH}"))
                    .collect()
            } else {
                Vec::new()
            },
            note: None,
        }
    }

    /// Whether the admin asked to release this Broker without deregistering it.
    pub fn skip_deregister(&self) -> bool {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SKIP_DEREGISTER_ANNOTATION))
            .is_some_and(|v| v == "true")
    }
}

/// The CRD as YAML, exactly what `crds/broker.yaml` holds.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    let crd = Broker::crd();
    let body = serde_yaml::to_string(&crd)?;
    Ok(format!(
        "# Generated by `starling-operator crd`; do not edit. A test fails when this file is stale.\n{body}"
    ))
}

/// The CRD without its CEL rules, for API servers older than 1.25: they do not know
/// `x-kubernetes-validations`, and clients that validate against their OpenAPI (Helm, kubectl)
/// reject it. The operator enforces nothing through CEL, so only the early rejection is lost.
pub fn crd_yaml_without_cel() -> Result<String, serde_yaml::Error> {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                map.remove("x-kubernetes-validations");
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut crd = serde_json::to_value(Broker::crd())
        .map_err(<serde_yaml::Error as serde::ser::Error>::custom)?;
    strip(&mut crd);
    let body = serde_yaml::to_string(&crd)?;
    Ok(format!(
        "# Generated by `starling-operator crd --without-cel` for Kubernetes < 1.25; do not edit.\n{body}"
    ))
}

#[cfg(test)]
mod tests;
