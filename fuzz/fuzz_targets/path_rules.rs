//! The path rules: `RelPath::new` never panics; what it accepts obeys every rule,
//! is accepted again unchanged, and round-trips through `components()`/`join`;
//! what it refuses breaks at least one rule.

#![no_main]

use libfuzzer_sys::fuzz_target;
use manifest::RelPath;
use manifest::path::{MAX_NAME_BYTES, MAX_PATH_BYTES};

/// The rules of `manifest::path`, written out independently of it.
fn breaks_a_rule(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && (bytes.len() > MAX_PATH_BYTES
            || bytes.contains(&0)
            || bytes[0] == b'/'
            || bytes.split(|&b| b == b'/').any(|c| c.is_empty() || c == b"." || c == b".." || c.len() > MAX_NAME_BYTES))
}

fuzz_target!(|data: &[u8]| {
    let name_ok = RelPath::check_name(data).is_ok();
    let Ok(path) = RelPath::new(data) else {
        assert!(breaks_a_rule(data), "refused a path that breaks no rule: {data:?}");
        assert!(!name_ok, "check_name accepted what RelPath::new refuses: {data:?}");
        return;
    };
    assert!(!breaks_a_rule(data), "accepted a path that breaks a rule: {data:?}");
    assert_eq!(path.as_bytes(), data, "accepted bytes are kept unchanged");
    assert_eq!(path.is_root(), data.is_empty());
    let again = RelPath::new(path.as_bytes()).expect("an accepted path is accepted again");
    assert_eq!(again, path);

    // components() -> join() rebuilds the same path, one valid name at a time,
    // and every prefix on the way is one `starts_with` agrees with.
    let components: Vec<&[u8]> = path.components().collect();
    let mut rebuilt = RelPath::root();
    for (i, name) in components.iter().enumerate() {
        assert!(RelPath::check_name(name).is_ok(), "component {i} is not a valid name");
        assert!(path.starts_with(&rebuilt));
        rebuilt = rebuilt.join(name).expect("joining the components of a valid path");
    }
    assert_eq!(rebuilt, path);
    assert_eq!(path.depth(), components.len());
    let reversed: Vec<&[u8]> = path.components().rev().collect();
    assert!(reversed.iter().eq(components.iter().rev()));
    assert_eq!(name_ok, components.len() == 1, "check_name is 'a valid path of one component'");

    // parent/file_name invert join.
    match (path.parent(), path.file_name()) {
        (None, None) => assert!(path.is_root()),
        (Some(parent), Some(name)) => {
            assert_eq!(parent.depth() + 1, path.depth());
            assert_eq!(parent.join(name).expect("rejoin the last name"), path);
        }
        other => panic!("parent and file_name disagree: {other:?}"),
    }

    // A byte prefix that does not end on a component boundary is not an ancestor.
    if let Some(&cut) = data.first() {
        let cut = 1 + usize::from(cut) % data.len();
        let prefix = &data[..cut];
        if let Ok(prefix_path) = RelPath::new(prefix) {
            let on_boundary = cut == data.len() || data[cut] == b'/';
            assert_eq!(path.starts_with(&prefix_path), on_boundary, "starts_with at byte {cut}");
        }
    }

    // Display never panics and never lets a control character through.
    let shown = path.display();
    assert!(!shown.chars().any(char::is_control), "display shows a control character: {shown:?}");
});
