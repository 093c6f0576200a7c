//! Damaging a store file the ways the fault experiments did: emptied,
//! truncated, or 4 KiB of garbage at its head, middle or tail. The one copy
//! of it: the end-to-end tests use it through `support`, the state store's
//! unit tests include this file.

use std::path::Path;

/// Every way [`damage`] knows.
pub const DAMAGES: [&str; 6] = [
    "zero",
    "truncated",
    "truncated-small",
    "head",
    "middle",
    "tail",
];

/// Damages the file at `path` in place, as `how` (one of [`DAMAGES`]) says.
pub fn damage(path: &Path, how: &str) {
    let mut bytes = std::fs::read(path).unwrap();
    let garble = |b: &mut Vec<u8>, at: usize| {
        let end = (at + 4096).min(b.len());
        for (i, byte) in b[at..end].iter_mut().enumerate() {
            *byte = (i as u8).wrapping_mul(151) ^ 0xa5;
        }
    };
    match how {
        "zero" => bytes.clear(),
        "truncated" => bytes.truncate(bytes.len() / 2),
        "truncated-small" => bytes.truncate(100),
        "head" => garble(&mut bytes, 0),
        "middle" => {
            let at = bytes.len() / 2;
            garble(&mut bytes, at)
        }
        "tail" => {
            let at = bytes.len().saturating_sub(4096);
            garble(&mut bytes, at)
        }
        other => panic!("no such damage: {other}"),
    }
    std::fs::write(path, bytes).unwrap();
}
