//! The audit trail's tamper evidence: each record's hash covers its fields and the hash of
//! the record before it in its partition, so changing, removing or reordering a record
//! breaks every link after it. One writer per partition (each service has its own).

use sha2::{Digest, Sha256};

use crate::{AuditOutcome, AuditRecord};

/// `audit.log` partitions: one per service, so each chain has a single writer.
pub const AUDIT_PARTITIONS: i32 = 8;

/// The partition of `service`'s chain.
pub fn audit_partition(service: &str) -> i32 {
    match service {
        "ingestion" => 0,
        "feature" => 1,
        "training" => 2,
        "registry" => 3,
        "serving" => 4,
        "monitoring" => 5,
        _ => 6,
    }
}

impl AuditRecord {
    /// The hash this record must carry: SHA-256 over `prev_hash` and every other field,
    /// each length-prefixed so that no two different records hash the same text.
    pub fn chain_hash(&self) -> String {
        let outcome = match self.outcome {
            AuditOutcome::Success => "success",
            AuditOutcome::Denied => "denied",
            AuditOutcome::Failed => "failed",
        };
        let occurred_at = self.occurred_at.to_string();
        let fields: [Option<&str>; 11] = [
            self.prev_hash.as_deref(),
            Some(&self.audit_id),
            Some(&self.actor),
            self.role.as_deref(),
            Some(&self.action),
            Some(&self.resource),
            Some(outcome),
            self.reason.as_deref(),
            self.source_ip.as_deref(),
            self.trace_id.as_deref(),
            Some(&occurred_at),
        ];
        let mut hasher = Sha256::new();
        for field in fields {
            match field {
                None => hasher.update(b"-"),
                Some(text) => {
                    hasher.update(text.len().to_string().as_bytes());
                    hasher.update(b":");
                    hasher.update(text.as_bytes());
                }
            }
            hasher.update(b"\n");
        }
        hex::encode(hasher.finalize())
    }

    /// Links this record after `previous` (the chain's last hash, `None` at its start).
    pub fn sealed(mut self, previous: Option<String>) -> Self {
        self.prev_hash = previous;
        self.hash = self.chain_hash();
        self
    }
}

/// The first link of a chain that does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    /// Position in the chain (0 is its first record).
    pub index: usize,
    pub audit_id: String,
    pub reason: String,
}

impl std::fmt::Display for BrokenLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "record {} (audit id {}): {}",
            self.index, self.audit_id, self.reason
        )
    }
}

/// Checks one partition's records, in offset order: each hash matches its record, and each
/// record names the hash of the one before it. Returns the number of links checked.
pub fn verify_chain<'r>(
    records: impl IntoIterator<Item = &'r AuditRecord>,
) -> Result<usize, BrokenLink> {
    let mut previous: Option<&str> = None;
    let mut count = 0;
    for (index, record) in records.into_iter().enumerate() {
        let broken = |reason: String| BrokenLink {
            index,
            audit_id: record.audit_id.clone(),
            reason,
        };
        if index > 0 && record.prev_hash.as_deref() != previous {
            return Err(broken(format!(
                "names {:?} as the previous hash, but the record before it hashes to {:?}",
                record.prev_hash, previous
            )));
        }
        let expected = record.chain_hash();
        if record.hash != expected {
            return Err(broken(format!(
                "its fields hash to {expected}, not to the {} it carries: it was changed",
                record.hash
            )));
        }
        previous = Some(&record.hash);
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: usize) -> AuditRecord {
        AuditRecord {
            audit_id: format!("a{n}"),
            actor: "admin".into(),
            role: Some("admin".into()),
            action: "model.transition".into(),
            resource: format!("models/churn/versions/{n}"),
            outcome: AuditOutcome::Success,
            reason: None,
            source_ip: Some("127.0.0.1".into()),
            trace_id: None,
            occurred_at: 1_795_687_200_000 + n as i64,
            prev_hash: None,
            hash: String::new(),
        }
    }

    fn chain(n: usize) -> Vec<AuditRecord> {
        let mut out: Vec<AuditRecord> = Vec::new();
        for i in 0..n {
            let previous = out.last().map(|r| r.hash.clone());
            out.push(record(i).sealed(previous));
        }
        out
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify_chain(&chain(5)), Ok(5));
        assert_eq!(verify_chain(&[]), Ok(0));
    }

    #[test]
    fn a_changed_record_is_the_first_broken_link() {
        let mut records = chain(5);
        records[2].actor = "mallory".into();
        let broken = verify_chain(&records).unwrap_err();
        assert_eq!((broken.index, broken.audit_id.as_str()), (2, "a2"));
        assert!(broken.reason.contains("was changed"), "{broken}");

        // Rehashing the changed record does not help: the next one names the old hash.
        records[2] = records[2].clone().sealed(records[1].prev_hash.clone());
        let mut resealed = chain(5);
        resealed[2].actor = "mallory".into();
        resealed[2] = resealed[2].clone().sealed(Some(resealed[1].hash.clone()));
        let broken = verify_chain(&resealed).unwrap_err();
        assert_eq!(broken.index, 3, "{broken}");
    }

    #[test]
    fn a_removed_or_reordered_record_breaks_the_chain() {
        let mut records = chain(4);
        records.remove(1);
        assert_eq!(verify_chain(&records).unwrap_err().index, 1);
        let mut records = chain(4);
        records.swap(1, 2);
        assert_eq!(verify_chain(&records).unwrap_err().index, 1);
    }

    #[test]
    fn fields_cannot_be_shifted_between_each_other() {
        let mut a = record(0);
        a.actor = "ad".into();
        a.role = Some("min".into());
        let mut b = record(0);
        b.actor = "adm".into();
        b.role = Some("in".into());
        assert_ne!(a.chain_hash(), b.chain_hash());
    }

    proptest::proptest! {
        /// Changing any field of any record of a chain, to anything else, is found at
        /// that record.
        #[test]
        fn any_change_to_any_record_is_found_there(
            len in 1usize..8, at in 0usize..8, field in 0usize..6, text in "\\PC{0,10}",
        ) {
            let mut records = chain(len);
            let at = at % len;
            let r = &mut records[at];
            let before = r.clone();
            match field {
                0 => r.actor = text,
                1 => r.action = text,
                2 => r.resource = text,
                3 => r.reason = Some(text),
                4 => r.source_ip = Some(text),
                _ => r.occurred_at = r.occurred_at.wrapping_add(text.len() as i64 + 1),
            }
            proptest::prop_assume!(*r != before);
            proptest::prop_assert_eq!(verify_chain(&records).unwrap_err().index, at);
        }
    }
}
