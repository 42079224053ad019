//! [`Name`]: one entry's name, kept inside the entry when it is short.
//!
//! A manifest holds one name per file, so the name's representation is a large
//! part of the daemon's memory. A boxed slice costs 16 bytes in the entry plus a
//! heap block of at least 32 bytes; most names in a staging tree (`Foo.php`,
//! `en.json`, `i18n`) are at most [`INLINE`] bytes and are stored in the entry's
//! 24 bytes instead, with no allocation. Longer names are boxed as before.

use std::fmt;
use std::ops::Deref;

/// The longest name kept inline.
pub const INLINE: usize = 22;

/// A file name's bytes (never empty in a valid manifest; any bytes but `/` and NUL,
/// which [`crate::RelPath`] checks). Compares, orders and hashes as its bytes.
#[derive(Clone)]
pub struct Name(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<[u8]>),
}

impl Name {
    pub fn new(bytes: &[u8]) -> Self {
        if bytes.len() <= INLINE {
            let mut inline = [0u8; INLINE];
            inline[..bytes.len()].copy_from_slice(bytes);
            Name(Repr::Inline { len: bytes.len() as u8, bytes: inline })
        } else {
            Name(Repr::Heap(bytes.into()))
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Repr::Heap(bytes) => bytes,
        }
    }
}

impl Deref for Name {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<[u8]> for Name {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl std::borrow::Borrow<[u8]> for Name {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl From<&[u8]> for Name {
    fn from(bytes: &[u8]) -> Self {
        Name::new(bytes)
    }
}

impl<const N: usize> From<[u8; N]> for Name {
    fn from(bytes: [u8; N]) -> Self {
        Name::new(&bytes)
    }
}

impl From<Vec<u8>> for Name {
    fn from(bytes: Vec<u8>) -> Self {
        if bytes.len() <= INLINE { Name::new(&bytes) } else { Name(Repr::Heap(bytes.into_boxed_slice())) }
    }
}

impl From<Box<[u8]>> for Name {
    fn from(bytes: Box<[u8]>) -> Self {
        if bytes.len() <= INLINE { Name::new(&bytes) } else { Name(Repr::Heap(bytes)) }
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Name {}

impl PartialEq<[u8]> for Name {
    fn eq(&self, other: &[u8]) -> bool {
        self.as_bytes() == other
    }
}

impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Name {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl std::hash::Hash for Name {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", crate::path::escape(self.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_inline_and_long_ones_boxed_with_the_same_bytes() {
        for len in [0, 1, INLINE - 1, INLINE, INLINE + 1, 255] {
            let bytes: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            for name in [Name::new(&bytes), Name::from(bytes.clone()), Name::from(bytes.clone().into_boxed_slice())] {
                assert_eq!(name.as_bytes(), &bytes[..]);
                assert_eq!(matches!(name.0, Repr::Inline { .. }), len <= INLINE, "length {len}");
            }
        }
    }

    #[test]
    fn orders_and_compares_as_bytes_across_representations() {
        let short = Name::new(b"zz");
        let long = Name::new(&[b'a'; INLINE + 5]);
        assert!(long < short, "byte order, not length or representation");
        assert_eq!(Name::new(b"x\xff"), Name::from(vec![b'x', 0xff]));
        assert_eq!(std::mem::size_of::<Name>(), 24);
    }
}
