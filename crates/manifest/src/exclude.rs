//! Which paths are outside the manifest.
//!
//! Two kinds of paths are never part of a tree: the daemon's reserved directory
//! ([`RESERVED_DIR`], at the root only) and paths matching the configured glob
//! patterns. Patterns follow rsync's intuition: a pattern without `/` matches a
//! name at any depth (`*.swp`), a pattern with `/` matches the whole relative path
//! from the root (`cache/l10n/*.tmp`), `*` never crosses `/` and `**` does. An
//! excluded directory excludes everything below it. Excluded paths are neither
//! sent nor deleted on a receiver.

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

use crate::path::RelPath;

/// The daemon's working directory inside every tree root: temporary files of an
/// apply live here so they are on the same filesystem as their final names.
pub const RESERVED_DIR: &str = ".stagingd";

/// A pattern that could not be compiled.
#[derive(Debug, thiserror::Error)]
#[error("exclude pattern {pattern:?} is not a valid glob: {source}")]
pub struct ExcludeError {
    pub pattern: String,
    #[source]
    pub source: globset::Error,
}

/// Compiled exclude patterns.
#[derive(Debug, Clone)]
pub struct Excludes {
    patterns: Vec<String>,
    by_name: GlobSet,
    by_path: GlobSet,
}

impl Default for Excludes {
    fn default() -> Self {
        Self::new(std::iter::empty::<&str>()).expect("no patterns always compile")
    }
}

impl Excludes {
    pub fn new<S: AsRef<str>>(patterns: impl IntoIterator<Item = S>) -> Result<Self, ExcludeError> {
        let mut by_name = GlobSetBuilder::new();
        let mut by_path = GlobSetBuilder::new();
        let mut kept = Vec::new();
        for pattern in patterns {
            let pattern = pattern.as_ref();
            let compile = |text: &str| -> Result<Glob, ExcludeError> {
                GlobBuilder::new(text)
                    .literal_separator(true)
                    .backslash_escape(true)
                    .build()
                    .map_err(|source| ExcludeError { pattern: pattern.to_owned(), source })
            };
            let anchored = pattern.trim_start_matches('/').trim_end_matches('/');
            if pattern.trim_end_matches('/').contains('/') {
                by_path.add(compile(anchored)?);
            } else {
                by_name.add(compile(anchored)?);
            }
            kept.push(pattern.to_owned());
        }
        let build = |b: GlobSetBuilder, pattern: &str| {
            b.build().map_err(|source| ExcludeError { pattern: pattern.to_owned(), source })
        };
        let joined = kept.join(" ");
        Ok(Self { by_name: build(by_name, &joined)?, by_path: build(by_path, &joined)?, patterns: kept })
    }

    /// The patterns as given.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// True when `path` itself is excluded (its parents are checked by the walk,
    /// which never descends into an excluded directory).
    pub fn is_excluded(&self, path: &RelPath) -> bool {
        if path.is_root() {
            return false;
        }
        if path.as_bytes() == RESERVED_DIR.as_bytes() {
            return true;
        }
        let name = path.file_name().unwrap_or_default();
        self.by_name.is_match(path_of(name)) || self.by_path.is_match(path.as_path())
    }

    /// True when `path` or any directory above it is excluded: for paths that
    /// arrive from elsewhere (a peer, a watcher event) rather than from a walk.
    pub fn is_excluded_or_inside_excluded(&self, path: &RelPath) -> bool {
        let mut prefix = RelPath::root();
        for component in path.components() {
            prefix = match prefix.join(component) {
                Ok(p) => p,
                Err(_) => return true,
            };
            if self.is_excluded(&prefix) {
                return true;
            }
        }
        false
    }
}

fn path_of(bytes: &[u8]) -> &std::path::Path {
    use std::os::unix::ffi::OsStrExt;
    std::path::Path::new(std::ffi::OsStr::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    #[test]
    fn reserved_dir_only_at_the_root() {
        let ex = Excludes::default();
        assert!(ex.is_excluded(&p(".stagingd")));
        assert!(!ex.is_excluded(&p("php-1.44/.stagingd")));
        assert!(ex.is_excluded_or_inside_excluded(&p(".stagingd/tmp/x")));
    }

    #[test]
    fn name_and_path_patterns() {
        let ex = Excludes::new(["*.swp", "cache/l10n/*.tmp", "/private/", "**/node_modules"]).unwrap();
        assert!(ex.is_excluded(&p("a/b/.x.php.swp")));
        assert!(ex.is_excluded(&p("x.swp")));
        assert!(!ex.is_excluded(&p("x.swpx")));
        assert!(ex.is_excluded(&p("cache/l10n/a.tmp")));
        assert!(!ex.is_excluded(&p("cache/l10n/deeper/a.tmp")), "* does not cross /");
        assert!(!ex.is_excluded(&p("other/cache/l10n/a.tmp")), "path patterns are anchored");
        assert!(ex.is_excluded(&p("private")));
        assert!(ex.is_excluded(&p("a/b/node_modules")));
        assert!(ex.is_excluded_or_inside_excluded(&p("private/secret.php")));
        assert!(!ex.is_excluded_or_inside_excluded(&p("public/secret.php")));
    }

    #[test]
    fn bad_pattern_is_named() {
        let err = Excludes::new(["ok", "a[b"]).unwrap_err();
        assert_eq!(err.pattern, "a[b");
    }
}
