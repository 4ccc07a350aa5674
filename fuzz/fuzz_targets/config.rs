//! The config parser (`Config::parse`: TOML, then validation; its errors
//! name the line and key).
//!
//! Checks: never panics (bytes that are not UTF-8 are read lossily); every
//! error displays; a config that parses also validates on its own and
//! needs no restart against itself; what a node reads from it at start
//! (route, addresses, directories) does not panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use shoal::Config;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Config::parse(&text, Path::new("/fuzz/shoal.toml")) {
        Ok(cfg) => {
            assert!(cfg.validate().is_ok(), "parsed but does not validate");
            assert!(cfg.sections_needing_restart(&cfg).is_empty());
            // what the node reads from it at start
            let _ = (cfg.node.route(), cfg.api.listen_addr());
            let _ = (
                cfg.membership.static_members(),
                cfg.membership.dns_server_addr(),
            );
            let _ = cfg.deploy.store_dir(cfg.base_dir.as_deref());
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
