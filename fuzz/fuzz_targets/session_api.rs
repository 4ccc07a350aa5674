//! The session API's inputs: the session id in the path, the POST body
//! and PATCH bodies, applied to a session as the engine applies them.
//!
//! Input: parts separated by 0xFF (a byte no JSON text or id holds): the
//! id, the POST body, then any number of PATCH bodies.
//!
//! Checks: never panics; an id that parses is 32 hex digits and a route,
//! and writing it back parses to the same; a body the API accepts gives a
//! change that is either refused with the session unchanged or applied
//! with its contents consistent (see `check_data`), every attribute set
//! present with its value and every one removed gone; the session sent
//! to a peer as a copy (encoded, decoded, merged) has the same attributes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal::fuzzing::{session_create_body, session_id, session_patch_body};
use shoal::session::parse_id;
use shoal::session::store::{Data, Entry, Limits, Role};
use shoal::session::wire::{AttrOp, Msg, Stamp};
use shoal_fuzz::{check_data, live, view};

/// Small, so the limits are reached.
const LIMITS: Limits = Limits {
    attributes: 8,
    attribute_bytes: 64,
    session_bytes: 256,
};

fn stamp(v: u64) -> Stamp {
    Stamp { v, node: 7 }
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0xff);
    let id = String::from_utf8_lossy(parts.next().unwrap_or_default());
    if let Some((key, route)) = parse_id(&id) {
        assert!(id.len() >= 32 && id.as_bytes()[..32].iter().all(u8::is_ascii_hexdigit));
        assert_eq!(parse_id(&session_id(key, route)), Some((key, route)));
    }
    let Some(body) = parts.next() else { return };
    let Ok((max_inactive_s, attributes)) = session_create_body(body) else {
        return;
    };
    assert!(max_inactive_s.is_none_or(|n| (1..=365 * 86_400).contains(&n)));
    let mut d = Data::new(0, 1, stamp(1));
    let ops: Vec<AttrOp> = attributes
        .into_iter()
        .map(|(name, v)| AttrOp {
            name,
            stamp: stamp(1),
            value: Some(v.get().to_owned()),
        })
        .collect();
    if d.apply(&ops, &LIMITS).is_err() {
        return;
    }
    check_data(&d, &LIMITS);
    let mut version = 1u64;
    for body in parts {
        let Ok(ops) = session_patch_body(body) else {
            continue;
        };
        version += 1;
        let ops: Vec<AttrOp> = ops
            .into_iter()
            .map(|(name, v)| AttrOp {
                name,
                stamp: stamp(version),
                value: v.map(|v| v.get().to_owned()),
            })
            .collect();
        let before = view(&d);
        match d.apply(&ops, &LIMITS) {
            Ok(_) => {
                check_data(&d, &LIMITS);
                let now = live(&d);
                for op in &ops {
                    let held = now.iter().find(|(n, _)| *n == op.name).map(|(_, v)| v);
                    assert_eq!(held, op.value.as_ref(), "a change was not applied");
                }
            }
            Err(_) => assert_eq!(view(&d), before, "a refused change changed the session"),
        }
    }
    // Sent to a backup as a full copy.
    let entry = Entry {
        role: Role::Primary,
        route: "a".into(),
        last_access_ms: 0,
        replicated_access_ms: 0,
        max_inactive_s: max_inactive_s.unwrap_or(1800),
        loc: Default::default(),
        data: Some(Box::new(d)),
        unsent: false,
    };
    let copy = entry.to_copy(1).expect("complete");
    let msg = Msg::decode(&Msg::Copies(vec![copy]).encode()).expect("decodes");
    let Msg::Copies(copies) = msg else {
        panic!("not copies")
    };
    let mut backup = Data::stub(0, stamp(0));
    backup
        .merge_copy(&copies[0], &LIMITS)
        .expect("a session within the limits is within them on a backup");
    let held = entry.data.as_deref().expect("data");
    assert_eq!(live(&backup), live(held));
});
