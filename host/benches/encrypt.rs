//! Cost of the built-in `encrypt` plug-in (Tomcat's EncryptInterceptor) per
//! message, at 1 KiB and 64 KiB.
//!
//! `cargo bench --bench encrypt` prints, for each body size, the ns one
//! message takes through the default chain (tcp-failure-detector,
//! message-dispatch, throughput) without encrypt, with encrypt in AES-256-GCM
//! and with encrypt in AES-128-CBC, on the send path and on the receive path
//! (the received bodies are real ciphertexts, so they decrypt). The variants
//! alternate within each round, so a noisy neighbour hits them alike; each
//! figure is the median over the rounds, with the smallest and largest.
//! Then, for scale, the host's cipher alone (`seal`/`open` of
//! `shoal::wasm::crypto`, no guest) and the cost of expanding a key per
//! message, which the key handle of the `crypto` import saves.
//!
//! `SHOAL_BENCH_ROUNDS` sets the rounds (default 15).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use shoal::chain::{Chain, Flow, InMsg, OutMsg};
use shoal::plugins::{FailureMode, InterceptorSpec, NodeCtx, PluginOptions, PluginSource};
use shoal::wasm::crypto::{CipherKey, Mode};
use shoal::{Config, Member, MemberId, SendOptions};

#[allow(dead_code)]
#[path = "common/measure.rs"]
mod measure;
use measure::{Stat, cpu_model};

/// The AES-256 key of the GCM variant.
const KEY_256: &str = "3f1e6b8a0c2d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6071829a3b4c5d6e";
/// The AES-128 key of the CBC variant.
const KEY_128: &str = "00112233445566778899aabbccddeeff";

fn member(port: u16) -> Member {
    Member {
        id: MemberId {
            host: "127.0.0.1".parse().expect("ip"),
            port,
            unique_id: [port as u8; 16],
        },
        domain: Bytes::new(),
        alive_ms: 1000,
        payload: Bytes::new(),
        command: Bytes::new(),
        secure_port: -1,
        udp_port: -1,
    }
}

/// The default chain, with `encrypt` (key, algorithm) on top when given.
async fn chain(encrypt: Option<(&str, &str)>) -> Chain {
    let ctx = Arc::new(NodeCtx::new(
        member(1),
        Bytes::new(),
        Arc::new(shoal::Metrics::default()),
        shoal::plugins::Reporter::new(|_| {}),
    ));
    let opts = PluginOptions {
        instances: 2,
        cache_dir: None,
        ..Default::default()
    };
    let mut cfg = Config::default();
    cfg.plugins.default_chain = true;
    let mut specs = InterceptorSpec::list_from(&cfg);
    if let Some((key, algorithm)) = encrypt {
        specs.insert(
            0,
            InterceptorSpec {
                name: "encrypt".into(),
                source: PluginSource::Builtin("encrypt".into()),
                failure_mode: FailureMode::FailClosed,
                settings: vec![
                    ("encryptionKey".into(), key.into()),
                    ("encryptionAlgorithm".into(), algorithm.into()),
                ],
            },
        );
    }
    Chain::load(specs, &opts, ctx).await.expect("chain loads")
}

/// ns per message sent through `chain` (n messages, one per call; a send
/// message-dispatch defers continues below it at once, as a queue worker
/// would).
async fn send(chain: &Chain, body: &Bytes, n: u32) -> f64 {
    let dests: Arc<[MemberId]> = vec![member(2).id].into();
    let opts = SendOptions::BYTE_MESSAGE | SendOptions::USE_ACK;
    let t = Instant::now();
    for _ in 0..n {
        let mut m = OutMsg {
            options: opts,
            timestamp: 0,
            body: body.clone(),
            dests: dests.clone(),
        };
        let flow = chain.send_from(0, &mut m).await;
        if let Flow::Deferred { resume } = flow {
            std::hint::black_box(chain.send_from(resume, &mut m).await);
        }
        std::hint::black_box(&m.body);
    }
    t.elapsed().as_nanos() as f64 / f64::from(n)
}

/// ns per message received through `chain`, each body `wire`.
async fn receive(chain: &Chain, wire: &Bytes, n: u32) -> f64 {
    let opts = SendOptions::BYTE_MESSAGE | SendOptions::USE_ACK;
    let t = Instant::now();
    for _ in 0..n {
        let mut m = InMsg {
            options: opts,
            timestamp: 0,
            sender: member(2),
            unique_id: Bytes::new(),
            body: wire.clone(),
        };
        std::hint::black_box(chain.receive_from(chain.len(), &mut m).await);
    }
    t.elapsed().as_nanos() as f64 / f64::from(n)
}

/// Checks once, outside the timing, that `chain` turns `wire` into `plain`.
async fn check_receive(chain: &Chain, wire: &Bytes, plain: &Bytes) {
    let mut m = InMsg {
        options: SendOptions::BYTE_MESSAGE | SendOptions::USE_ACK,
        timestamp: 0,
        sender: member(2),
        unique_id: Bytes::new(),
        body: wire.clone(),
    };
    let flow = chain.receive_from(chain.len(), &mut m).await;
    assert_eq!(flow, Flow::Continue, "the message is delivered");
    assert_eq!(&m.body, plain, "and decrypted");
}

fn ns_per(n: u32, f: impl Fn()) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_nanos() as f64 / f64::from(n)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let rounds: usize = std::env::var("SHOAL_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model()
    );
    println!(
        "AES instructions: {}",
        if std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
        {
            "AES-NI and PCLMULQDQ (used by the aes and ghash crates)"
        } else {
            "none detected: software AES"
        }
    );
    rt.block_on(async {
        let none = chain(None).await;
        let gcm = chain(Some((KEY_256, "AES/GCM/NoPadding"))).await;
        let cbc = chain(Some((KEY_128, "AES/CBC/PKCS5Padding"))).await;
        let gcm_key = CipherKey::new(Mode::Gcm, &hex::decode(KEY_256).expect("hex")).expect("key");
        let cbc_key =
            CipherKey::new(Mode::CbcPkcs5, &hex::decode(KEY_128).expect("hex")).expect("key");

        println!(
            "\n## Per-message cost of encrypt (ns/message, median (min–max) of {rounds} rounds, one task)\n"
        );
        println!(
            "| body | path | default chain | + encrypt GCM | + encrypt CBC | added by GCM | added by CBC |"
        );
        println!("|---:|---|---:|---:|---:|---:|---:|");
        for (size, n) in [(1024usize, 20_000u32), (64 * 1024, 1_000)] {
            let plain = Bytes::from(
                (0..size)
                    .map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8)
                    .collect::<Vec<u8>>(),
            );
            let gcm_wire = Bytes::from(gcm_key.seal(&plain).expect("seal"));
            let cbc_wire = Bytes::from(cbc_key.seal(&plain).expect("seal"));
            check_receive(&gcm, &gcm_wire, &plain).await;
            check_receive(&cbc, &cbc_wire, &plain).await;
            // Warm-up: every worker instance made, caches filled.
            for c in [&none, &gcm, &cbc] {
                send(c, &plain, n / 10).await;
            }
            let mut s: [Vec<f64>; 3] = Default::default();
            let mut r: [Vec<f64>; 3] = Default::default();
            let mut s_added: [Vec<f64>; 2] = Default::default();
            let mut r_added: [Vec<f64>; 2] = Default::default();
            for _ in 0..rounds {
                let s0 = send(&none, &plain, n).await;
                let s1 = send(&gcm, &plain, n).await;
                let s2 = send(&cbc, &plain, n).await;
                let r0 = receive(&none, &plain, n).await;
                let r1 = receive(&gcm, &gcm_wire, n).await;
                let r2 = receive(&cbc, &cbc_wire, n).await;
                for (v, x) in s.iter_mut().zip([s0, s1, s2]) {
                    v.push(x);
                }
                for (v, x) in r.iter_mut().zip([r0, r1, r2]) {
                    v.push(x);
                }
                s_added[0].push(s1 - s0);
                s_added[1].push(s2 - s0);
                r_added[0].push(r1 - r0);
                r_added[1].push(r2 - r0);
            }
            for (path, v, added) in [("send", &s, &s_added), ("receive", &r, &r_added)] {
                println!(
                    "| {} KiB | {path} | {} | {} | {} | {} | {} |",
                    size / 1024,
                    Stat::of(&v[0]).show(0),
                    Stat::of(&v[1]).show(0),
                    Stat::of(&v[2]).show(0),
                    Stat::of(&added[0]).show(0),
                    Stat::of(&added[1]).show(0),
                );
            }
        }

        println!(
            "\n## The host's cipher alone (ns/operation, median (min–max) of {rounds} rounds)\n"
        );
        println!(
            "| body | GCM seal | GCM open | CBC seal | CBC open | GCM: new key + seal | CBC: new key + seal |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|");
        let k256 = hex::decode(KEY_256).expect("hex");
        let k128 = hex::decode(KEY_128).expect("hex");
        for (size, n) in [(1024usize, 20_000u32), (64 * 1024, 1_000)] {
            let plain = vec![7u8; size];
            let gw = gcm_key.seal(&plain).expect("seal");
            let cw = cbc_key.seal(&plain).expect("seal");
            let mut v: [Vec<f64>; 6] = Default::default();
            for _ in 0..rounds {
                let x = [
                    ns_per(n, || {
                        std::hint::black_box(gcm_key.seal(&plain).expect("seal"));
                    }),
                    ns_per(n, || {
                        std::hint::black_box(gcm_key.open(&gw).expect("open"));
                    }),
                    ns_per(n, || {
                        std::hint::black_box(cbc_key.seal(&plain).expect("seal"));
                    }),
                    ns_per(n, || {
                        std::hint::black_box(cbc_key.open(&cw).expect("open"));
                    }),
                    ns_per(n, || {
                        let k = CipherKey::new(Mode::Gcm, &k256).expect("key");
                        std::hint::black_box(k.seal(&plain).expect("seal"));
                    }),
                    ns_per(n, || {
                        let k = CipherKey::new(Mode::CbcPkcs5, &k128).expect("key");
                        std::hint::black_box(k.seal(&plain).expect("seal"));
                    }),
                ];
                for (v, x) in v.iter_mut().zip(x) {
                    v.push(x);
                }
            }
            println!(
                "| {} KiB | {} | {} | {} | {} | {} | {} |",
                size / 1024,
                Stat::of(&v[0]).show(0),
                Stat::of(&v[1]).show(0),
                Stat::of(&v[2]).show(0),
                Stat::of(&v[3]).show(0),
                Stat::of(&v[4]).show(0),
                Stat::of(&v[5]).show(0),
            );
        }
    });
}
