//! The persisted stat cache: a manifest saved between runs.
//!
//! A restart loads the last manifest of a root and passes it to
//! [`scan`](crate::scan::scan) as the previous one, so files whose stat is unchanged
//! are not read again. The cache is an optimisation, never a source of truth: it is
//! discarded — with a reason the caller logs — when it is missing, truncated,
//! corrupt (a BLAKE3 checksum covers it), from another format version, or was
//! written for another root. Directory hashes are recomputed on load rather than
//! trusted.
//!
//! Layout (little-endian): magic `SDSTATC\x01`, `u32` format version, (since
//! version 2) the manifest's 32-byte root hash, `u32` length + bytes of the root
//! path it was made for, the root directory (below), then a 32-byte BLAKE3 hash
//! of everything before it. The root hash up front lets [`saved_root`] tell which
//! manifest a file holds without decoding it; version 1 files are still read.
//! A directory is its meta (`u32` mode, `i64`+`u32` mtime, `u32` uid, `u32` gid),
//! a `u32` child count, and per child a `u16` name length, the name, a kind byte and:
//! file — `u64` size, `u32` mode, mtime, ctime, `u64` inode, `u8` settled, uid,
//! gid, 32-byte hash; directory — recursively; symlink — `u32` target length,
//! target, mtime, uid, gid.

use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::hash::Hash;
use crate::path::RelPath;
use crate::tree::{Dir, DirMeta, Entry, FileMeta, Kind, Manifest, Node, Owner, StatKey, SymlinkMeta, Timestamp};

const MAGIC: &[u8; 8] = b"SDSTATC\x01";
const VERSION: u32 = 2;
/// The oldest format version still read (it has no root hash in its header).
const OLDEST_VERSION: u32 = 1;
/// The stat cache's file name in a tree's state directory.
pub const CACHE_FILE: &str = "stat.cache";
/// Deeper than any path the path rules accept (4096 bytes make at most 2048 levels).
const MAX_DEPTH: usize = 2100;

/// Why a cache file was not used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot read stat cache {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("stat cache {path} is not usable ({why}); it will be rebuilt by reading every file")]
    Invalid { path: String, why: String },
}

/// Saves `manifest` as the stat cache of `root` at `cache_path`, atomically.
pub fn save(manifest: &Manifest, root: &Path, cache_path: &Path) -> io::Result<()> {
    crate::fsutil::write_atomic_with(cache_path, |file| encode_to(manifest, root, file))
}

/// Loads the stat cache of `root`. `Ok(None)` when there is none yet. The file
/// is read twice through a buffer — once for its checksum, once to decode — and
/// never held whole: that copy was the peak of a restart (~110 bytes per entry
/// on top of the manifest).
pub fn load(cache_path: &Path, root: &Path) -> Result<Option<Manifest>, CacheError> {
    let read_error = |source| CacheError::Read { path: cache_path.display().to_string(), source };
    let invalid = |why| CacheError::Invalid { path: cache_path.display().to_string(), why };
    let mut file = match std::fs::File::open(cache_path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(read_error(source)),
    };
    let len = file.metadata().map_err(read_error)?.len();
    if len < (MAGIC.len() + 4 + 32) as u64 {
        return Err(invalid(format!("truncated: {len} bytes")));
    }
    let mut magic = [0u8; MAGIC.len()];
    io::Read::read_exact(&mut file, &mut magic).map_err(read_error)?;
    if &magic != MAGIC {
        return Err(invalid("not a stagingd stat cache (bad magic)".into()));
    }
    io::Seek::rewind(&mut file).map_err(read_error)?;
    let body = len - 32;
    let mut hasher = blake3::Hasher::new();
    let mut reader = io::BufReader::with_capacity(READ_CHUNK, io::Read::take(&mut file, body));
    loop {
        let chunk = io::BufRead::fill_buf(&mut reader).map_err(read_error)?;
        if chunk.is_empty() {
            break;
        }
        hasher.update(chunk);
        let n = chunk.len();
        io::BufRead::consume(&mut reader, n);
    }
    drop(reader);
    let mut checksum = [0u8; 32];
    io::Read::read_exact(&mut file, &mut checksum).map_err(read_error)?;
    if *hasher.finalize().as_bytes() != checksum {
        return Err(invalid("checksum mismatch: truncated or corrupt".into()));
    }
    io::Seek::rewind(&mut file).map_err(read_error)?;
    let input = StreamInput {
        reader: io::BufReader::with_capacity(READ_CHUNK, io::Read::take(file, body)),
        left: body as usize,
        buffer: Vec::new(),
    };
    decode_body(input, root).map(Some).map_err(invalid)
}

/// Bytes read from a cache file at once.
const READ_CHUNK: usize = 256 << 10;

/// The cache bytes for `manifest` of `root`.
pub fn encode(manifest: &Manifest, root: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    encode_to(manifest, root, &mut out).expect("writing to a Vec cannot fail");
    out
}

/// Writes the cache bytes for `manifest` of `root` to `sink` a piece at a time
/// (a cache is ~110 bytes per entry; it is never built whole in memory).
pub fn encode_to(manifest: &Manifest, root: &Path, sink: &mut dyn Write) -> io::Result<()> {
    let mut out = Encoder { buffer: Vec::with_capacity(ENCODE_CHUNK * 2), hasher: blake3::Hasher::new(), sink };
    out.buffer.extend_from_slice(MAGIC);
    out.buffer.extend_from_slice(&VERSION.to_le_bytes());
    out.buffer.extend_from_slice(manifest.root_hash().as_bytes());
    let root = root.as_os_str().as_bytes();
    out.buffer.extend_from_slice(&(root.len() as u32).to_le_bytes());
    out.buffer.extend_from_slice(root);
    encode_dir(manifest.root(), &mut out)?;
    out.spill()?;
    let checksum = out.hasher.finalize();
    out.sink.write_all(checksum.as_bytes())
}

/// Encoded bytes are handed to the sink (and the checksum) in chunks of about this size.
const ENCODE_CHUNK: usize = 64 << 10;

struct Encoder<'a> {
    buffer: Vec<u8>,
    hasher: blake3::Hasher,
    sink: &'a mut dyn Write,
}

impl Encoder<'_> {
    fn spill(&mut self) -> io::Result<()> {
        self.hasher.update(&self.buffer);
        self.sink.write_all(&self.buffer)?;
        self.buffer.clear();
        Ok(())
    }
}

fn encode_dir(dir: &Dir, encoder: &mut Encoder<'_>) -> io::Result<()> {
    let out = &mut encoder.buffer;
    encode_dir_meta(&dir.meta, out);
    out.extend_from_slice(&(dir.children().len() as u32).to_le_bytes());
    for entry in dir.children() {
        let out = &mut encoder.buffer;
        out.extend_from_slice(&(entry.name.len() as u16).to_le_bytes());
        out.extend_from_slice(&entry.name);
        out.push(entry.node.kind().code());
        match &entry.node {
            Node::File(f) => {
                out.extend_from_slice(&f.size.to_le_bytes());
                out.extend_from_slice(&f.mode.to_le_bytes());
                encode_time(f.mtime, out);
                encode_time(f.stat.ctime, out);
                out.extend_from_slice(&f.stat.ino.to_le_bytes());
                out.push(u8::from(f.stat.settled));
                encode_owner(f.owner, out);
                out.extend_from_slice(f.hash.as_bytes());
            }
            Node::Dir(d) => encode_dir(d, encoder)?,
            Node::Symlink(s) => {
                out.extend_from_slice(&(s.target.len() as u32).to_le_bytes());
                out.extend_from_slice(&s.target);
                encode_time(s.mtime, out);
                encode_owner(s.owner, out);
            }
        }
        if encoder.buffer.len() >= ENCODE_CHUNK {
            encoder.spill()?;
        }
    }
    Ok(())
}

fn encode_dir_meta(meta: &DirMeta, out: &mut Vec<u8>) {
    out.extend_from_slice(&meta.mode.to_le_bytes());
    encode_time(meta.mtime, out);
    encode_owner(meta.owner, out);
}

fn encode_time(t: Timestamp, out: &mut Vec<u8>) {
    out.extend_from_slice(&t.secs.to_le_bytes());
    out.extend_from_slice(&t.nanos.to_le_bytes());
}

fn encode_owner(o: Owner, out: &mut Vec<u8>) {
    out.extend_from_slice(&o.uid.to_le_bytes());
    out.extend_from_slice(&o.gid.to_le_bytes());
}

/// Decodes cache bytes; the error says what was wrong, for the log.
pub fn decode(bytes: &[u8], root: &Path) -> Result<Manifest, String> {
    if bytes.len() < MAGIC.len() + 4 + 32 {
        return Err(format!("truncated: {} bytes", bytes.len()));
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err("not a stagingd stat cache (bad magic)".into());
    }
    let (body, checksum) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != checksum {
        return Err("checksum mismatch: truncated or corrupt".into());
    }
    decode_body(SliceInput { bytes: body, at: 0 }, root)
}

/// Decodes a cache's body (all but the checksum, which the caller checked).
fn decode_body(input: impl Input, root: &Path) -> Result<Manifest, String> {
    let mut reader = Reader { input };
    if reader.take(MAGIC.len())? != MAGIC {
        return Err("not a stagingd stat cache (bad magic)".into());
    }
    let version = reader.u32()?;
    if !(OLDEST_VERSION..=VERSION).contains(&version) {
        return Err(format!("format version {version}, this build reads {OLDEST_VERSION} to {VERSION}"));
    }
    let claimed = if version >= 2 { Some(Hash(reader.array::<32>()?)) } else { None };
    let root_len = reader.u32()? as usize;
    let cached_root = reader.take(root_len)?;
    if cached_root != root.as_os_str().as_bytes() {
        let cached_root = crate::path::escape(cached_root);
        return Err(format!("made for root {cached_root}, not {}", root.display()));
    }
    let dir = reader.dir(0, 0)?;
    if reader.input.left() != 0 {
        return Err(format!("{} unexpected trailing bytes", reader.input.left()));
    }
    let manifest = Manifest::new(dir);
    if let Some(claimed) = claimed
        && claimed != manifest.root_hash()
    {
        return Err(format!("its header says root {claimed}, its entries hash to {}", manifest.root_hash()));
    }
    Ok(manifest)
}

/// The root hash of the manifest saved at `path`, read from its header alone:
/// `None` for a file that is not a cache of this format (or of version 1, which
/// does not record it). Only the header is read; the rest is not checked.
pub fn saved_root(path: &Path) -> io::Result<Option<Hash>> {
    use std::io::Read;
    let mut header = [0u8; 8 + 4 + 32];
    match std::fs::File::open(path)?.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if &header[..8] != MAGIC || !(2..=VERSION).contains(&version) {
        return Ok(None);
    }
    Ok(Some(Hash(header[12..].try_into().expect("32 bytes"))))
}

/// Where the decoder's bytes come from: a slice, or a file read as it goes.
trait Input {
    /// The next `n` bytes, valid until the next call.
    fn next(&mut self, n: usize) -> Result<&[u8], String>;
    /// Bytes not read yet.
    fn left(&self) -> usize;
}

struct SliceInput<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Input for SliceInput<'_> {
    fn next(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.at.checked_add(n).filter(|&end| end <= self.bytes.len());
        let end = end.ok_or_else(|| format!("truncated at byte {}", self.at))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }
}

struct StreamInput<R> {
    reader: R,
    left: usize,
    buffer: Vec<u8>,
}

impl<R: io::Read> Input for StreamInput<R> {
    fn next(&mut self, n: usize) -> Result<&[u8], String> {
        if n > self.left {
            return Err(format!("truncated: {n} bytes wanted, {} left", self.left));
        }
        self.buffer.resize(n, 0);
        self.reader.read_exact(&mut self.buffer).map_err(|e| format!("cannot read: {e}"))?;
        self.left -= n;
        Ok(&self.buffer)
    }

    fn left(&self) -> usize {
        self.left
    }
}

struct Reader<I> {
    input: I,
}

impl<I: Input> Reader<I> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        self.input.next(n)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("take returns exactly N bytes"))
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn time(&mut self) -> Result<Timestamp, String> {
        let secs = i64::from_le_bytes(self.array()?);
        Ok(Timestamp::new(secs, self.u32()?))
    }
    fn owner(&mut self) -> Result<Owner, String> {
        Ok(Owner { uid: self.u32()?, gid: self.u32()? })
    }

    /// A directory whose path is `path_len` bytes long, `depth` levels down.
    fn dir(&mut self, depth: usize, path_len: usize) -> Result<Dir, String> {
        if depth > MAX_DEPTH {
            return Err("directories nested deeper than any valid path".into());
        }
        let meta = DirMeta { mode: self.u32()?, mtime: self.time()?, owner: self.owner()? };
        let count = self.u32()? as usize;
        // Each child takes at least 3 bytes: refuse counts the data cannot hold
        // before allocating for them.
        if count > self.input.left() / 3 {
            return Err(format!("child count {count} exceeds the data"));
        }
        let mut children = Vec::with_capacity(count);
        for _ in 0..count {
            let name_len = self.u16()? as usize;
            let name = crate::name::Name::new(self.take(name_len)?);
            RelPath::check_name(&name).map_err(|e| e.to_string())?;
            let child_len = if path_len == 0 { name_len } else { path_len + 1 + name_len };
            if child_len > crate::path::MAX_PATH_BYTES {
                return Err(format!("a path of {child_len} bytes, over the {} allowed", crate::path::MAX_PATH_BYTES));
            }
            let kind = self.u8()?;
            let node = match Kind::from_code(kind) {
                Some(Kind::File) => Node::File(FileMeta {
                    size: self.u64()?,
                    mode: self.u32()?,
                    mtime: self.time()?,
                    stat: StatKey { ctime: self.time()?, ino: self.u64()?, settled: self.u8()? == 1 },
                    owner: self.owner()?,
                    hash: Hash(self.array()?),
                }),
                Some(Kind::Dir) => Node::Dir(self.dir(depth + 1, child_len)?.into()),
                Some(Kind::Symlink) => {
                    let len = self.u32()? as usize;
                    Node::Symlink(SymlinkMeta {
                        target: self.take(len)?.into(),
                        mtime: self.time()?,
                        owner: self.owner()?,
                    })
                }
                None => return Err(format!("unknown entry kind {kind}")),
            };
            if let Node::File(f) = &node
                && f.size > crate::path::MAX_FILE_BYTES
            {
                return Err(format!("a file of {} bytes, over the {} allowed", f.size, crate::path::MAX_FILE_BYTES));
            }
            children.push(Entry { name, node });
        }
        Ok(Dir::new(meta, children))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Timestamp;

    fn sample() -> Manifest {
        let mut m = Manifest::empty();
        let file = FileMeta {
            size: 3,
            mode: 0o644,
            mtime: Timestamp::new(1_700_000_000, 5),
            hash: Hash::of_content(b"abc"),
            owner: Owner { uid: 1, gid: 2 },
            stat: StatKey { ctime: Timestamp::new(1_700_000_001, 0), ino: 9, settled: true },
        };
        m.insert(&RelPath::new("a.php").unwrap(), Node::File(file)).unwrap();
        m
    }

    #[test]
    fn the_header_names_the_root_and_version_1_files_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let (root, path) = (Path::new("/srv/staging"), dir.path().join(CACHE_FILE));
        let m = sample();
        save(&m, root, &path).unwrap();
        assert_eq!(saved_root(&path).unwrap(), Some(m.root_hash()));
        assert_eq!(load(&path, root).unwrap(), Some(m.clone()));

        // Version 1: no root hash after the version.
        let v2 = encode(&m, root);
        let mut v1 = v2[..8].to_vec();
        v1.extend_from_slice(&1u32.to_le_bytes());
        v1.extend_from_slice(&v2[12 + 32..v2.len() - 32]);
        let checksum = blake3::hash(&v1);
        v1.extend_from_slice(checksum.as_bytes());
        std::fs::write(&path, &v1).unwrap();
        assert_eq!(saved_root(&path).unwrap(), None, "version 1 does not say");
        assert_eq!(load(&path, root).unwrap(), Some(m));
    }

    #[test]
    fn a_header_root_that_the_entries_do_not_hash_to_is_refused() {
        let root = Path::new("/srv/staging");
        let mut bytes = encode(&sample(), root);
        bytes[12] ^= 1;
        let body = bytes.len() - 32;
        let checksum = blake3::hash(&bytes[..body]);
        bytes[body..].copy_from_slice(checksum.as_bytes());
        let why = decode(&bytes, root).unwrap_err();
        assert!(why.contains("header says root"), "{why}");
    }
}
