use mlops_runtime::Secret;
use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

/// How clients reach the brokers. Maps onto librdkafka's `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    fn as_librdkafka(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// Connection settings shared by every Kafka client of a process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list (`KAFKA_BOOTSTRAP_SERVERS`).
    pub bootstrap_servers: String,
    /// Prefix of every client id; the role (producer, admin, group) is appended.
    pub client_id: String,
    pub security_protocol: SecurityProtocol,
    /// `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512` or `OAUTHBEARER`.
    pub sasl_mechanism: Option<String>,
    pub sasl_username: Option<String>,
    pub sasl_password: Option<Secret>,
    pub ssl_ca_location: Option<String>,
    pub ssl_certificate_location: Option<String>,
    pub ssl_key_location: Option<String>,
    pub ssl_key_password: Option<Secret>,
    /// `OAUTHBEARER` through an OpenID Connect provider (client credentials): its token
    /// endpoint, this client's id and secret, and the scope asked for.
    pub oauthbearer_token_endpoint_url: Option<String>,
    pub oauthbearer_client_id: Option<String>,
    pub oauthbearer_client_secret: Option<Secret>,
    pub oauthbearer_scope: Option<String>,
    /// Consumer group session timeout. Kept short so that a group joins in seconds.
    pub session_timeout_ms: u32,
    /// How long a member may spend on records between two polls before it leaves its
    /// group (`max.poll.interval.ms`). A handler retries a record for as long as its
    /// dependency is down; past this bound the member gives up its partitions so another
    /// member can take them, and rejoins at its next poll (a commit refused meanwhile is
    /// counted and retried). Five minutes: longer than any healthy micro-batch here, short
    /// enough that a stuck member does not hold its partitions for long.
    pub max_poll_interval_ms: u32,
    /// Replication factor of topics the platform creates (1 on a single broker).
    pub replication_factor: i32,
    /// How long a produce may take, retries included, before it fails
    /// (`message.timeout.ms`): the bound on answering "broker unreachable".
    pub delivery_timeout_ms: u32,
    /// How long the producer waits to fill a batch (`linger.ms`): throughput against
    /// per-request latency.
    pub linger_ms: u32,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".to_owned(),
            client_id: "mlops".to_owned(),
            security_protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            ssl_ca_location: None,
            ssl_certificate_location: None,
            ssl_key_location: None,
            ssl_key_password: None,
            oauthbearer_token_endpoint_url: None,
            oauthbearer_client_id: None,
            oauthbearer_client_secret: None,
            oauthbearer_scope: None,
            session_timeout_ms: 6000,
            max_poll_interval_ms: 300_000,
            replication_factor: 1,
            delivery_timeout_ms: 30_000,
            linger_ms: 5,
        }
    }
}

impl KafkaConfig {
    pub fn with_bootstrap(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            ..Self::default()
        }
    }

    /// Problems that would make every client fail, listed all at once.
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.bootstrap_servers.trim().is_empty() {
            errors.push("kafka.bootstrap_servers: must not be empty".to_owned());
        }
        if self.security_protocol.uses_sasl() {
            if self.sasl_mechanism.is_none() {
                errors.push(
                    "kafka.sasl_mechanism: required when security_protocol uses SASL".to_owned(),
                );
            }
            let needs_password = self
                .sasl_mechanism
                .as_deref()
                .is_some_and(|m| m != "OAUTHBEARER");
            if needs_password && (self.sasl_username.is_none() || self.sasl_password.is_none()) {
                errors.push(
                    "kafka.sasl_username/sasl_password: required for this sasl_mechanism"
                        .to_owned(),
                );
            }
            let oidc = [
                self.oauthbearer_token_endpoint_url.is_some(),
                self.oauthbearer_client_id.is_some(),
                self.oauthbearer_client_secret.is_some(),
            ];
            if self.sasl_mechanism.as_deref() == Some("OAUTHBEARER") && !oidc.iter().all(|s| *s) {
                errors.push(
                    "kafka.oauthbearer_token_endpoint_url/oauthbearer_client_id/\
                     oauthbearer_client_secret: required for OAUTHBEARER"
                        .to_owned(),
                );
            }
        }
        if self.replication_factor < 1 {
            errors.push("kafka.replication_factor: must be at least 1".to_owned());
        }
        errors
    }

    /// librdkafka settings common to every client; `role` distinguishes client ids.
    pub(crate) fn client_config(&self, role: &str) -> ClientConfig {
        // The one place a Kafka client's configuration starts.
        #[allow(clippy::disallowed_methods)]
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", format!("{}-{role}", self.client_id))
            .set("security.protocol", self.security_protocol.as_librdkafka());
        let optional = [
            ("sasl.mechanism", self.sasl_mechanism.as_deref()),
            ("sasl.username", self.sasl_username.as_deref()),
            (
                "sasl.password",
                self.sasl_password.as_ref().map(Secret::expose),
            ),
            ("ssl.ca.location", self.ssl_ca_location.as_deref()),
            (
                "ssl.certificate.location",
                self.ssl_certificate_location.as_deref(),
            ),
            ("ssl.key.location", self.ssl_key_location.as_deref()),
            (
                "ssl.key.password",
                self.ssl_key_password.as_ref().map(Secret::expose),
            ),
            (
                "sasl.oauthbearer.method",
                self.oauthbearer_token_endpoint_url.as_ref().map(|_| "oidc"),
            ),
            (
                "sasl.oauthbearer.token.endpoint.url",
                self.oauthbearer_token_endpoint_url.as_deref(),
            ),
            (
                "sasl.oauthbearer.client.id",
                self.oauthbearer_client_id.as_deref(),
            ),
            (
                "sasl.oauthbearer.client.secret",
                self.oauthbearer_client_secret.as_ref().map(Secret::expose),
            ),
            ("sasl.oauthbearer.scope", self.oauthbearer_scope.as_deref()),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                config.set(key, value);
            }
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sasl_settings_reach_librdkafka_and_are_validated() {
        let mut config = KafkaConfig {
            security_protocol: SecurityProtocol::SaslSsl,
            ..KafkaConfig::default()
        };
        let errors = config.validate();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("kafka.sasl_mechanism"));

        config.sasl_mechanism = Some("SCRAM-SHA-512".into());
        config.sasl_username = Some("svc".into());
        config.sasl_password = Some(Secret::new("hunter2"));
        assert!(config.validate().is_empty());
        let client = config.client_config("producer");
        assert_eq!(client.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(client.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(client.get("sasl.password"), Some("hunter2"));
        assert_eq!(client.get("client.id"), Some("mlops-producer"));
        assert!(!format!("{config:?}").contains("hunter2"));

        // OAUTHBEARER through an identity provider's client credentials.
        config.sasl_mechanism = Some("OAUTHBEARER".into());
        let errors = config.validate();
        assert!(errors[0].contains("required for OAUTHBEARER"), "{errors:?}");
        config.oauthbearer_token_endpoint_url = Some("https://idp/token".into());
        config.oauthbearer_client_id = Some("mlops-ingestion".into());
        config.oauthbearer_client_secret = Some(Secret::new("s3cr3t"));
        assert!(config.validate().is_empty());
        let client = config.client_config("producer");
        assert_eq!(client.get("sasl.oauthbearer.method"), Some("oidc"));
        assert_eq!(
            client.get("sasl.oauthbearer.token.endpoint.url"),
            Some("https://idp/token")
        );
        assert_eq!(client.get("sasl.oauthbearer.client.secret"), Some("s3cr3t"));
        assert!(!format!("{config:?}").contains("s3cr3t"));
    }
}
