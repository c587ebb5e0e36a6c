//! The operator's one error type.

use crate::{api::ApiError, certs::CertError};

/// Everything a reconcile can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes api: {0}")]
    Kube(#[from] kube::Error),
    /// The finalizer machinery failed (adding or removing the finalizer, or one of our steps).
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// The Starling api could not be reached or answered unexpectedly.
    #[error("starling api: {0}")]
    Api(#[from] ApiError),
    /// The api no longer has the broker this `Broker` registered; it is not re-created.
    #[error("the broker {0} was deleted in the api")]
    DeletedInApi(String),
    /// The api has the broker but the operator lacks its one-time secret.
    #[error("the api has a broker {0} whose credential the operator does not hold")]
    CredentialsUnavailable(String),
    /// The named TLS Secret is missing or unreadable.
    #[error("tls secret {name}: {reason}")]
    TlsSecret {
        /// The Secret's name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Issuing a certificate failed.
    #[error("certificate: {0}")]
    Cert(#[from] CertError),
    /// Rendering the broker's configuration failed.
    #[error("rendering broker.toml: {0}")]
    Config(#[from] toml::ser::Error),
    /// The object lacks a field the API server always sets.
    #[error("the Broker has no {0}")]
    MissingField(&'static str),
    /// The `Broker` names a pub/sub namespace its Kubernetes namespace may not use; nothing is
    /// created, claimed or deleted in the api.
    #[error(
        "a Broker in Kubernetes namespace {k8s} may not use the pub/sub namespace {pubsub}; allowed: {}",
        allowed.join(", ")
    )]
    NamespaceNotAllowed {
        /// The `Broker`'s Kubernetes namespace.
        k8s: String,
        /// The pub/sub namespace it names.
        pubsub: String,
        /// The pub/sub namespaces it may use.
        allowed: Vec<String>,
    },
    /// Applying one of the Broker's objects failed.
    #[error("applying {what}: {source}")]
    Apply {
        /// The kind and name of the object, for example `ConfigMap sensors-config`.
        what: String,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
    /// An object of the name the operator would use exists and is not this Broker's.
    #[error(
        "{what} exists and is not owned by this Broker; rename or delete it, the operator does not take it over"
    )]
    NotOwned {
        /// The kind and name of the object.
        what: String,
    },
    /// The api's broker of this name is not the one this Broker registered.
    #[error("the api's broker {0} is not managed by this Broker")]
    NotManaged(String),
    /// `spec.namespace` differs from the pub/sub namespace the broker was registered in.
    #[error(
        "spec.namespace is immutable: the broker is registered in {registered:?}, the spec now says {wanted:?}"
    )]
    NamespaceChanged {
        /// The pub/sub namespace of the registration.
        registered: String,
        /// The one the spec now names.
        wanted: String,
    },
    /// `spec.pod` holds something a PodSpec does not take.
    #[error("invalid pod options: {0}")]
    PodOptions(String),
    /// The brokers' NATS credentials cannot be read or are incomplete (what and where, never
    /// a value).
    #[error("NATS credentials: {0}")]
    NatsCredentials(String),
    /// The API server lacks a resource the operator needs.
    #[error(
        "spec.replicas is {0}: more than one replica needs a NATS cluster, and the operator has \
         none (--broker-cluster-nats, the chart's nats values)"
    )]
    ReplicasNeedCluster(i32),

    #[error(
        "spec.replicas is {0} with spec.storage: a claim is one ReadWriteOnce volume, so a Broker \
         with storage runs one replica (replicas share their state through NATS JetStream)"
    )]
    StorageWithReplicas(i32),

    #[error("the API server does not serve {0}")]
    MissingApi(String),
}

impl Error {
    /// A short label for the `reason` of the error metric and of conditions.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "KubeApiError",
            Self::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.metric_label(),
                _ => "FinalizerError",
            },
            Self::Api(e) if e.is_transient() => "ApiUnreachable",
            Self::Api(_) => "ApiRejected",
            Self::DeletedInApi(_) => "DeletedInApi",
            Self::CredentialsUnavailable(_) => "CredentialsUnavailable",
            Self::TlsSecret { .. } => "TlsSecretInvalid",
            Self::Cert(_) => "CertificateError",
            Self::Config(_) => "ConfigError",
            Self::MissingField(_) => "InvalidObject",
            Self::MissingApi(_) => "MissingApi",
            Self::ReplicasNeedCluster(_) => "ReplicasNeedCluster",
            Self::StorageWithReplicas(_) => "StorageWithReplicas",
            Self::NamespaceNotAllowed { .. } => "NamespaceNotAllowed",
            Self::Apply { .. } => "ApplyFailed",
            Self::NotOwned { .. } => "OwnershipConflict",
            Self::PodOptions(_) => "InvalidPodOptions",
            Self::NatsCredentials(_) => "NatsCredentials",
            Self::NotManaged(_) => "NotManaged",
            Self::NamespaceChanged { .. } => "NamespaceImmutable",
        }
    }
}

/// `Result` with the operator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
