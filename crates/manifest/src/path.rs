//! Validated paths inside a tree.
//!
//! Every path that names something inside a managed tree — from a local walk, a
//! stat cache, a peer's directory listing or a plan — is a [`RelPath`]. The only way
//! to build one is through the checks here, so a host path (absolute, or one that
//! climbs out with `..`) can never reach the wire or the apply step unchecked.
//!
//! Paths are kept as raw bytes: Unix file names need not be UTF-8 and a staging tree
//! may hold such names. Display goes through [`RelPath::display`], which escapes what
//! is not printable UTF-8, so a hostile name cannot forge terminal output.
//!
//! This module does not touch the filesystem: whether writing a valid path would go
//! through a symlink is the apply step's question, answered with directory handles.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The longest relative path accepted, in bytes (Linux `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// The longest single name accepted, in bytes (Linux `NAME_MAX`).
pub const MAX_NAME_BYTES: usize = 255;
/// The largest file a manifest entry may claim (1 TiB): far above anything a
/// staging tree holds, and far below sizes whose sums could overflow.
pub const MAX_FILE_BYTES: u64 = 1 << 40;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path {0} is absolute; tree paths are relative to the tree root")]
    Absolute(String),
    #[error("path {0} has an empty component (a doubled or trailing '/')")]
    EmptyComponent(String),
    #[error("path {0} has a '.' or '..' component")]
    DotComponent(String),
    #[error("path {0} contains a NUL byte")]
    Nul(String),
    #[error("path {0} is {1} bytes long; the limit is {MAX_PATH_BYTES}")]
    TooLong(String, usize),
    #[error("name {0} is {1} bytes long; the limit is {MAX_NAME_BYTES}")]
    NameTooLong(String, usize),
    #[error("name {0} is not a single path component")]
    NotAName(String),
}

/// A normalised path relative to a tree root: `a/b/c`, never `/a`, `a//b`, `a/./b`,
/// `a/../b`, `a/` or a name with NUL. The empty path is the root itself.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RelPath(Box<[u8]>);

impl RelPath {
    /// The tree root.
    pub fn root() -> Self {
        Self::default()
    }

    /// Checks `bytes` against every rule and wraps them.
    pub fn new(bytes: impl AsRef<[u8]>) -> Result<Self, PathError> {
        let bytes = bytes.as_ref();
        if bytes.is_empty() {
            return Ok(Self::root());
        }
        let shown = || escape(bytes);
        if bytes.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong(shown(), bytes.len()));
        }
        if bytes.contains(&0) {
            return Err(PathError::Nul(shown()));
        }
        if bytes[0] == b'/' {
            return Err(PathError::Absolute(shown()));
        }
        for component in bytes.split(|&b| b == b'/') {
            match component {
                b"" => return Err(PathError::EmptyComponent(shown())),
                b"." | b".." => return Err(PathError::DotComponent(shown())),
                name if name.len() > MAX_NAME_BYTES => {
                    return Err(PathError::NameTooLong(escape(name), name.len()));
                }
                _ => {}
            }
        }
        Ok(Self(bytes.into()))
    }

    /// Checks that `name` is one valid component (no `/`, not `.`/`..`, no NUL).
    pub fn check_name(name: &[u8]) -> Result<(), PathError> {
        if name.is_empty() || name.contains(&b'/') {
            return Err(PathError::NotAName(escape(name)));
        }
        Self::new(name).map(drop)
    }

    /// This path with one more component. `name` must pass [`RelPath::check_name`].
    pub fn join(&self, name: &[u8]) -> Result<Self, PathError> {
        Self::check_name(name)?;
        if self.is_root() {
            return Self::new(name);
        }
        let mut bytes = Vec::with_capacity(self.0.len() + 1 + name.len());
        bytes.extend_from_slice(&self.0);
        bytes.push(b'/');
        bytes.extend_from_slice(name);
        if bytes.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong(escape(&bytes), bytes.len()));
        }
        Ok(Self(bytes.into()))
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The path as a host path fragment, to be joined onto a root directory.
    pub fn as_path(&self) -> &Path {
        Path::new(OsStr::from_bytes(&self.0))
    }

    /// The components, outermost first. The root has none.
    pub fn components(&self) -> impl DoubleEndedIterator<Item = &[u8]> {
        self.0.split(|&b| b == b'/').filter(|c| !c.is_empty())
    }

    /// The last component, or `None` for the root.
    pub fn file_name(&self) -> Option<&[u8]> {
        self.components().next_back()
    }

    /// The containing directory, or `None` for the root.
    pub fn parent(&self) -> Option<RelPath> {
        if self.is_root() {
            return None;
        }
        match self.0.iter().rposition(|&b| b == b'/') {
            Some(slash) => Some(Self(self.0[..slash].into())),
            None => Some(Self::root()),
        }
    }

    /// Number of components (the root has depth 0).
    pub fn depth(&self) -> usize {
        self.components().count()
    }

    /// True when `self` is `other` or lies inside it.
    pub fn starts_with(&self, other: &RelPath) -> bool {
        other.is_root()
            || (self.0.starts_with(&other.0) && (self.0.len() == other.0.len() || self.0[other.0.len()] == b'/'))
    }

    /// A printable form: valid UTF-8 is shown as is, anything else (and control
    /// characters) as `\xNN` escapes. The root shows as `.`.
    pub fn display(&self) -> String {
        if self.is_root() { ".".to_owned() } else { escape(&self.0) }
    }
}

/// Escapes bytes for display: printable UTF-8 as is, everything else `\xNN`.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '\\' || is_invisible_format(c) {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Characters that change how text around them is shown without showing
/// themselves (bidirectional overrides and isolates, zero-width characters): a
/// hostile name could use them to make a listing read differently.
fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelPath({:?})", self.display())
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display())
    }
}

impl TryFrom<&str> for RelPath {
    type Error = PathError;
    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_normal_paths() {
        for ok in ["a", "a/b", "wmf-config/CommonSettings.php", "with space/ü.php", "...", "a/.git"] {
            assert_eq!(RelPath::new(ok).unwrap().as_bytes(), ok.as_bytes());
        }
        assert!(RelPath::new("").unwrap().is_root());
        assert!(RelPath::new(b"caf\xe9").is_ok(), "non-UTF-8 names are kept as bytes");
    }

    #[test]
    fn rejects_every_bad_form() {
        type IsExpected = fn(&PathError) -> bool;
        let cases: &[(&[u8], IsExpected)] = &[
            (b"/etc/passwd", |e| matches!(e, PathError::Absolute(_))),
            (b"/", |e| matches!(e, PathError::Absolute(_))),
            (b"a//b", |e| matches!(e, PathError::EmptyComponent(_))),
            (b"a/", |e| matches!(e, PathError::EmptyComponent(_))),
            (b"./a", |e| matches!(e, PathError::DotComponent(_))),
            (b"a/./b", |e| matches!(e, PathError::DotComponent(_))),
            (b"..", |e| matches!(e, PathError::DotComponent(_))),
            (b"a/../../etc", |e| matches!(e, PathError::DotComponent(_))),
            (b"a\0b", |e| matches!(e, PathError::Nul(_))),
        ];
        for (bad, is_expected) in cases {
            let error = RelPath::new(bad).unwrap_err();
            assert!(is_expected(&error), "{} gave {error:?}", escape(bad));
        }
        let long_name = "x".repeat(256);
        assert!(matches!(RelPath::new(&long_name), Err(PathError::NameTooLong(..))));
        let long_path = vec!["y"; 3000].join("/");
        assert!(matches!(RelPath::new(&long_path), Err(PathError::TooLong(..))));
    }

    #[test]
    fn names_are_single_components() {
        assert!(RelPath::check_name(b"a").is_ok());
        for bad in [&b""[..], b"a/b", b".", b"..", b"a\0"] {
            assert!(RelPath::check_name(bad).is_err(), "{}", escape(bad));
        }
        assert!(RelPath::root().join(b"x/y").is_err());
    }

    #[test]
    fn structure_helpers() {
        let p = RelPath::new("a/b/c").unwrap();
        assert_eq!(p.file_name(), Some(&b"c"[..]));
        assert_eq!(p.parent().unwrap().as_bytes(), b"a/b");
        assert_eq!(RelPath::new("a").unwrap().parent(), Some(RelPath::root()));
        assert_eq!(RelPath::root().parent(), None);
        assert_eq!(p.depth(), 3);
        assert!(p.starts_with(&RelPath::new("a/b").unwrap()));
        assert!(!RelPath::new("a/bc").unwrap().starts_with(&RelPath::new("a/b").unwrap()));
        assert!(p.starts_with(&RelPath::root()));
        assert_eq!(RelPath::root().join(b"a").unwrap().join(b"b").unwrap().as_bytes(), b"a/b");
    }

    #[test]
    fn display_escapes_hostile_bytes() {
        assert_eq!(RelPath::new(b"a\x1b[2Jb").unwrap().display(), "a\\u{1b}[2Jb");
        assert_eq!(RelPath::new(b"caf\xe9").unwrap().display(), "caf\\xe9");
        assert_eq!(RelPath::root().display(), ".");
        assert_eq!(RelPath::new("evil\u{202E}php.txt").unwrap().display(), "evil\\u{202e}php.txt");
    }

    proptest! {
        /// Whatever bytes come in, validation never panics, and anything accepted is
        /// accepted again unchanged (normalisation is idempotent) and rebuilds from
        /// its own components.
        #[test]
        fn validation_is_total_and_idempotent(bytes in proptest::collection::vec(
            prop_oneof![Just(b'/'), Just(b'.'), Just(0u8), Just(b'a'), Just(0xffu8)], 0..24)) {
            if let Ok(path) = RelPath::new(&bytes) {
                prop_assert_eq!(RelPath::new(path.as_bytes()).unwrap(), path.clone());
                let mut rebuilt = RelPath::root();
                for c in path.components() {
                    rebuilt = rebuilt.join(c).unwrap();
                }
                prop_assert_eq!(rebuilt, path);
            }
        }
    }
}
