//! Shared by the fuzz targets: an allocator that turns an oversized
//! allocation into a crash, and the invariants of a session's contents.
//!
//! libFuzzer's `-malloc_limit_mb` needs a sanitizer's malloc hooks; the
//! targets are built without a sanitizer (`-s none`, the code under test
//! has no `unsafe`), so the cap is checked here instead: any single
//! allocation above [`MAX_ALLOC`] aborts with a message, and libFuzzer
//! saves the input. A decoder must never size a buffer from an unchecked
//! length; `-rss_limit_mb` catches slow growth.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;

use shoal::session::store::{Data, Limits};

/// Largest single allocation allowed while fuzzing. Every input is at most
/// 64 KiB (`-max_len`), and no decoder needs more than a few times its
/// input; 64 MiB is far above any honest need.
pub const MAX_ALLOC: usize = 64 << 20;

/// The system allocator, with a cap per allocation.
pub struct Capped;

fn too_large(size: usize) -> ! {
    let _ = writeln!(
        std::io::stderr(),
        "==shoal-fuzz== allocation of {size} bytes, over the {MAX_ALLOC}-byte cap"
    );
    std::process::abort();
}

// SAFETY: forwards to `System` unchanged; only refuses (by aborting) sizes
// above the cap.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOC {
            too_large(layout.size());
        }
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOC {
            too_large(layout.size());
        }
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > MAX_ALLOC {
            too_large(new_size);
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Capped = Capped;

/// A session's contents in comparable form: every attribute (removals
/// included) as name, stamp and JSON text, then the byte count.
pub type DataView = (Vec<(String, u64, u64, Option<String>)>, usize, u64, bool);

/// [`DataView`] of `d`.
pub fn view(d: &Data) -> DataView {
    let mut attrs: Vec<_> = d
        .attrs
        .iter()
        .map(|a| {
            (
                a.name.to_string(),
                a.stamp.v,
                a.stamp.node,
                a.value.as_ref().map(|v| v.get().to_owned()),
            )
        })
        .collect();
    attrs.sort();
    (attrs, d.bytes, d.version, d.complete)
}

/// The live attributes of `d`, sorted by name.
pub fn live(d: &Data) -> Vec<(String, String)> {
    let mut v: Vec<_> = d
        .live()
        .map(|(n, v)| (n.to_owned(), v.get().to_owned()))
        .collect();
    v.sort();
    v
}

/// What must hold of a session's contents after any change that was
/// accepted: names unique, the byte count exact, the limits kept, every
/// value JSON.
pub fn check_data(d: &Data, limits: &Limits) {
    let mut names: Vec<&str> = d.attrs.iter().map(|a| &*a.name).collect();
    names.sort_unstable();
    let n = names.len();
    names.dedup();
    assert_eq!(names.len(), n, "an attribute name is held twice");
    let live = live(d);
    let bytes: usize = live.iter().map(|(n, v)| n.len() + v.len()).sum();
    assert_eq!(d.bytes, bytes, "byte count drifted");
    assert!(live.len() <= limits.attributes, "attribute limit broken");
    assert!(bytes <= limits.session_bytes, "session size limit broken");
    for (name, v) in &live {
        assert!(!name.is_empty() && name.len() <= 256, "bad name kept");
        assert!(v.len() <= limits.attribute_bytes, "attribute limit broken");
        assert!(
            serde_json::from_str::<&serde_json::value::RawValue>(v).is_ok(),
            "a value that is not JSON was kept"
        );
    }
}
