//! Bearer JWTs from an OpenID Connect identity provider: signatures checked against its
//! JWKS (a file, or a URL read at start and again when a token names a key not seen yet),
//! issuer, audience and expiry validated, roles and dataset scopes read from claims.
//!
//! A provider that does not answer at start (it often starts after the services) does not
//! stop the service: API keys work at once, and tokens are answered "provider
//! unavailable" (503) until its keys can be read, tried again at most every
//! [`RETRY_UNREACHABLE`] after the last try ended; meanwhile no token waits behind a try
//! under way, which a provider that does not answer would hold for the client's timeout.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::RwLock,
    time::{Duration, Instant},
};

use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    jwk::{AlgorithmParameters, JwkSet},
};
use serde_json::Value as Json;
use tokio::sync::Mutex;

use crate::auth::{PlatformRole, Principal};

/// Where the identity provider publishes its keys.
#[derive(Debug, Clone)]
enum Source {
    File(PathBuf),
    Url(String),
}

/// A JWKS is fetched again for an unknown key at most this often (the first time at
/// once: a provider may rotate right after this service started), so that tokens naming
/// made-up keys cannot make it hammer the provider.
const REFRESH_EVERY: Duration = Duration::from_secs(30);

/// After a failed read, the keys are read again at most this often.
pub const RETRY_UNREACHABLE: Duration = Duration::from_secs(2);

/// Why a token stands for no one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unverified {
    /// The token is not valid: the caller must present another (401).
    #[error("{0}")]
    Refused(String),
    /// The provider's keys cannot be read: nobody can tell yet (503).
    #[error("the identity provider's keys cannot be read: {0}")]
    ProviderUnavailable(String),
}

/// Asymmetric signatures only: a JWKS is public, so a shared secret in it would let anyone
/// sign.
const ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Validates tokens of one identity provider.
pub struct JwtVerifier {
    source: Source,
    http: reqwest::Client,
    keys: RwLock<JwkSet>,
    /// When the last read of the keys for a token naming an unknown one ended (`None`:
    /// none since start); held while one is under way.
    refreshed: Mutex<Option<Instant>>,
    /// Why the last read failed, while it stands.
    unavailable: RwLock<Option<String>>,
    issuer: Option<String>,
    audience: Option<String>,
    roles_claim: String,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("source", &self.source)
            .field("issuer", &self.issuer)
            .finish()
    }
}

impl JwtVerifier {
    /// Reads the JWKS at `jwks` (an `http(s)://` URL or a file path). A file that cannot be
    /// read is an error; a URL that cannot be read yet is read again when tokens come.
    pub async fn load(
        jwks: &str,
        issuer: Option<String>,
        audience: Option<String>,
        roles_claim: String,
        http: reqwest::Client,
    ) -> Result<Self, String> {
        let source = if jwks.starts_with("http://") || jwks.starts_with("https://") {
            Source::Url(jwks.to_owned())
        } else {
            Source::File(PathBuf::from(jwks))
        };
        let (keys, refreshed, unavailable) = match fetch(&source, &http).await {
            Ok(keys) => (keys, None, None),
            Err(e) if matches!(source, Source::Url(_)) => {
                tracing::warn!(
                    error = %e,
                    "the identity provider's keys cannot be read yet: its tokens are answered \
                     503 until they can (API keys work)"
                );
                (JwkSet { keys: Vec::new() }, Some(Instant::now()), Some(e))
            }
            Err(e) => return Err(e),
        };
        Ok(Self {
            source,
            http,
            keys: RwLock::new(keys),
            refreshed: Mutex::new(refreshed),
            unavailable: RwLock::new(unavailable),
            issuer,
            audience,
            roles_claim,
        })
    }

    /// The principal a token stands for, or why it does not stand for one.
    pub async fn verify(&self, token: &str) -> Result<Principal, Unverified> {
        let refused = Unverified::Refused;
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| refused(format!("not a JWT: {e}")))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(refused(format!(
                "tokens signed with {:?} are not accepted",
                header.alg
            )));
        }
        let key = self.key(header.kid.as_deref()).await?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = 30;
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
        }
        match &self.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<Json>(token, &key, &validation)
            .map_err(|e| refused(format!("the token is not valid: {e}")))?;
        let claims = data.claims;
        let subject = claims["sub"].as_str().unwrap_or_default().to_owned();
        let names = |claim: &Json| -> Vec<String> {
            match claim {
                Json::Array(items) => items
                    .iter()
                    .filter_map(|i| i.as_str().map(str::to_owned))
                    .collect(),
                Json::String(text) => text.split_whitespace().map(str::to_owned).collect(),
                _ => Vec::new(),
            }
        };
        let roles: BTreeSet<PlatformRole> = names(&claims[self.roles_claim.as_str()])
            .iter()
            .filter_map(|name| role_named(name))
            .collect();
        if roles.is_empty() {
            return Err(refused(format!(
                "the token of {subject} grants no platform role in its {:?} claim",
                self.roles_claim
            )));
        }
        let datasets = claims
            .get("datasets")
            .map(|d| names(d).into_iter().collect());
        Ok(Principal {
            subject,
            roles,
            datasets,
        })
    }

    /// The key `kid` names (the only key when the token names none), reading the JWKS
    /// again when it is not known yet — the provider rotated its keys, or could not be read
    /// before.
    async fn key(&self, kid: Option<&str>) -> Result<DecodingKey, Unverified> {
        if let Some(key) = self.known(kid).map_err(Unverified::Refused)? {
            return Ok(key);
        }
        let unavailable = || {
            self.unavailable
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .map(Unverified::ProviderUnavailable)
        };
        // While the provider is down, a token does not queue behind another's read of its
        // keys (a provider that does not answer holds one for the client's whole timeout).
        let mut refreshed = match self.refreshed.try_lock() {
            Ok(guard) => guard,
            Err(_) => match unavailable() {
                Some(down) => return Err(down),
                None => self.refreshed.lock().await,
            },
        };
        let wait = if unavailable().is_some() {
            RETRY_UNREACHABLE
        } else {
            REFRESH_EVERY
        };
        if refreshed.is_none_or(|at| at.elapsed() >= wait) {
            let fetched = fetch(&self.source, &self.http).await;
            // From the end of the read: after a slow failure the next still waits its turn.
            *refreshed = Some(Instant::now());
            let mut failure = self.unavailable.write().unwrap_or_else(|e| e.into_inner());
            match fetched {
                Ok(fresh) => {
                    *self.keys.write().unwrap_or_else(|e| e.into_inner()) = fresh;
                    if failure.take().is_some() {
                        tracing::info!(
                            "the identity provider's keys are read: tokens are verified"
                        );
                    }
                }
                Err(e) => *failure = Some(e),
            }
        }
        if let Some(down) = unavailable() {
            return Err(down);
        }
        drop(refreshed);
        self.known(kid)
            .map_err(Unverified::Refused)?
            .ok_or_else(|| {
                Unverified::Refused(format!(
                    "the token's key {kid:?} is not one the identity provider publishes"
                ))
            })
    }

    fn known(&self, kid: Option<&str>) -> Result<Option<DecodingKey>, String> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let jwk = match kid {
            Some(kid) => keys.find(kid),
            None if keys.keys.len() == 1 => keys.keys.first(),
            None => return Err("the token names no key (kid), and there are several".to_owned()),
        };
        match jwk {
            None => Ok(None),
            Some(jwk) if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) => {
                Err("the JWKS holds a shared secret; only public keys are accepted".to_owned())
            }
            Some(jwk) => DecodingKey::from_jwk(jwk)
                .map(Some)
                .map_err(|e| format!("the JWKS key is unusable: {e}")),
        }
    }
}

fn role_named(name: &str) -> Option<PlatformRole> {
    match name.to_ascii_lowercase().replace('_', "-").as_str() {
        "producer" => Some(PlatformRole::Producer),
        "data-scientist" => Some(PlatformRole::DataScientist),
        "approver" => Some(PlatformRole::Approver),
        "sre" => Some(PlatformRole::Sre),
        "admin" => Some(PlatformRole::Admin),
        _ => None,
    }
}

async fn fetch(source: &Source, http: &reqwest::Client) -> Result<JwkSet, String> {
    let text = match source {
        Source::File(path) => {
            std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?
        }
        Source::Url(url) => http
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| format!("{url}: {e}"))?
            .text()
            .await
            .map_err(|e| format!("{url}: {e}"))?,
    };
    serde_json::from_str(&text).map_err(|e| format!("not a JWKS: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    fn base64url(bytes: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b))
                << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    /// An identity provider's key: its JWK (public) and its signing key.
    fn provider_key(kid: &str) -> (Json, EncodingKey) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let point = key.public_key_raw();
        assert_eq!(
            (point.len(), point[0]),
            (65, 4),
            "an uncompressed P-256 point"
        );
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
                         "x": base64url(&point[1..33]), "y": base64url(&point[33..])});
        let signing = EncodingKey::from_ec_der(&key.serialize_der());
        (jwk, signing)
    }

    fn token(key: &EncodingKey, kid: &str, claims: Json) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    #[tokio::test]
    async fn tokens_of_the_provider_become_principals_and_others_are_refused() {
        let (jwk, signing) = provider_key("k1");
        let (_, stranger) = provider_key("k1");
        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, json!({"keys": [jwk]}).to_string()).unwrap();
        let verifier = JwtVerifier::load(
            jwks.to_str().unwrap(),
            Some("https://idp.example".into()),
            Some("mlops".into()),
            "roles".into(),
            reqwest::Client::builder().build().unwrap(),
        )
        .await
        .unwrap();
        let claims = |extra: Json| {
            let mut c = json!({"sub": "alice", "iss": "https://idp.example", "aud": "mlops",
                               "exp": now() + 600, "roles": ["data_scientist", "unknown"]});
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
            c
        };

        let alice = verifier
            .verify(&token(&signing, "k1", claims(json!({}))))
            .await
            .unwrap();
        assert_eq!(alice.subject, "alice");
        assert_eq!(alice.roles, BTreeSet::from([PlatformRole::DataScientist]));
        assert_eq!(alice.datasets, None);
        let scoped = verifier
            .verify(&token(
                &signing,
                "k1",
                claims(json!({"roles": "producer", "datasets": ["payments"]})),
            ))
            .await
            .unwrap();
        assert_eq!(scoped.roles, BTreeSet::from([PlatformRole::Producer]));
        assert_eq!(
            scoped.datasets,
            Some(BTreeSet::from(["payments".to_owned()]))
        );

        for (why, bad) in [
            (
                "expired",
                token(&signing, "k1", claims(json!({"exp": now() - 3600}))),
            ),
            (
                "other issuer",
                token(&signing, "k1", claims(json!({"iss": "https://evil"}))),
            ),
            (
                "other audience",
                token(&signing, "k1", claims(json!({"aud": "elsewhere"}))),
            ),
            (
                "no role",
                token(&signing, "k1", claims(json!({"roles": ["guest"]}))),
            ),
            ("unknown key", token(&signing, "k9", claims(json!({})))),
            ("forged", token(&stranger, "k1", claims(json!({})))),
            ("garbage", "not.a.jwt".to_owned()),
        ] {
            let refused = verifier.verify(&bad).await;
            assert!(refused.is_err(), "{why} was accepted");
        }
    }

    /// An identity provider's JWKS URL, as OIDC providers publish it: keys are fetched
    /// over HTTP, and a token signed with a key the provider rotated in (an unknown `kid`)
    /// makes the verifier read the URL again — once, not for every token.
    #[tokio::test]
    async fn keys_are_read_from_the_providers_url_and_again_after_a_rotation() {
        use std::sync::{
            Arc, Mutex,
            atomic::{AtomicUsize, Ordering},
        };
        let (first, first_key) = provider_key("k1");
        let (second, second_key) = provider_key("k2");
        let published = Arc::new(Mutex::new(vec![first]));
        let fetches = Arc::new(AtomicUsize::new(0));
        let app = {
            let (published, fetches) = (published.clone(), fetches.clone());
            axum::Router::new().route(
                "/.well-known/jwks.json",
                axum::routing::get(move || {
                    let keys = published.lock().unwrap().clone();
                    fetches.fetch_add(1, Ordering::SeqCst);
                    async move { axum::Json(json!({ "keys": keys })) }
                }),
            )
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        #[allow(clippy::disallowed_methods)] // the provider, outside the platform
        tokio::spawn(async move { axum::serve(listener, app).await });
        let verifier = JwtVerifier::load(
            &url,
            None,
            None,
            "roles".into(),
            reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(5))
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
        let claims = json!({"sub": "bob", "exp": now() + 600, "roles": ["sre"]});
        for _ in 0..3 {
            let bob = verifier
                .verify(&token(&first_key, "k1", claims.clone()))
                .await
                .unwrap();
            assert_eq!(bob.subject, "bob");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1, "read once at start");

        published.lock().unwrap().push(second);
        let rotated = verifier
            .verify(&token(&second_key, "k2", claims.clone()))
            .await
            .expect("a key rotated in at the provider");
        assert_eq!(rotated.roles, BTreeSet::from([PlatformRole::Sre]));
        assert_eq!(
            fetches.load(Ordering::SeqCst),
            2,
            "read again for the new kid"
        );
        verifier
            .verify(&token(&second_key, "k2", claims))
            .await
            .unwrap();
        assert_eq!(fetches.load(Ordering::SeqCst), 2, "and then known");
        // A made-up key right after is refused without asking the provider again.
        let (_, stranger) = provider_key("k9");
        let refused = verifier
            .verify(&token(
                &stranger,
                "k9",
                json!({"sub": "eve", "exp": now() + 600}),
            ))
            .await;
        assert!(refused.is_err());
        assert_eq!(
            fetches.load(Ordering::SeqCst),
            2,
            "refreshes are rate-limited"
        );
    }

    /// An identity provider that starts after the service (one `docker compose up`): the
    /// service starts anyway, its tokens are answered "unavailable" (not "refused") while
    /// the provider is down, and accepted once it is up, without a restart. A JWKS file
    /// that cannot be read is still an error at start: no one else will fix it.
    #[tokio::test]
    async fn a_provider_down_at_start_is_read_once_it_is_up() {
        let (jwk, signing) = provider_key("k1");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let url = format!("http://{addr}/.well-known/jwks.json");
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .build()
            .unwrap();
        let verifier = JwtVerifier::load(&url, None, None, "roles".into(), http.clone())
            .await
            .expect("a provider not up yet does not stop the start");
        let claims = json!({"sub": "bob", "exp": now() + 600, "roles": ["sre"]});
        let bobs = token(&signing, "k1", claims);
        match verifier.verify(&bobs).await {
            Err(Unverified::ProviderUnavailable(reason)) => {
                assert!(reason.contains(&url), "{reason}")
            }
            other => panic!("while the provider is down: {other:?}"),
        }
        // While one read of a provider known to be down is under way (it may hang for the
        // client's whole timeout), other tokens are answered at once, not queued behind it.
        *verifier.unavailable.write().unwrap() = Some("no answer".into());
        let reading = verifier.refreshed.lock().await;
        let answered = tokio::time::timeout(Duration::from_secs(1), verifier.verify(&bobs)).await;
        assert!(
            matches!(answered, Ok(Err(Unverified::ProviderUnavailable(_)))),
            "{answered:?}"
        );
        drop(reading);

        // Meanwhile API keys work, and a token is told to come back, not refused.
        let alice = Principal {
            subject: "alice".into(),
            roles: BTreeSet::from([PlatformRole::Admin]),
            datasets: None,
        };
        let (key, stored) = crate::auth::ApiKeys::issue(alice);
        let auth = crate::auth::Authenticator::new(
            crate::auth::ApiKeys::new(vec![stored]),
            Some(verifier),
        );
        assert_eq!(auth.authenticate(&key).await.unwrap().subject, "alice");
        let unavailable = auth.authenticate(&bobs).await.unwrap_err();
        assert_eq!(
            (unavailable.status, unavailable.code),
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "identity_provider_unavailable"
            )
        );

        let app = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let keys = json!({ "keys": [jwk.clone()] });
                async move { axum::Json(keys) }
            }),
        );
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        #[allow(clippy::disallowed_methods)] // the provider, outside the platform
        tokio::spawn(async move { axum::serve(listener, app).await });
        // Read again at most every RETRY_UNREACHABLE: asked until then, it still says why.
        let deadline = Instant::now() + RETRY_UNREACHABLE * 5;
        let bob = loop {
            match auth.authenticate(&bobs).await {
                Ok(bob) => break bob,
                Err(e)
                    if e.code == "identity_provider_unavailable" && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("once the provider is up: {}", e.reason()),
            }
        };
        assert_eq!(bob.roles, BTreeSet::from([PlatformRole::Sre]));

        let missing = JwtVerifier::load("/nonexistent/jwks.json", None, None, "roles".into(), http)
            .await
            .unwrap_err();
        assert!(missing.contains("/nonexistent/jwks.json"), "{missing}");
    }
}
