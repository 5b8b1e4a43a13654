//! The model artifact: one self-describing file that training writes, the registry stores
//! and serving loads. Its first line is a header — format version, SHA-256 of the rest,
//! an Ed25519 signature over that digest, the signing key's id — and the rest is the
//! artifact as JSON, verbatim: the model (its own serde), the fitted transforms in feature
//! order, the feature view + version and snapshot id it was trained on, and its metrics.
//! Every loader checks the digest and the signature before it deserializes anything, and
//! refuses a tampered file naming what did not match.

use std::{collections::BTreeMap, io::Write, path::Path};

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::FittedState;

/// The artifact format this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// What a trained model is, everything serving needs to use it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelArtifact {
    pub model_name: String,
    /// e.g. `logistic_regression`, `decision_tree`.
    pub algorithm: String,
    /// The trained model, in its own serde form.
    pub model: Json,
    /// `binary_classification`, `multiclass_classification` or `regression`.
    #[serde(default)]
    pub task: String,
    /// A classifier's class names; its outputs follow their order.
    #[serde(default)]
    pub classes: Vec<String>,
    /// Model inputs in order, after the transforms.
    pub features: Vec<String>,
    /// Each raw feature and its fitted transforms, in the order the inputs are built.
    pub transforms: Vec<(String, FittedState)>,
    pub view: String,
    pub view_version: i32,
    pub snapshot_id: String,
    pub metrics: BTreeMap<String, f64>,
    pub created_at: i64,
}

impl ModelArtifact {
    /// The model's input vector for one row, from the raw value of each feature (`raw`
    /// looks one up by name; `None` is a missing value) through this artifact's own fitted
    /// transforms, in the model's input order. Serving's path, and how training scores a
    /// production model on a newer snapshot.
    pub fn inputs(&self, raw: impl Fn(&str) -> Option<Json>) -> Result<Vec<f64>, String> {
        let mut made: BTreeMap<String, Json> = BTreeMap::new();
        for (name, state) in &self.transforms {
            let value = raw(name).unwrap_or(Json::Null);
            made.extend(crate::apply_row(name, state, &value));
        }
        self.features
            .iter()
            .map(|feature| match made.get(feature) {
                Some(Json::Number(n)) => n
                    .as_f64()
                    .ok_or_else(|| format!("{feature}: {n} is not a number")),
                Some(Json::Bool(b)) => Ok(f64::from(u8::from(*b))),
                Some(Json::Null) | None => Err(format!(
                    "{feature} has no value: the feature is missing and has no imputation"
                )),
                Some(other) => Err(format!("{feature}: {other} is not a number")),
            })
            .collect()
    }
}

/// The first line of an artifact file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Header {
    format_version: u32,
    /// SHA-256 of everything after the first line, hex.
    digest: String,
    /// Ed25519 signature of the digest's bytes, hex.
    signature: String,
    /// Which key signed it (see [`key_id`]).
    key_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArtifactError {
    #[error("not a model artifact: {0}")]
    Malformed(String),
    #[error("artifact format {0} is not supported (this build reads {FORMAT_VERSION})")]
    UnsupportedFormat(u32),
    #[error("artifact digest mismatch: the header says sha256 {expected}, the content is {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("artifact signature does not verify with key {key_id}")]
    BadSignature { key_id: String },
}

/// SHA-256 of `bytes`, hex: how artifacts are addressed.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A short, stable name of a public key: the first 16 hex digits of its SHA-256.
pub fn key_id(key: &VerifyingKey) -> String {
    digest(key.as_bytes())[..16].to_owned()
}

/// Signs artifacts with one Ed25519 key.
pub struct Signer {
    key: SigningKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("key_id", &key_id(&self.key.verifying_key()))
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> std::io::Result<Self> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Self {
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// The key kept in `path` (32 secret bytes, hex), created there (readable by its
    /// owner only) when the file does not exist yet.
    pub fn from_secret_file(path: &Path) -> std::io::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = hex::decode(text.trim())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| {
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("{}: not a 32-byte hex Ed25519 secret key", path.display()),
                        )
                    })?;
                Ok(Self {
                    key: SigningKey::from_bytes(&bytes),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let signer = Self::generate()?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                use std::os::unix::fs::OpenOptionsExt;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)?;
                writeln!(file, "{}", hex::encode(signer.key.to_bytes()))?;
                Ok(signer)
            }
            Err(e) => Err(e),
        }
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The artifact file: header line, then the artifact's JSON.
    pub fn seal(&self, artifact: &ModelArtifact) -> Sealed {
        let body = serde_json::to_vec(artifact).expect("an artifact serializes");
        let digest = digest(&body);
        let signature = self.key.sign(digest.as_bytes());
        let header = Header {
            format_version: FORMAT_VERSION,
            digest,
            signature: hex::encode(signature.to_bytes()),
            key_id: key_id(&self.key.verifying_key()),
        };
        let mut file = serde_json::to_vec(&header).expect("a header serializes");
        file.push(b'\n');
        file.extend_from_slice(&body);
        Sealed {
            bytes: file,
            digest: header.digest,
            signature: header.signature,
        }
    }
}

/// A sealed artifact file and what its header says.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub bytes: Vec<u8>,
    /// SHA-256 of the artifact's JSON, hex: its address.
    pub digest: String,
    /// Ed25519 signature of the digest, hex.
    pub signature: String,
}

/// Checks `file`'s digest and signature against `key`, then reads the artifact.
pub fn open(file: &[u8], key: &VerifyingKey) -> Result<ModelArtifact, ArtifactError> {
    let newline = file
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| ArtifactError::Malformed("no header line".into()))?;
    let (header, body) = (&file[..newline], &file[newline + 1..]);
    let header: Header = serde_json::from_slice(header)
        .map_err(|e| ArtifactError::Malformed(format!("header: {e}")))?;
    if header.format_version != FORMAT_VERSION {
        return Err(ArtifactError::UnsupportedFormat(header.format_version));
    }
    let actual = digest(body);
    if actual != header.digest {
        return Err(ArtifactError::DigestMismatch {
            expected: header.digest,
            actual,
        });
    }
    let signature = hex::decode(&header.signature)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .map(|b| Signature::from_bytes(&b))
        .ok_or_else(|| ArtifactError::Malformed("signature is not 64 hex bytes".into()))?;
    key.verify(header.digest.as_bytes(), &signature)
        .map_err(|_| ArtifactError::BadSignature {
            key_id: key_id(key),
        })?;
    serde_json::from_slice(body).map_err(|e| ArtifactError::Malformed(format!("body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact() -> ModelArtifact {
        ModelArtifact {
            model_name: "fraud".into(),
            algorithm: "logistic_regression".into(),
            model: serde_json::json!({"weights": [0.25, -1.5], "intercept": 0.125}),
            task: "binary_classification".into(),
            classes: Vec::new(),
            features: vec!["amount".into(), "currency__EUR".into()],
            transforms: vec![("amount".into(), FittedState::default())],
            view: "spend".into(),
            view_version: 2,
            snapshot_id: "ab12".into(),
            metrics: BTreeMap::from([("roc_auc".to_owned(), 0.91)]),
            created_at: 1_795_687_200_000,
        }
    }

    #[test]
    fn a_sealed_artifact_opens_with_its_key_and_only_with_it() {
        let signer = Signer::generate().unwrap();
        let file = signer.seal(&artifact()).bytes;
        assert_eq!(open(&file, &signer.verifying_key()).unwrap(), artifact());
        let other = Signer::generate().unwrap();
        assert!(matches!(
            open(&file, &other.verifying_key()),
            Err(ArtifactError::BadSignature { .. })
        ));
    }

    #[test]
    fn one_flipped_byte_is_refused_naming_the_digests() {
        let signer = Signer::generate().unwrap();
        let mut file = signer.seal(&artifact()).bytes;
        let last = file.len() - 3;
        file[last] ^= 0x01;
        let refused = open(&file, &signer.verifying_key()).unwrap_err();
        let ArtifactError::DigestMismatch { expected, actual } = &refused else {
            panic!("{refused}");
        };
        assert_ne!(expected, actual);
        assert!(refused.to_string().contains("digest mismatch"), "{refused}");
    }

    #[test]
    fn a_recomputed_digest_does_not_pass_for_a_signature() {
        // Whoever edits the model and fixes the digest still cannot sign it.
        let signer = Signer::generate().unwrap();
        let mut edited = artifact();
        edited.metrics.insert("roc_auc".into(), 0.99);
        let body = serde_json::to_vec(&edited).unwrap();
        let original = signer.seal(&artifact()).bytes;
        let newline = original.iter().position(|b| *b == b'\n').unwrap();
        let mut header: Header = serde_json::from_slice(&original[..newline]).unwrap();
        header.digest = digest(&body);
        let mut forged = serde_json::to_vec(&header).unwrap();
        forged.push(b'\n');
        forged.extend_from_slice(&body);
        assert!(matches!(
            open(&forged, &signer.verifying_key()),
            Err(ArtifactError::BadSignature { .. })
        ));
    }

    #[test]
    fn the_secret_file_is_created_once_and_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/signing.key");
        let first = Signer::from_secret_file(&path).unwrap();
        let again = Signer::from_secret_file(&path).unwrap();
        assert_eq!(first.verifying_key(), again.verifying_key());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
