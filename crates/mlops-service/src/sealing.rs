//! Encryption at rest: objects (model artifacts, offline feature files, snapshots) sealed
//! with AES-256-GCM under a named key before they reach the object store. The key's name
//! travels in the object's header, so keys rotate: new objects take the current key,
//! older ones open with the key they name, for as long as it is kept.
//!
//! An object is `MLOPSENC1`, the key name's length (one byte), the name, a 96-bit random
//! nonce, then the ciphertext and its tag. The header is authenticated with the content.

use std::{collections::HashMap, path::Path};

use aws_lc_rs::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    rand::{SecureRandom, SystemRandom},
};
use serde::Deserialize;

const MAGIC: &[u8] = b"MLOPSENC1";

/// The keys of a service, and the one new objects are sealed with.
pub struct Sealer {
    current: String,
    keys: HashMap<String, LessSafeKey>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key names only: the keys are secrets.
        let mut names: Vec<&String> = self.keys.keys().collect();
        names.sort();
        f.debug_struct("Sealer")
            .field("current", &self.current)
            .field("keys", &names)
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    /// The name of the key new objects are sealed with.
    current: String,
    /// Every key by name, 32 bytes in hex.
    keys: HashMap<String, String>,
}

impl Sealer {
    /// Reads a keys file: `{"current": "2026-11", "keys": {"2026-11": "<64 hex digits>", ...}}`
    /// (a mounted secret).
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file: KeysFile =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut keys = HashMap::new();
        for (name, hex_key) in &file.keys {
            let bytes = hex::decode(hex_key.trim())
                .ok()
                .filter(|b| b.len() == 32)
                .ok_or_else(|| {
                    format!("{}: key {name:?} is not 32 bytes in hex", path.display())
                })?;
            keys.insert(name.clone(), Self::key(&bytes)?);
        }
        Self::new(file.current, keys).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn key(bytes: &[u8]) -> Result<LessSafeKey, String> {
        UnboundKey::new(&AES_256_GCM, bytes)
            .map(LessSafeKey::new)
            .map_err(|_| "not an AES-256 key".to_owned())
    }

    fn new(current: String, keys: HashMap<String, LessSafeKey>) -> Result<Self, String> {
        if current.is_empty() || current.len() > 255 {
            return Err("the current key needs a name of 1 to 255 bytes".to_owned());
        }
        if !keys.contains_key(&current) {
            return Err(format!("the current key {current:?} is not among the keys"));
        }
        Ok(Self { current, keys })
    }

    /// Seals `plain` under the current key.
    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, String> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| "no randomness for a nonce".to_owned())?;
        let mut out =
            Vec::with_capacity(MAGIC.len() + 1 + self.current.len() + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(MAGIC);
        out.push(self.current.len() as u8);
        out.extend_from_slice(self.current.as_bytes());
        out.extend_from_slice(&nonce);
        let header_len = out.len();
        let mut sealed = plain.to_vec();
        self.keys[&self.current]
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&out[..header_len - NONCE_LEN]),
                &mut sealed,
            )
            .map_err(|_| "sealing failed".to_owned())?;
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// The plain content of a sealed object; objects written before encryption was on
    /// (no header) are returned as they are.
    pub fn open(&self, stored: &[u8]) -> Result<Vec<u8>, String> {
        if !Self::is_sealed(stored) {
            return Ok(stored.to_vec());
        }
        let rest = &stored[MAGIC.len()..];
        let name_len = usize::from(*rest.first().ok_or("truncated encrypted object")?);
        let name = rest
            .get(1..1 + name_len)
            .and_then(|n| std::str::from_utf8(n).ok())
            .ok_or("truncated encrypted object")?;
        let key = self.keys.get(name).ok_or_else(|| {
            format!("encrypted with key {name:?}, which this service does not have")
        })?;
        let nonce_at = MAGIC.len() + 1 + name_len;
        let nonce: [u8; NONCE_LEN] = stored
            .get(nonce_at..nonce_at + NONCE_LEN)
            .and_then(|n| n.try_into().ok())
            .ok_or("truncated encrypted object")?;
        let mut content = stored[nonce_at + NONCE_LEN..].to_vec();
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&stored[..nonce_at]),
                &mut content,
            )
            .map_err(|_| {
                format!("cannot decrypt with key {name:?}: the key is not the one it was sealed with, or the object was changed")
            })?;
        Ok(plain.to_vec())
    }

    pub fn is_sealed(stored: &[u8]) -> bool {
        stored.starts_with(MAGIC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(current: &str, keys: &[(&str, u8)]) -> Sealer {
        let keys = keys
            .iter()
            .map(|(name, byte)| ((*name).to_owned(), Sealer::key(&[*byte; 32]).unwrap()))
            .collect();
        Sealer::new(current.to_owned(), keys).unwrap()
    }

    #[test]
    fn sealed_objects_open_with_their_key_and_keys_rotate() {
        let old = sealer("k1", &[("k1", 1)]);
        let sealed = old.seal(b"model weights").unwrap();
        assert!(Sealer::is_sealed(&sealed));
        assert!(
            !sealed.windows(5).any(|w| w == b"model"),
            "the content is not in clear"
        );
        assert_eq!(old.open(&sealed).unwrap(), b"model weights");

        // Rotated: new objects take k2, the old one still opens with k1.
        let rotated = sealer("k2", &[("k1", 1), ("k2", 2)]);
        assert_eq!(rotated.open(&sealed).unwrap(), b"model weights");
        let fresh = rotated.seal(b"new").unwrap();
        assert_eq!(
            old.open(&fresh).unwrap_err(),
            "encrypted with key \"k2\", which this service does not have"
        );
        // A plain object (written before encryption) reads as it is.
        assert_eq!(rotated.open(b"PAR1...").unwrap(), b"PAR1...");
    }

    #[test]
    fn a_wrong_key_or_a_changed_byte_fails_clearly() {
        let sealed = sealer("k1", &[("k1", 1)]).seal(b"features").unwrap();
        let impostor = sealer("k1", &[("k1", 9)]);
        assert!(
            impostor
                .open(&sealed)
                .unwrap_err()
                .contains("not the one it was sealed with")
        );
        let mut changed = sealed.clone();
        *changed.last_mut().unwrap() ^= 1;
        assert!(sealer("k1", &[("k1", 1)]).open(&changed).is_err());
        assert!(sealer("k1", &[("k1", 1)]).open(&sealed[..12]).is_err());
    }

    #[test]
    fn a_keys_file_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        std::fs::write(
            &path,
            format!(
                r#"{{"current": "a", "keys": {{"a": "{}"}}}}"#,
                "ab".repeat(32)
            ),
        )
        .unwrap();
        let sealer = Sealer::from_file(&path).unwrap();
        assert_eq!(sealer.open(&sealer.seal(b"x").unwrap()).unwrap(), b"x");
        std::fs::write(&path, r#"{"current": "b", "keys": {"a": "00"}}"#).unwrap();
        assert!(
            Sealer::from_file(&path)
                .unwrap_err()
                .contains("not 32 bytes")
        );
    }
}
