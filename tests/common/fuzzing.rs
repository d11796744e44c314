//! The bodies of the fuzz targets, shared by the cargo-fuzz binaries in
//! `fuzz/fuzz_targets/` (which include this file by path) and by
//! `tests/reliability.rs`, which replays the kept corpus through them on
//! every `cargo test` and runs a seeded mutation loop over it under
//! `OTPGATE_SLOW=1`.
//!
//! Each target feeds arbitrary bytes to one of otpgate's input edges and
//! panics when the server misbehaves: a panic inside otpgate (libFuzzer
//! aborts on any thread's panic), a hang (no answer or no close within
//! [`HANG`]), or a protocol answer that says the server failed where the
//! client was at fault (an HTTP 5xx). Pure parsers are called directly; the
//! SMPP session, the SMTP session and the JSON routes are reached over
//! loopback TCP on one in-process server per process, because their
//! sessions are crate-private and a socket is the edge a peer really has.
//!
//! This file depends only on otpgate and on crates both the tests and the
//! fuzz crate have, and never on the rest of `tests/common`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Encoder};

use otpgate::smsc::codec::{Inbound, Outbound, SmppCodec};
use otpgate::smtp::{DataVerdict, Envelope, MailBackend, RcptVerdict, SmtpConfig};

/// How long one input may keep a session busy before it counts as a hang.
pub const HANG: Duration = Duration::from_secs(10);

/// The most of an answer a target reads; a server that says more to one
/// small input is answering without bound.
const MAX_ANSWER: usize = 4 * 1024 * 1024;

// ---------------------------------------------------------------------------
// Pure parsers.

/// The SMSC's SMPP framing on an arbitrary byte stream, fed in two pieces
/// (the split point comes from the input) so partial frames are exercised.
/// Every decoded command is encoded back, as the session would answer it.
pub fn smpp_codec(data: &[u8]) {
    let (max, split, stream) = match data {
        [a, b, rest @ ..] => (16 + usize::from(*a) * 64, usize::from(*b), rest),
        _ => (1024, 0, data),
    };
    let mut codec = SmppCodec::new(max);
    let mut buf = BytesMut::new();
    let split = split.min(stream.len());
    for piece in [&stream[..split], &stream[split..]] {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(Some(Inbound::Command(command))) => {
                    let mut out = BytesMut::new();
                    codec
                        .encode(Outbound::Command(command), &mut out)
                        .expect("a decoded command encodes");
                    assert!(out.len() >= 16, "an encoded PDU has its header");
                }
                Ok(Some(Inbound::Invalid(invalid))) => {
                    let mut out = BytesMut::new();
                    codec
                        .encode(
                            Outbound::generic_nack(invalid.status, invalid.sequence_number),
                            &mut out,
                        )
                        .expect("generic_nack encodes");
                    assert_eq!(out.len(), 16);
                }
                Ok(None) => break,
                Err(_) => return,
            }
            assert!(buf.len() < before, "the codec made progress");
        }
        // The codec may reserve room for the frame it waits for, but never
        // more than the configured maximum.
        assert!(
            buf.capacity() <= max.max(stream.len()) + 64 * 1024,
            "buffer grew past the PDU limit"
        );
    }
}

/// The embedded carrier files with the input in place of one of them
/// (picked by the first byte), loaded as `--carriers DIR` would; a set that
/// loads is then used the way the simulated network uses it.
pub fn carrier_file(data: &[u8]) {
    let Some((&pick, text)) = data.split_first() else {
        return;
    };
    let files = carrier_sources();
    let replaced = files[usize::from(pick) % files.len()].0;
    let dir = scratch_dir().join(format!("carriers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("carrier scratch dir");
    for (name, text) in &files {
        if *name != replaced {
            std::fs::write(dir.join(name), text).expect("write carrier file");
        }
    }
    std::fs::write(dir.join(replaced), text).expect("write fuzzed carrier file");
    if let Ok(set) = otpgate::carrier::CarrierSet::load_dir(&dir) {
        exercise_carriers(&set);
    }
}

fn exercise_carriers(set: &otpgate::carrier::CarrierSet) {
    use otpgate::carrier::{Attempt, HandsetState, SenderProfile, SettingKind};
    use rand::SeedableRng;
    let profile = SenderProfile {
        number: "0354600124".into(),
        short_code: "22471".into(),
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let states = [
        HandsetState::default(),
        HandsetState {
            powered_on: false,
            ..HandsetState::default()
        },
        HandsetState {
            storage_full: true,
            ..HandsetState::default()
        },
    ];
    for carrier in set.all() {
        for chaos in [false, true] {
            let _ = carrier.delivery_delay_ms(&mut rng, chaos);
            for handset in &states {
                let attempt = Attempt {
                    handset,
                    source: "0354600124",
                    source_is_domestic_other_carrier: true,
                    text: "otpgate one-time password: 123456. https://example.com/x",
                    chaos,
                };
                let _ = carrier.decide(&attempt, &profile, &mut rng);
            }
        }
        for attempt in 0..8 {
            let _ = carrier.retry_delay_ms(attempt);
        }
        let _ = carrier.validity_ms();
        let _ = carrier.expired_receipt();
        let _ = carrier.displayed_sender("0354600124", &profile);
        for kind in SettingKind::ALL {
            let _ = carrier.remediation(kind, "ja", &profile, "example.com");
        }
        let _ = serde_json::to_string(carrier);
    }
}

/// The carrier files as shipped, by file name.
fn carrier_sources() -> Vec<(&'static str, String)> {
    static FILES: OnceLock<Vec<(&'static str, String)>> = OnceLock::new();
    FILES
        .get_or_init(|| {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(repo_relative("carriers"));
            let mut files = Vec::new();
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
                let path = entry.expect("carrier dir entry").path();
                if path.extension().is_some_and(|e| e == "toml") {
                    let name = path.file_name().expect("file name").to_string_lossy().into_owned();
                    let text = std::fs::read_to_string(&path).expect("read carrier file");
                    files.push((&*Box::leak(name.into_boxed_str()), text));
                }
            }
            files.sort();
            files
        })
        .clone()
}

/// A scenario file, parsed as `otpgate run` parses it; a scenario that
/// parses is labelled step by step, as the report does.
pub fn scenario_file(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(scenario) = otpgate::scenario::parse("fuzz.toml", &text) {
        for step in &scenario.steps {
            let _ = step.label();
        }
    }
}

/// A captured mail's views that are read from its source when asked for:
/// its parts and each part's bytes, its HTML with inline images, its links,
/// and a search (the input's first line) matched against it. The input is
/// the mail's source and, read as text, its HTML and text too.
pub fn mail_view(data: &[u8]) {
    use otpgate::smtp::{links, parts, search};
    if !mail_parser_survives(data) {
        return;
    }
    let listed = parts::list(data);
    for part in &listed {
        let (got, bytes) = parts::get(data, part.index).expect("a listed part can be read");
        assert_eq!((&got, bytes.len()), (part, part.size), "a part reads as listed");
    }
    let text = String::from_utf8_lossy(data);
    let shown = parts::inline_images(&text, data);
    let most = text.len() + text.matches("cid:").count() * (data.len() * 4 / 3 + 100);
    assert!(shown.len() <= most, "inline images grow the HTML by their data only");
    let found = links::of(Some(&text), Some(&text));
    assert!(found.len() <= 100, "at most 100 links");
    let q = text.lines().next().unwrap_or_default();
    if let Some(search) = search::Search::parse(q) {
        let to = vec![text.to_string()];
        search.matches(&search::Fields {
            from: &text,
            envelope_from: q,
            to: &to,
            subject: q,
            text: Some(&text),
            attachments: listed.len(),
        });
    }
}

/// Whether mail-parser's own parse gets through `data`. mail-parser 0.9
/// panics on some broken MIME ("Invalid part ID, could not find
/// multipart"); otpgate catches that wherever it parses (the capture keeps
/// the mail unparsed, a mail's parts read as none), but libFuzzer counts
/// any panic, caught or not, so such inputs are skipped here, quietly.
/// Only the parse is excused: a panic in what otpgate then asks of the
/// parsed mail still fails the target.
fn mail_parser_survives(data: &[u8]) -> bool {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let survived = std::panic::catch_unwind(|| {
        let _ = mail_parser::MessageParser::default().parse(data);
    })
    .is_ok();
    std::panic::set_hook(hook);
    survived
}

// ---------------------------------------------------------------------------
// The live server the socket targets talk to.

/// One in-process otpgate (virtual clock, fresh data directory) and one bare
/// SMTP server with AUTH and a small SIZE, on a runtime of their own.
pub struct Live {
    pub runtime: tokio::runtime::Runtime,
    pub http: SocketAddr,
    pub smpp: SocketAddr,
    pub smtp: SocketAddr,
    /// The bare SMTP server: AUTH PLAIN/LOGIN as `user`/`secret`, 4 KiB SIZE.
    pub smtp_auth: SocketAddr,
    /// An OTP issued at start, for the verify and resend routes.
    pub otp_id: String,
    _running: otpgate::app::Running,
}

/// The process's live server, started on first use.
pub fn live() -> &'static Live {
    static LIVE: OnceLock<Live> = OnceLock::new();
    LIVE.get_or_init(start_live)
}

fn scratch_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // The live server's data cannot be removed while the process runs
        // (statics are never dropped), so each run clears what earlier,
        // finished runs left behind.
        if Path::new("/proc/self").exists() {
            let stale = std::fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten();
            for entry in stale {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("otpgate-fuzz-") {
                    if !Path::new("/proc").join(pid).exists() {
                        let _ = std::fs::remove_dir_all(entry.path());
                    }
                }
            }
        }
        let dir = std::env::temp_dir().join(format!("otpgate-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    })
    .clone()
}

/// A path from the repository root, seen from this crate's manifest
/// (the tests sit at the root, the fuzz crate one level down).
fn repo_relative(path: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if root.join("carriers").is_dir() {
        PathBuf::from(path)
    } else {
        Path::new("..").join(path)
    }
}

struct StubMail;

impl MailBackend for StubMail {
    fn rcpt(&self, _from: &str, to: &str) -> BoxFuture<'_, RcptVerdict> {
        let verdict = if to.starts_with("nobody@") {
            RcptVerdict::Reject {
                code: 550,
                enhanced: "5.1.1".into(),
                text: "no such user".into(),
            }
        } else {
            RcptVerdict::Accept
        };
        Box::pin(async move { verdict })
    }

    fn data(&self, _envelope: Envelope, raw: Vec<u8>) -> BoxFuture<'_, DataVerdict> {
        Box::pin(async move {
            DataVerdict::Accepted {
                id: format!("m{}", raw.len()),
            }
        })
    }
}

fn start_live() -> Live {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("fuzz runtime");
    let dir = scratch_dir().join("data");
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = otpgate::config::Config::load(otpgate::config::Overrides {
        http: Some("127.0.0.1:0".into()),
        smpp: Some("127.0.0.1:0".into()),
        smtp: Some("127.0.0.1:0".into()),
        data: Some(dir),
        virtual_clock: true,
        seed: Some(7),
        ..otpgate::config::Overrides::default()
    })
    .expect("fuzz config");
    config.load_demo = false;
    let running = runtime.block_on(otpgate::app::start(config)).expect("otpgate starts");
    let http = running.http;
    let smpp = running.smpp.expect("smpp on");
    let smtp = running.smtp.expect("smtp on");

    let smtp_auth = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind smtp");
        let addr = listener.local_addr().expect("smtp addr");
        let config = SmtpConfig {
            max_message_bytes: 4096,
            auth: vec![("user".into(), "secret".into())],
            ..SmtpConfig::default()
        };
        // Never fired: the server lives as long as the process.
        let (trigger, shutdown) = otpgate::shutdown::channel();
        std::mem::forget(trigger);
        tokio::spawn(otpgate::smtp::serve(listener, config, Arc::new(StubMail), shutdown));
        addr
    });

    let otp_id = runtime.block_on(async {
        let member = br#"{"id":"F1","locale":"en","residence":"US","email":"f1@example.com"}"#;
        http_call(http, "POST", "/v1/members", member).await;
        http_call(http, "PUT", "/v1/members/F1/notification", br#"{"channel":"email"}"#).await;
        http_call(http, "PUT", "/v1/sim/handsets/09011110001", br#"{"carrier":"docomo"}"#).await;
        let (_, body) = http_call(http, "POST", "/v1/otps", br#"{"member_id":"F1","purpose":"login"}"#).await;
        serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_string))
            .unwrap_or_else(|| "otp_none".into())
    });
    Live {
        runtime,
        http,
        smpp,
        smtp,
        smtp_auth,
        otp_id,
        _running: running,
    }
}

/// Writes `input` (then half-closes, if `half_close`) while reading the
/// answer until the server closes. Panics on a hang or an unbounded answer.
async fn converse(addr: SocketAddr, input: &[u8], half_close: bool) -> Vec<u8> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let writer = async move {
        // The server may close before it has read everything; that is fine.
        let _ = write.write_all(input).await;
        if half_close {
            let _ = write.shutdown().await;
        }
        write
    };
    let reader = async move {
        let mut answer = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            match read.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&chunk[..n]);
                    assert!(answer.len() <= MAX_ANSWER, "the server answered without bound");
                }
            }
        }
        answer
    };
    let both = async { tokio::join!(writer, reader) };
    match tokio::time::timeout(HANG, both).await {
        Ok((_write_half, answer)) => answer,
        Err(_) => panic!("hang: the server neither answered nor closed within {HANG:?}"),
    }
}

// ---------------------------------------------------------------------------
// Socket targets.

/// An SMPP PDU with status 0.
pub fn smpp_pdu(command_id: u32, sequence: u32, body: &[u8]) -> Vec<u8> {
    let mut pdu = Vec::with_capacity(16 + body.len());
    pdu.extend_from_slice(&(16 + body.len() as u32).to_be_bytes());
    pdu.extend_from_slice(&command_id.to_be_bytes());
    pdu.extend_from_slice(&0u32.to_be_bytes());
    pdu.extend_from_slice(&sequence.to_be_bytes());
    pdu.extend_from_slice(body);
    pdu
}

/// bind_transceiver as `otpgate`/`otpgate`, SMPP 3.4.
pub fn smpp_bind() -> Vec<u8> {
    smpp_pdu(0x0000_0009, 1, b"otpgate\0otpgate\0\0\x34\x00\x00\0")
}

/// The embedded SMSC's session: the input is the byte stream an ESME sends;
/// when the first byte is odd, a valid bind comes first so the fuzzer
/// reaches the bound state at once.
pub fn smpp_session(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut input = Vec::new();
    if mode & 1 == 1 {
        input.extend_from_slice(&smpp_bind());
    }
    input.extend_from_slice(rest);
    let live = live();
    live.runtime.block_on(async {
        converse(live.smpp, &input, true).await;
    });
}

/// The SMTP session: the input is what a client types. The first byte picks
/// the server (bit 0: the bare one with AUTH and a 4 KiB SIZE) and a prefix
/// that gets past the greeting (bits 1-2: none, EHLO, EHLO+MAIL+RCPT,
/// EHLO+MAIL+RCPT+DATA).
pub fn smtp_session(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let live = live();
    let addr = if mode & 1 == 1 { live.smtp_auth } else { live.smtp };
    let prefix: &[u8] = match (mode >> 1) & 3 {
        0 => b"",
        1 => b"EHLO fuzz.example\r\n",
        2 => b"EHLO fuzz.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n",
        _ => b"EHLO fuzz.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n",
    };
    let mut input = prefix.to_vec();
    input.extend_from_slice(rest);
    live.runtime.block_on(async {
        let answer = converse(addr, &input, true).await;
        assert!(
            answer.is_empty() || answer.starts_with(b"220 ") || answer.starts_with(b"421 "),
            "the server greets first"
        );
    });
}

/// The JSON request bodies: the first byte picks a route that reads a body,
/// the rest is the body. Every answer must be a status below 500 with a JSON
/// body; a refusal must carry `{"error": {"code"}}`.
pub fn json_body(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let live = live();
    let otp = &live.otp_id;
    let routes: [(&str, String); 14] = [
        ("POST", "/v1/members".into()),
        ("PUT", "/v1/members/F1/email".into()),
        ("POST", "/v1/members/F1/phone".into()),
        ("POST", "/v1/members/F1/phone/verify".into()),
        ("PUT", "/v1/members/F1/notification".into()),
        ("POST", "/v1/otps".into()),
        ("POST", format!("/v1/otps/{otp}/verify")),
        ("POST", format!("/v1/otps/{otp}/resend")),
        ("PUT", "/v1/sim/chaos".into()),
        ("PUT", "/v1/sim/handsets/09011110001".into()),
        ("PUT", "/v1/sim/handsets/%2B819011110002".into()),
        ("PUT", "/v1/sim/mailboxes/f1%40example.com".into()),
        ("POST", "/v1/sim/clock/advance".into()),
        ("PUT", "/v1/sim/chaos".into()),
    ];
    let (method, path) = &routes[usize::from(pick) % routes.len()];
    live.runtime.block_on(async {
        let (status, answer) = http_call(live.http, method, path, body).await;
        assert!(
            status < 500,
            "{method} {path} answered {status}: {}",
            String::from_utf8_lossy(&answer)
        );
        let value: serde_json::Value = serde_json::from_slice(&answer)
            .unwrap_or_else(|e| panic!("{method} {path} answered {status} without JSON ({e})"));
        if status >= 400 {
            assert!(
                value["error"]["code"].is_string(),
                "{method} {path} refused without an error code: {value}"
            );
        }
    });
}

/// One HTTP/1.1 request on a fresh connection; the status and the body.
pub async fn http_call(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: fuzz\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    // No half-close: hyper drops a request whose client closed its side.
    let answer = converse(addr, &request, false).await;
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no HTTP answer (the connection closed): {text:?}"));
    let body = match answer.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(at) => answer[at + 4..].to_vec(),
        None => Vec::new(),
    };
    (status, body)
}

// ---------------------------------------------------------------------------
// The stable loop: corpus replay and seeded mutation, for machines and runs
// without cargo-fuzz.

/// The kept corpus of `target`, sorted by file name.
pub fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(repo_relative("fuzz/corpus"))
        .join(target);
    let mut files: Vec<(String, Vec<u8>)> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .filter_map(|p| {
                let bytes = std::fs::read(&p).ok()?;
                Some((p.file_name()?.to_string_lossy().into_owned(), bytes))
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// A small xorshift generator: the mutation loop must replay exactly from
/// its seed on any machine.
pub struct Xorshift(u64);

impl Xorshift {
    pub fn new(seed: u64) -> Xorshift {
        Xorshift(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that matter to the protocols, for the mutator to splice in.
const DICTIONARY: &[&[u8]] = &[
    b"\r\n",
    b"\r\n.\r\n",
    b"\0",
    b"\xff\xff\xff\xff",
    b"\x00\x00\x00\x10",
    b"{\"",
    b"\":",
    b"null",
    b"1e999",
    b"-1",
    b"\"\\u0000\"",
    b"[[[[[[[[",
    b"= \"",
    b"[[steps]]",
    b"AUTH PLAIN ",
    b"MAIL FROM:<",
    b"RCPT TO:<",
    b"BDAT ",
    b"SIZE=99999999999",
];

/// One mutation of `input`, in the manner of libFuzzer's: flip, insert,
/// erase, duplicate, splice a dictionary word or another corpus entry.
pub fn mutate(rng: &mut Xorshift, input: &[u8], others: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(7) {
            0 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] ^= 1 << rng.below(8);
            }
            1 => out.insert(at, rng.next() as u8),
            2 if !out.is_empty() => {
                let len = rng.below(16).min(out.len() - at.min(out.len()));
                out.drain(at.min(out.len())..at.min(out.len()) + len);
            }
            3 if !out.is_empty() => {
                let from = rng.below(out.len());
                let len = rng.below(32).min(out.len() - from);
                let piece = out[from..from + len].to_vec();
                out.splice(at..at, piece);
            }
            4 => {
                let word = DICTIONARY[rng.below(DICTIONARY.len())];
                out.splice(at..at, word.iter().copied());
            }
            5 if !others.is_empty() => {
                let other = &others[rng.below(others.len())].1;
                let from = rng.below(other.len() + 1);
                out.truncate(at);
                out.extend_from_slice(&other[from..]);
            }
            _ => out.truncate(at),
        }
    }
    out.truncate(64 * 1024);
    out
}
