//! Segment seals: the ledger key's signature over a segment's bytes, checked chunk by chunk as SQL reads them.
//!
//! A stamp ties a segment to the chain (its last entry hash), but whoever can
//! write the columnar directory can rewrite rows and copy the stamp. The seal
//! is a sidecar file beside each segment holding the BLAKE3 of every
//! [`SEAL_CHUNK_BYTES`] chunk of the Parquet file, signed with the ledger's
//! checkpoint key. [`SealedFiles`] is the object store DataFusion reads
//! segments through: it hashes each chunk a query touches and refuses bytes
//! that differ. Opening thus costs one signature check per segment, and a
//! query a hash of what it reads, not of the whole copy. The format is in
//! docs/FORMAT.md, section 13.

use std::collections::HashMap;
use std::fmt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::object_store::local::LocalFileSystem;
use datafusion::object_store::path::Path as ObjectPath;
use datafusion::object_store::{
    self, CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use docket_ledger::chain::hex;
use docket_ledger::store::Store;
use docket_schemas::{decode_base64, encode_base64, key_id};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use futures::stream::{self, BoxStream, StreamExt};
use serde::{Deserialize, Serialize};

use crate::QueryError;

/// The `format` a seal file declares.
pub const SEAL_FORMAT: &str = "docket.segment.seal/1";
/// Bytes per hashed chunk: a read is widened to whole chunks, so this bounds the extra bytes read and hashed per range.
pub const SEAL_CHUNK_BYTES: u64 = 64 * 1024;
/// Chunk sizes a seal may declare: a huge chunk would make every small read hash it whole.
pub const SEAL_CHUNK_BYTES_RANGE: std::ops::RangeInclusive<u64> = 4096..=(16 << 20);
/// Largest seal file read (about 70 characters a chunk): anything larger is refused unread.
pub const SEAL_FILE_BYTES_MAX: u64 = 16 << 20;
/// The first line of the signed statement, which names what is signed.
const STATEMENT_HEADER: &str = "docket segment seal v1";

/// A seal file as stored: JSON, beside `events-F-L.parquet` as `events-F-L.seal`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentSeal {
    pub format: String,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Hex of the chain's entry hash at `last_seq`.
    pub last_entry_hash: String,
    pub file_bytes: u64,
    pub chunk_bytes: u64,
    /// Hex BLAKE3 of each chunk of the file, in order; the last may be short.
    pub chunks: Vec<String>,
    /// Key id of the ledger key that signed.
    pub key_id: String,
    /// Base64 ed25519 signature over [`SegmentSeal::statement`].
    pub signature: String,
}

/// A seal whose signature verified: the chunk hashes a read is compared with.
#[derive(Debug)]
pub struct CheckedSeal {
    chunks: Vec<[u8; 32]>,
    chunk_bytes: u64,
    file_bytes: u64,
}

/// Where a segment's seal lives.
pub fn seal_path(segment: &Path) -> PathBuf {
    segment.with_extension("seal")
}

fn chunk_hashes(bytes: &[u8], chunk_bytes: u64) -> Vec<[u8; 32]> {
    bytes
        .chunks(chunk_bytes as usize)
        .map(|c| *blake3::hash(c).as_bytes())
        .collect()
}

/// The text the ledger key signs: every field that says what the bytes are, one per line.
fn statement(
    first: u64,
    last: u64,
    last_hash: &str,
    file_bytes: u64,
    chunk_bytes: u64,
    chunks: &[[u8; 32]],
) -> Vec<u8> {
    let mut all = blake3::Hasher::new();
    for c in chunks {
        all.update(c);
    }
    format!(
        "{STATEMENT_HEADER}\nfirst_seq {first}\nlast_seq {last}\nlast_entry_hash {last_hash}\n\
         file_bytes {file_bytes}\nchunk_bytes {chunk_bytes}\nchunks {}\n",
        all.finalize().to_hex()
    )
    .into_bytes()
}

impl SegmentSeal {
    /// Seals a segment's exact bytes with the ledger key.
    pub fn make(
        bytes: &[u8],
        first: u64,
        last: u64,
        last_hash: &str,
        key: &SigningKey,
    ) -> SegmentSeal {
        let chunks = chunk_hashes(bytes, SEAL_CHUNK_BYTES);
        let file_bytes = bytes.len() as u64;
        let text = statement(
            first,
            last,
            last_hash,
            file_bytes,
            SEAL_CHUNK_BYTES,
            &chunks,
        );
        SegmentSeal {
            format: SEAL_FORMAT.into(),
            first_seq: first,
            last_seq: last,
            last_entry_hash: last_hash.into(),
            file_bytes,
            chunk_bytes: SEAL_CHUNK_BYTES,
            chunks: chunks.iter().map(|c| hex(c)).collect(),
            key_id: key_id(key.verifying_key().as_bytes()),
            signature: encode_base64(&key.sign(&text).to_bytes()),
        }
    }

    /// Reads the seal beside `segment`; `None` when there is none.
    pub fn read(segment: &Path) -> Result<Option<SegmentSeal>, String> {
        let path = seal_path(segment);
        // Looked at before opening: opening a FIFO would block, and a device has no length.
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        if !meta.is_file() {
            return Err(format!("its seal {} is not a regular file", path.display()));
        }
        if meta.len() > SEAL_FILE_BYTES_MAX {
            return Err(format!(
                "its seal is {} bytes, more than the {SEAL_FILE_BYTES_MAX} a seal may be",
                meta.len()
            ));
        }
        let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        // Bounded again while reading: the file may have grown since it was looked at.
        let mut text = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(file, SEAL_FILE_BYTES_MAX + 1),
            &mut text,
        )
        .map_err(|e| format!("{}: {e}", path.display()))?;
        if text.len() as u64 > SEAL_FILE_BYTES_MAX {
            return Err(format!(
                "its seal is more than the {SEAL_FILE_BYTES_MAX} bytes a seal may be"
            ));
        }
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| format!("its seal is not a seal ({e})"))
    }

    /// Checks the signature with the ledger key and that the seal describes this segment's stamp.
    pub fn check(
        &self,
        first: u64,
        last: u64,
        last_hash: &str,
        ledger_key: &VerifyingKey,
    ) -> Result<CheckedSeal, String> {
        if self.format != SEAL_FORMAT {
            return Err(format!(
                "its seal's format {:?} is not {SEAL_FORMAT:?}",
                self.format
            ));
        }
        if (self.first_seq, self.last_seq, self.last_entry_hash.as_str())
            != (first, last, last_hash)
        {
            return Err(format!(
                "its seal is for seqs {}..={} ending on {}, not this segment",
                self.first_seq, self.last_seq, self.last_entry_hash
            ));
        }
        if !SEAL_CHUNK_BYTES_RANGE.contains(&self.chunk_bytes) {
            return Err(format!(
                "its seal's chunk size {} is outside {SEAL_CHUNK_BYTES_RANGE:?}",
                self.chunk_bytes
            ));
        }
        if self.chunks.len() as u64 != self.file_bytes.div_ceil(self.chunk_bytes) {
            return Err(format!(
                "its seal lists {} chunks for {} bytes",
                self.chunks.len(),
                self.file_bytes
            ));
        }
        let chunks = self
            .chunks
            .iter()
            .map(|h| parse_hash(h))
            .collect::<Option<Vec<_>>>()
            .ok_or("its seal holds a chunk hash that is not 64 hex digits")?;
        let signature = decode_base64(&self.signature)
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .map(|b| Signature::from_bytes(&b))
            .ok_or("its seal's signature is not base64 of 64 bytes")?;
        let text = statement(
            self.first_seq,
            self.last_seq,
            &self.last_entry_hash,
            self.file_bytes,
            self.chunk_bytes,
            &chunks,
        );
        ledger_key.verify(&text, &signature).map_err(|_| {
            format!(
                "its seal is not signed by the ledger key {} (signed as {})",
                key_id(ledger_key.as_bytes()),
                self.key_id
            )
        })?;
        Ok(CheckedSeal {
            chunks,
            chunk_bytes: self.chunk_bytes,
            file_bytes: self.file_bytes,
        })
    }
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl CheckedSeal {
    /// Reads `range` of the file at `path`, widened to whole chunks, and checks every chunk it covers.
    pub fn read_checked(
        &self,
        path: &Path,
        range: std::ops::Range<u64>,
    ) -> Result<bytes::Bytes, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let len = file
            .metadata()
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        if len != self.file_bytes {
            return Err(format!(
                "{} is {len} bytes but was sealed at {}: changed after the ledger sealed it",
                path.display(),
                self.file_bytes
            ));
        }
        if range.start > range.end || range.end > len {
            return Err(format!(
                "bytes {range:?} are outside {} ({len} bytes)",
                path.display()
            ));
        }
        let first_chunk = range.start / self.chunk_bytes;
        let start = first_chunk * self.chunk_bytes;
        let end = range
            .end
            .div_ceil(self.chunk_bytes)
            .saturating_mul(self.chunk_bytes)
            .min(len);
        let mut buf = vec![0u8; (end - start) as usize];
        file.read_exact_at(&mut buf, start)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        for (i, chunk) in buf.chunks(self.chunk_bytes as usize).enumerate() {
            let n = first_chunk as usize + i;
            if self.chunks.get(n) != Some(blake3::hash(chunk).as_bytes()) {
                return Err(format!(
                    "{}: bytes {}..{} were changed after the ledger sealed it (run `docket columnar check`)",
                    path.display(),
                    n as u64 * self.chunk_bytes,
                    n as u64 * self.chunk_bytes + chunk.len() as u64
                ));
            }
        }
        Ok(bytes::Bytes::from(buf)
            .slice((range.start - start) as usize..(range.end - start) as usize))
    }

    /// Checks the whole file against the seal.
    pub fn check_file(&self, path: &Path) -> Result<(), String> {
        self.read_checked(path, 0..self.file_bytes).map(|_| ())
    }
}

/// The ledger key seals are checked with: the one the store records, which a sealing key must match.
pub fn ledger_key(store: &Store, sealer: Option<&SigningKey>) -> Result<VerifyingKey, QueryError> {
    let recorded = store.ledger_key()?;
    if let Some(key) = sealer.filter(|k| k.verifying_key() != recorded) {
        return Err(QueryError::LedgerKey(format!(
            "the given ledger key is {} but this ledger's checkpoint key is {}",
            key_id(key.verifying_key().as_bytes()),
            key_id(recorded.as_bytes())
        )));
    }
    Ok(recorded)
}

/// The object store DataFusion reads sealed segments through: only the files it was given, each checked as read.
#[derive(Debug)]
pub struct SealedFiles {
    local: LocalFileSystem,
    files: HashMap<ObjectPath, (PathBuf, Arc<CheckedSeal>)>,
}

/// The URL [`SealedFiles`] is registered under (it stands in for the local file system).
pub fn store_url() -> ObjectStoreUrl {
    ObjectStoreUrl::local_filesystem()
}

impl SealedFiles {
    pub fn new(files: HashMap<ObjectPath, (PathBuf, Arc<CheckedSeal>)>) -> SealedFiles {
        SealedFiles {
            local: LocalFileSystem::new(),
            files,
        }
    }
}

impl fmt::Display for SealedFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedFiles({} segments)", self.files.len())
    }
}

const STORE_NAME: &str = "docket sealed segments";

fn refused(why: String) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE_NAME,
        source: why.into(),
    }
}

fn read_only() -> object_store::Error {
    refused("the columnar copy is read-only to SQL".into())
}

#[async_trait::async_trait]
impl ObjectStore for SealedFiles {
    async fn put_opts(
        &self,
        _: &ObjectPath,
        _: PutPayload,
        _: PutOptions,
    ) -> object_store::Result<PutResult> {
        Err(read_only())
    }

    async fn put_multipart_opts(
        &self,
        _: &ObjectPath,
        _: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        Err(read_only())
    }

    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if options.head {
            return self.local.get_opts(location, options).await;
        }
        let (path, seal) = self.files.get(location).cloned().ok_or_else(|| {
            refused(format!(
                "{location} is not a sealed segment of this session"
            ))
        })?;
        let range = match &options.range {
            None => 0..seal.file_bytes,
            Some(r) => r
                .as_range(seal.file_bytes)
                .map_err(|e| refused(e.to_string()))?,
        };
        let meta = self
            .local
            .get_opts(
                location,
                GetOptions {
                    head: true,
                    ..GetOptions::default()
                },
            )
            .await?
            .meta;
        let wanted = range.clone();
        let bytes = tokio::task::spawn_blocking(move || seal.read_checked(&path, wanted))
            .await
            .map_err(|e| refused(e.to_string()))?
            .map_err(refused)?;
        Ok(GetResult {
            payload: GetResultPayload::Stream(stream::once(async move { Ok(bytes) }).boxed()),
            meta,
            range,
            attributes: Default::default(),
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjectPath>> {
        locations.map(|_| Err(read_only())).boxed()
    }

    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.local.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        self.local.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        _: &ObjectPath,
        _: &ObjectPath,
        _: CopyOptions,
    ) -> object_store::Result<()> {
        Err(read_only())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    #[test]
    fn a_seal_checks_with_its_key_and_nothing_else() {
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let seal = SegmentSeal::make(&bytes, 1, 16, "ab", &key());
        assert_eq!(seal.chunks.len(), 4);
        let vk = key().verifying_key();
        assert!(seal.check(1, 16, "ab", &vk).is_ok());
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        let err = seal.check(1, 16, "ab", &other).expect_err("another key");
        assert!(err.contains("not signed by the ledger key"), "{err}");
        let err = seal.check(1, 17, "ab", &vk).expect_err("another range");
        assert!(err.contains("not this segment"), "{err}");
        // A chunk hash swapped for that of edited bytes breaks the signature.
        let mut edited = seal.clone();
        edited.chunks[2] = hex(blake3::hash(b"edited").as_bytes());
        assert!(edited.check(1, 16, "ab", &vk).is_err());
        let mut short = seal.clone();
        short.chunks.pop();
        assert!(
            short
                .check(1, 16, "ab", &vk)
                .expect_err("short")
                .contains("chunks")
        );
    }

    #[test]
    fn reads_are_checked_chunk_by_chunk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events-1-16.parquet");
        let mut bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).expect("write");
        let seal = SegmentSeal::make(&bytes, 1, 16, "ab", &key())
            .check(1, 16, "ab", &key().verifying_key())
            .expect("check");
        let got = seal.read_checked(&path, 70_000..70_010).expect("read");
        assert_eq!(&got[..], &bytes[70_000..70_010]);
        seal.check_file(&path).expect("whole file");
        // One byte changed in the third chunk: a read there fails, a read elsewhere does not.
        bytes[140_000] ^= 1;
        std::fs::write(&path, &bytes).expect("write");
        let err = seal
            .read_checked(&path, 139_990..140_001)
            .expect_err("edited");
        assert!(err.contains("bytes 131072..196608 were changed"), "{err}");
        assert!(seal.read_checked(&path, 0..10).is_ok());
        assert!(seal.check_file(&path).is_err());
        // A longer file is refused whatever is read.
        bytes.push(0);
        std::fs::write(&path, &bytes).expect("write");
        let err = seal.read_checked(&path, 0..10).expect_err("longer");
        assert!(err.contains("changed after the ledger sealed it"), "{err}");
    }
}
