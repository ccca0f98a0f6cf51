//! Compressed landing files (`.gz`, `.zst`).
//!
//! A gzip or zstd stream has no random access: a worker cannot start reading in the middle.
//! So a compressed file is decompressed **once**, when it is sliced, into a spool file of its
//! decompressed text; the slicer cuts the spool like any plain file and workers read their
//! byte ranges from it. Batch ids are still derived from the compressed file (its path, size
//! and the slice's rows), and errors name the compressed file with the line in the
//! decompressed text (`orders.csv.gz:1234`).
//!
//! **Where.** The spool folder is `source.spool`, or by default `_sluice_spool` beside each
//! compressed file: on the same file system as the landing files, so every machine whose
//! workers read the landing folder reads the spool too, and inside the folder the spec names.
//! Its files start with `_`, so discovery never takes them in, whatever the glob.
//!
//! **Naming and races.** A spool file is named by the compressed file's name and a hash of
//! its path, size and modification time, so a worker finds it from the slice alone and a
//! replaced file never reuses an old spool. Decompression writes a temporary file, syncs it
//! and renames it into place: a reader sees a whole spool or none, and two processes spooling
//! the same file at once write the same bytes. A spool that is gone (cleaned up, a machine
//! that lost it) is made again from the compressed file on first read: the spool is a cache.
//!
//! **Broken streams.** A truncated or corrupt stream is refused as a whole: nothing of the
//! file is spooled or published, and its single batch is quarantined with the reason (how
//! many compressed bytes were read) so the file can be landed again complete.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use crate::source::SourceError;
use crate::spec::Compression;

/// The spool folder's default name, beside the compressed files.
pub const SPOOL_DIR: &str = "_sluice_spool";

/// Counts the compressed bytes a decoder has consumed, for the truncation message.
struct Counted<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The decompressed text of `path`, as a stream, and a counter of compressed bytes read.
fn decoder(
    path: &str,
    compression: Compression,
) -> Result<(Box<dyn Read + Send>, Arc<AtomicU64>), SourceError> {
    let file = File::open(path).map_err(|e| SourceError::io(path, e))?;
    let read = Arc::new(AtomicU64::new(0));
    let counted = BufReader::with_capacity(
        1 << 16,
        Counted {
            inner: file,
            read: read.clone(),
        },
    );
    let stream: Box<dyn Read + Send> = match compression {
        // Several gzip members one after another (`cat a.gz b.gz`) are one text, as gunzip reads it.
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(counted)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(counted)
                .map_err(|e| SourceError::io(path, e))?,
        ),
        Compression::None => Box::new(counted),
    };
    Ok((stream, read))
}

/// The error for a stream that broke off after `compressed` bytes.
fn broken(
    path: &str,
    compression: Compression,
    compressed: u64,
    out: u64,
    e: &std::io::Error,
) -> SourceError {
    let what = compression.name();
    let reason = if e.kind() == std::io::ErrorKind::UnexpectedEof {
        format!(
            "truncated {what} stream after {compressed} compressed bytes ({out} bytes decompressed): the file is incomplete; land it again, complete"
        )
    } else {
        format!(
            "corrupt {what} stream after {compressed} compressed bytes ({out} bytes decompressed): {e}; land the file again"
        )
    };
    SourceError::bad(path, None, format!("{reason}; nothing of it was published"))
}

/// A reader of the whole decompressed text, for inferring columns from a sample.
pub fn open_text(
    path: &str,
    compression: Compression,
) -> Result<Box<dyn Read + Send>, SourceError> {
    Ok(decoder(path, compression)?.0)
}

/// Where the spool of `path` lives, for its current size and modification time.
pub fn spool_path(path: &str, dir: Option<&Path>) -> Result<PathBuf, SourceError> {
    let meta = std::fs::metadata(path).map_err(|e| SourceError::io(path, e))?;
    let modified_ms = meta
        .modified()
        .ok()
        .and_then(|m| m.duration_since(std::time::SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let original = Path::new(path);
    let name = original
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let hash = hex::encode(Sha256::digest(
        format!("{path}\0{}\0{modified_ms}", meta.len()).as_bytes(),
    ));
    let folder = match dir {
        Some(d) => d.to_path_buf(),
        None => original.parent().unwrap_or(Path::new(".")).join(SPOOL_DIR),
    };
    Ok(folder.join(format!("_{name}.{}", &hash[..16])))
}

/// The spool of a compressed file: made now (one pass over the stream) unless it exists.
pub fn ensure(
    path: &str,
    compression: Compression,
    dir: Option<&Path>,
) -> Result<PathBuf, SourceError> {
    let target = spool_path(path, dir)?;
    if target.is_file() {
        return Ok(target);
    }
    let folder = target.parent().unwrap_or(Path::new("."));
    let spool_err = |e: std::io::Error| SourceError::Io {
        file: format!("{} (spool of {path})", folder.display()),
        source: e,
    };
    std::fs::create_dir_all(folder).map_err(spool_err)?;
    let (mut stream, read) = decoder(path, compression)?;
    let tmp = folder.join(format!(
        ".{}.{}.{}.tmp",
        target
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default(),
        std::process::id(),
        sluice_core::now_millis()
    ));
    let result = (|| {
        let file = File::create(&tmp).map_err(spool_err)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut buf = vec![0u8; 1 << 20];
        let mut written = 0u64;
        loop {
            let n = match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(broken(
                        path,
                        compression,
                        read.load(Ordering::Relaxed),
                        written,
                        &e,
                    ));
                }
            };
            out.write_all(&buf[..n]).map_err(spool_err)?;
            written += n as u64;
        }
        let file = out.into_inner().map_err(|e| spool_err(e.into_error()))?;
        // Synced before the rename: after a crash the spool is whole or absent, never short.
        file.sync_all().map_err(spool_err)?;
        std::fs::rename(&tmp, &target).map_err(spool_err)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|_| target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gzip(text: &str) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(text.as_bytes()).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gzip_and_zstd_spool_to_their_text_once() {
        let dir = tempfile::tempdir().unwrap();
        let text = "id\n1\n2\n";
        let gz = dir.path().join("a.csv.gz");
        std::fs::write(&gz, gzip(text)).unwrap();
        let zs = dir.path().join("a.csv.zst");
        std::fs::write(&zs, zstd::encode_all(text.as_bytes(), 3).unwrap()).unwrap();
        for (p, c) in [(&gz, Compression::Gzip), (&zs, Compression::Zstd)] {
            let p = p.display().to_string();
            let spool = ensure(&p, c, None).unwrap();
            assert_eq!(std::fs::read_to_string(&spool).unwrap(), text);
            assert!(spool.starts_with(dir.path().join(SPOOL_DIR)));
            let name = spool.file_name().unwrap().to_string_lossy().to_string();
            assert!(name.starts_with('_'), "{name}");
            // A second call finds it.
            let modified = std::fs::metadata(&spool).unwrap().modified().unwrap();
            assert_eq!(ensure(&p, c, None).unwrap(), spool);
            assert_eq!(
                std::fs::metadata(&spool).unwrap().modified().unwrap(),
                modified
            );
        }
    }

    #[test]
    fn truncated_streams_are_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let text: String = (0..20_000).map(|i| format!("{i},row {i}\n")).collect();
        let full = gzip(&text);
        let gz = dir.path().join("t.csv.gz");
        std::fs::write(&gz, &full[..full.len() / 2]).unwrap();
        let err = ensure(&gz.display().to_string(), Compression::Gzip, None).unwrap_err();
        assert!(
            err.to_string().contains("truncated gzip stream after"),
            "{err}"
        );
        let full = zstd::encode_all(text.as_bytes(), 3).unwrap();
        let zs = dir.path().join("t.csv.zst");
        std::fs::write(&zs, &full[..full.len() / 2]).unwrap();
        let err = ensure(&zs.display().to_string(), Compression::Zstd, None).unwrap_err();
        assert!(err.to_string().contains("zstd stream after"), "{err}");
        let left: Vec<_> = std::fs::read_dir(dir.path().join(SPOOL_DIR))
            .unwrap()
            .collect();
        assert!(
            left.is_empty(),
            "no spool and no temporary file is left: {left:?}"
        );
    }
}
