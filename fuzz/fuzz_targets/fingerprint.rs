//! The chain-fingerprint decoder (shoal's member payload).
//!
//! Checks: never panics; `decode`, `labels` and `decode_all` agree; what
//! decodes re-encodes to a payload that decodes again (always within
//! `MAX_ENCODED`), to the same entries and labels when they are within the
//! encoder's limits; a chain that names each plug-in once (as a node's
//! own does) has no mismatch with itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal::wire::fingerprint::{
    self, MAX_ENCODED, MAX_ENTRIES, MAX_LABELS, MAX_TEXT, decode, decode_all, encode_with_labels,
    labels,
};

fuzz_target!(|data: &[u8]| {
    let all = decode_all(data);
    assert_eq!(decode(data), all.clone().map(|(e, _)| e));
    assert_eq!(labels(data), all.clone().map(|(_, l)| l));
    let Ok((entries, labels)) = all else { return };
    let pairs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (&**k, &**v)).collect();
    let enc = encode_with_labels(&entries, &pairs);
    assert!(enc.len() <= MAX_ENCODED);
    let (e2, l2) = decode_all(&enc).expect("an encoded fingerprint decodes");
    let format_1 = data[6] == 1;
    let fits = entries.len() <= MAX_ENTRIES
        && labels.len() <= MAX_LABELS
        && entries
            .iter()
            .all(|e| e.name.len() <= MAX_TEXT && e.version.len() <= MAX_TEXT)
        && labels
            .iter()
            .all(|(k, v)| k.len() <= MAX_TEXT && v.len() <= MAX_TEXT)
        && data.len() + usize::from(format_1) <= MAX_ENCODED;
    if fits {
        assert_eq!(e2, entries);
        assert_eq!(l2, labels);
        assert_eq!(enc.len(), data.len() + usize::from(format_1));
    }
    // A node's own chain names each plug-in once (the config refuses a
    // name used twice); a peer's may not, and is only compared.
    let _ = fingerprint::version_mismatches(&entries, &entries);
    let mut names: Vec<&str> = entries.iter().map(|e| &*e.name).collect();
    names.sort_unstable();
    names.dedup();
    if names.len() == entries.len() {
        assert!(fingerprint::wire_mismatches(&entries, &entries).is_empty());
        assert!(fingerprint::version_mismatches(&entries, &entries).is_empty());
    }
});
