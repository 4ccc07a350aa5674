//! The session replication message decoder, and what a node does with a
//! peer's copies and changes (merge them into its store).
//!
//! Checks: never panics; `is_session` is exactly "not `NotSession`"; a
//! message that decodes re-encodes (never longer) to one that decodes to
//! the same; the copies and changes it carries are merged as the engine
//! does (under the default limits and small ones), and an accepted merge
//! leaves the session's contents consistent (see `check_data`) while a
//! refused one leaves them unchanged; expiry arithmetic on peer times
//! does not overflow.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal::session::store::{Data, Entry, Limits, Role, apply_delta};
use shoal::session::wire::{Copy, Msg, Stamp, WireError};
use shoal_fuzz::{check_data, view};

const LIMITS: [Limits; 2] = [
    // [session] defaults
    Limits {
        attributes: 256,
        attribute_bytes: 256 * 1024,
        session_bytes: 1024 * 1024,
    },
    Limits {
        attributes: 4,
        attribute_bytes: 32,
        session_bytes: 96,
    },
];

fn entry(c: &Copy) -> Entry {
    let e = Entry::proxy_for(c);
    let _ = (e.expires_at_ms(), e.expired_for_serving(i64::MAX));
    let _ = e.expired_for_serving(i64::MIN);
    e
}

fn merge(c: &Copy, limits: &Limits) -> Option<Entry> {
    let mut e = entry(c);
    let mut d = Data::stub(c.created_ms, c.route_stamp);
    let before = view(&d);
    match d.merge_copy(c, limits) {
        Ok(_) => {
            check_data(&d, limits);
            e.role = Role::Backup;
            e.data = Some(Box::new(d));
            Some(e)
        }
        Err(_) => {
            assert_eq!(view(&d), before, "a refused copy changed the session");
            None
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let r = Msg::decode(data);
    assert_eq!(Msg::is_session(data), r != Err(WireError::NotSession));
    let Ok(m) = r else { return };
    let enc = m.encode();
    assert!(enc.len() <= data.len(), "re-encoding is longer");
    assert_eq!(Msg::decode(&enc).as_ref(), Ok(&m));
    for limits in &LIMITS {
        match &m {
            Msg::Copies(cs) => {
                for c in cs {
                    if let Some(e) = merge(c, limits) {
                        // what this node would send on: the same contents
                        let again = e.to_copy(c.key).expect("a merged copy is complete");
                        let back = merge(&again, limits).expect("a merged copy merges again");
                        let (d, b) = (e.data.as_deref(), back.data.as_deref());
                        assert_eq!(d.map(view), b.map(view));
                    }
                }
            }
            Msg::FetchReply { copy: Some(c), .. } => {
                let _ = merge(c, limits);
            }
            Msg::Deltas(ds) => {
                for delta in ds {
                    // applied to a stub, as for a change that came first
                    let mut e = Entry {
                        role: Role::Backup,
                        route: "r".into(),
                        last_access_ms: 0,
                        replicated_access_ms: 0,
                        max_inactive_s: 1800,
                        loc: Default::default(),
                        data: Some(Box::new(Data::stub(0, Stamp::default()))),
                        unsent: false,
                    };
                    let before = e.data.as_deref().map(view);
                    match apply_delta(&mut e, delta, limits) {
                        Ok(_) => check_data(e.data.as_deref().expect("data"), limits),
                        Err(_) => assert_eq!(e.data.as_deref().map(view), before),
                    }
                    let _ = (e.expires_at_ms(), e.expired_for_serving(0));
                }
            }
            Msg::Locations(ls) => {
                for l in ls {
                    let _ = l.loc.holds(&l.loc.primary);
                }
            }
            _ => {}
        }
    }
});
