//! Property test of invariant 7 ("bad input gets a clear 4xx with a JSON
//! error body; nothing reaches the brokers from a request that was
//! refused"): thousands of random and malformed requests against the push
//! endpoint and the API of an in-process stack.
//!
//! Requests are written as raw bytes on a fresh TCP connection each, so they
//! can carry what no HTTP client would send: invalid UTF-8 in the request
//! line, bogus methods, 64 KiB and 600 KiB headers, bodies larger than the
//! limit, broken framing. Paths, methods, queries, bodies (random bytes,
//! truncated, huge, deeply nested or mistyped JSON, invalid UTF-8), content
//! types and API keys are drawn from a seeded RNG: the seed is printed, and
//! `LIFELINE_FUZZ_SEED` / `LIFELINE_FUZZ_CASES` replay or lengthen a run.
//!
//! Properties, per answer:
//! * never a 5xx (no broker is taken down here), always an answer (a
//!   handler that panics drops its connection);
//! * every 4xx carries a JSON body with an `error` string — except what
//!   hyper refuses before any Lifeline code runs (a request that is not
//!   HTTP/1.1: bytes not allowed in a request line, an oversized URI or
//!   header block), which it answers 400/414/431 with an empty body;
//! * a 429 carries `Retry-After` (whole seconds, ≥ 1);
//! * only a push with a live token can get 200, and then `{"ok":true}`;
//! * without the right API key, no `/api/v1` route answers 2xx.
//!
//! And for the whole run: every beat event on the beats subjects (watched
//! with a plain NATS subscription, pulses excluded) matches exactly one 200
//! from the push endpoint; each fuzzed monitor's beat history, as the API
//! shows it, holds exactly its accepted pushes; no service code panicked;
//! both services still answer `/healthz` and a valid push afterwards.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use lifeline_testkit::{Receiver, wait_for};
use lifeline_tests::{API_KEY, Stack};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Cases run unless `LIFELINE_FUZZ_CASES` says otherwise.
const DEFAULT_CASES: usize = 3000;

/// A monitor's accepted pushes before the fuzzer moves to a new one, so the
/// beat history (100 kept) still holds them all.
const HISTORY_ROOM: usize = 90;

/// Test alerts sent through the real channel (each waits for a delivery).
const TEST_ALERTS: u32 = 3;

/// Panics raised on a tokio worker outside the test code, i.e. in a service.
fn service_panics() -> &'static AtomicUsize {
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // `tokio-rt-worker` (`tokio-runtime-worker` before tokio 1.5x).
            let on_worker = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("tokio-"));
            let in_tests = info.location().is_some_and(|l| l.file().contains("tests/"));
            if on_worker && !in_tests {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
    &PANICS
}

// ---------------------------------------------------------------- raw HTTP

/// Which service a request goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum To {
    Ingest,
    Api,
}

/// One generated request and what may legitimately come back.
#[derive(Debug)]
struct Case {
    to: To,
    method: Vec<u8>,
    target: Vec<u8>,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    body: Vec<u8>,
    /// `Content-Length` sent, when not the body's length (broken framing).
    declared_length: Option<usize>,
    /// The request is not valid HTTP/1.1: hyper may refuse it bare.
    not_http: bool,
    /// No answer at all is acceptable (framing that leaves the server waiting).
    may_hang: bool,
    /// For a push: the index of the live monitor its token resolves to.
    live: Option<usize>,
    /// Whether this is the push route (`/api/push/{token}`) by GET or POST.
    push: bool,
    /// Whether an `/api/v1` request carries the right API key.
    authorized: bool,
}

impl Case {
    fn new(to: To, method: &[u8], target: Vec<u8>) -> Self {
        Self {
            to,
            method: method.to_vec(),
            target,
            headers: Vec::new(),
            body: Vec::new(),
            declared_length: None,
            not_http: false,
            may_hang: false,
            live: None,
            push: false,
            authorized: false,
        }
    }

    fn header(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        self.headers.push((name.as_bytes().to_vec(), value.into()));
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 256);
        out.extend_from_slice(&self.method);
        out.push(b' ');
        out.extend_from_slice(&self.target);
        out.extend_from_slice(b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
        for (name, value) in &self.headers {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        let length = self.declared_length.unwrap_or(self.body.len());
        if length > 0 {
            out.extend_from_slice(format!("Content-Length: {length}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }

    /// A short description for failure messages.
    fn describe(&self) -> String {
        let clip = |b: &[u8], n: usize| {
            let s = String::from_utf8_lossy(&b[..b.len().min(n)]).into_owned();
            if b.len() > n {
                format!("{s}…({} bytes)", b.len())
            } else {
                s
            }
        };
        let headers: Vec<String> = self
            .headers
            .iter()
            .map(|(n, v)| format!("{}: {}", clip(n, 40), clip(v, 60)))
            .collect();
        format!(
            "{:?} {} {} headers={headers:?} body={:?} declared_length={:?}",
            self.to,
            clip(&self.method, 20),
            clip(&self.target, 200),
            clip(&self.body, 200),
            self.declared_length,
        )
    }
}

/// An HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses a whole HTTP/1.1 answer read until the server closed.
fn parse_answer(mut raw: &[u8]) -> Result<Answer, String> {
    loop {
        let end = find(raw, b"\r\n\r\n").ok_or("no complete head")?;
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let rest = &raw[end + 4..];
        if (100..200).contains(&status) {
            raw = rest; // `100 Continue`: the real answer follows.
            continue;
        }
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let chunked = headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
        let body = if chunked {
            dechunk(rest)?
        } else {
            rest.to_vec()
        };
        return Ok(Answer {
            status,
            headers,
            body,
        });
    }
}

fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = find(raw, b"\r\n").ok_or("bad chunk")?;
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&raw[..eol])
                .split(';')
                .next()
                .unwrap_or_default()
                .trim(),
            16,
        )
        .map_err(|e| format!("bad chunk size: {e}"))?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(raw.get(..size).ok_or("short chunk")?);
        raw = raw.get(size + 2..).ok_or("short chunk")?;
    }
}

/// Sends `request` on a new connection and reads the answer until the
/// server closes; `Ok(None)` when nothing came back within `limit`.
async fn send_raw(addr: &str, request: &[u8], limit: Duration) -> Result<Option<Answer>, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    // The server may answer and close before reading everything (413, 431):
    // a failed write is not a failure, a missing answer is.
    let _ = stream.write_all(request).await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(limit, stream.read_to_end(&mut buf)).await;
    match (parse_answer(&buf), read) {
        (Ok(answer), _) => Ok(Some(answer)),
        // Still waiting (perhaps after a `100 Continue`).
        (Err(_), Err(_)) => Ok(None),
        (Err(e), Ok(Err(io))) => Err(format!("no answer ({e}): {io}")),
        (Err(e), Ok(Ok(_))) => Err(format!("connection closed without an answer: {e}")),
    }
}

// ------------------------------------------------------------- generators

/// Fragments that have broken parsers before.
const NASTY: &[&str] = &[
    "..",
    "../",
    "%",
    "%%",
    "%zz",
    "%F",
    "%FF",
    "%FF%FE",
    "%C0%AF",
    "%ED%A0%80",
    "%00",
    "%0A",
    "%2F",
    "%2e%2e%2f",
    "%u0041",
    "{s1}",
    ":",
    "*",
    "@",
    ";",
    "&",
    "=",
    "+",
    "~",
    "'",
    "!",
    "$",
    "(",
    ",",
];

/// Text that is valid UTF-8 but unusual.
const ODD_TEXT: &[&str] = &[
    "é", "💥", "\u{202e}", "\u{0}", "\u{feff}", "\u{7f}", "\r\n", "\t", " ", "\"", "\\",
    "<script>", "null", "-1", "1e400", "NaN", "Infinity", "0x10", "𝕷",
];

/// Bytes allowed unencoded in a request target (RFC 3986 pchar, `/`, `?`, `%`).
fn uri_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

/// Whether hyper takes `target` as a request target: only legal bytes, and
/// at most 64 KiB (longer is a 414, or a 431 beyond its header buffer).
fn valid_target(target: &[u8]) -> bool {
    target.len() < 65_000 && target.iter().all(|b| uri_safe(*b))
}

fn percent_encode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

/// Decodes `%XX` (leaving malformed escapes as they are), like the router.
fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

struct Gen {
    rng: StdRng,
}

impl Gen {
    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn below(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// Random letters and digits: the shape of ids (16) and tokens (32).
    fn alnum(&mut self, n: usize) -> String {
        const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        (0..n).map(|_| char::from(*self.pick(ALNUM))).collect()
    }

    fn random_bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.rng.random::<u8>()).collect()
    }

    /// Up to `max` pieces of text: letters, odd characters, nasty fragments.
    fn text(&mut self, max: usize) -> String {
        let n = self.below(max + 1);
        let mut s = String::new();
        for _ in 0..n {
            match self.below(4) {
                0 => s.push_str(self.pick::<&str>(ODD_TEXT)),
                1 => s.push_str(self.pick::<&str>(NASTY)),
                _ => s.push(char::from(b'a' + self.below(26) as u8)),
            }
        }
        s
    }

    /// A long string: 1 to 20 thousand characters.
    fn long_text(&mut self) -> String {
        let n = self.rng.random_range(1_000..20_000);
        if self.chance(0.5) {
            "x".repeat(n)
        } else {
            "é".repeat(n / 2)
        }
    }

    /// A path segment that is legal in a request target (percent-encoded
    /// where needed), possibly with percent-encoded garbage.
    fn segment(&mut self) -> Vec<u8> {
        match self.below(8) {
            0 => Vec::new(),
            1 => self.pick(NASTY).as_bytes().to_vec(),
            2 => percent_encode(self.text(12).as_bytes()),
            3 => percent_encode(&self.random_bytes(40)),
            4 => "a".repeat(self.rng.random_range(100..5000)).into_bytes(),
            5 => self.alnum(16).to_ascii_lowercase().into_bytes(),
            6 => self.alnum(32).into_bytes(),
            _ => {
                let mut s = self.text(6).into_bytes();
                s.retain(|b| uri_safe(*b) && *b != b'/' && *b != b'?');
                s
            }
        }
    }

    /// A query string (without `?`), percent-encoded or garbage.
    fn query(&mut self, keys: &[&str]) -> Vec<u8> {
        let mut pairs: Vec<Vec<u8>> = Vec::new();
        for _ in 0..self.below(5) {
            let key = if self.chance(0.8) {
                self.pick(keys).as_bytes().to_vec()
            } else {
                percent_encode(self.text(5).as_bytes())
            };
            let value: Vec<u8> = match self.below(7) {
                0 => b"up".to_vec(),
                1 => b"down".to_vec(),
                2 => self
                    .rng
                    .random_range(-1000..100_000)
                    .to_string()
                    .into_bytes(),
                3 => self.pick(NASTY).as_bytes().to_vec(),
                4 => percent_encode(self.long_text().as_bytes()),
                5 => percent_encode(&self.random_bytes(30)),
                _ => percent_encode(self.text(10).as_bytes()),
            };
            let mut pair = key;
            if self.chance(0.9) {
                pair.push(b'=');
                pair.extend(value);
            }
            pairs.push(pair);
        }
        let mut q = pairs.join(&b'&');
        if self.chance(0.05) {
            q.extend_from_slice(b"&&==&%&=%zz");
        }
        q
    }

    /// A random JSON value, up to `depth` levels.
    fn value(&mut self, depth: u32) -> Value {
        match self.below(if depth == 0 { 7 } else { 9 }) {
            0 => Value::Null,
            1 => json!(self.chance(0.5)),
            2 => json!(self.rng.random_range(-10i64..3_000_000)),
            3 => json!(self.rng.random::<i64>()),
            4 => json!(self.rng.random_range(-1e6..1e6)),
            5 => json!(self.text(20)),
            6 => json!(if self.chance(0.1) {
                self.long_text()
            } else {
                self.text(3)
            }),
            7 => Value::Array((0..self.below(4)).map(|_| self.value(depth - 1)).collect()),
            _ => {
                let mut m = serde_json::Map::new();
                for _ in 0..self.below(4) {
                    m.insert(self.text(6), self.value(depth - 1));
                }
                Value::Object(m)
            }
        }
    }

    /// A value that is plausible for `field` (and often just wrong).
    fn field_value(&mut self, field: &str, channel: &str) -> Value {
        match field {
            "name" => json!(match self.below(4) {
                0 => String::new(),
                1 => "n".repeat(self.rng.random_range(150..250)),
                _ => self.text(10),
            }),
            "timeout" | "interval" | "remind_every" | "confirm" => {
                let n = *self.pick(&[0i64, 1, 2, 60, 3600, 2_678_400, 2_678_401, -1]);
                match self.below(5) {
                    0 => json!(n.to_string()),
                    1 => json!(n as f64 + 0.5),
                    _ => json!(n),
                }
            }
            "channels" => json!(
                (0..self.below(4))
                    .map(|_| if self.chance(0.5) {
                        json!(channel)
                    } else {
                        self.value(0)
                    })
                    .collect::<Vec<_>>()
            ),
            "type" => json!(*self.pick(&["webhook", "email", "slack", "pager", "Webhook", ""])),
            "url" => json!(*self.pick(&[
                "http://127.0.0.1:9/hook",
                "https://hooks.slack.com/services/T0/B0/X",
                "http://[::1]:9/",
                "http://[::1",
                "http://a b/",
                "javascript:alert(1)",
                "http://user:pw@127.0.0.1:99999/",
                "ftp://127.0.0.1/",
                "http:///",
            ])),
            "to" => json!(
                (0..self.below(3))
                    .map(|_| *self.pick(&[
                        "ops@example.com",
                        "a@b",
                        "Ops <ops@example.com>",
                        "ops@example.com\r\nBcc: x@example.com",
                        "@",
                    ]))
                    .collect::<Vec<_>>()
            ),
            "status" => json!(*self.pick(&["up", "down", "UP", " down ", "maybe", ""])),
            "value" | "ping" => match self.below(4) {
                0 => json!(self.rng.random_range(-1e9..1e9)),
                1 => json!(*self.pick(&["NaN", "inf", "1e400", "12.5", " 3 ", ""])),
                _ => self.value(1),
            },
            _ => self.value(2),
        }
    }

    /// A JSON object made of `fields` (and sometimes others) with random values.
    fn object(&mut self, fields: &[&str], channel: &str) -> Value {
        let mut m = serde_json::Map::new();
        for _ in 0..self.below(fields.len() + 2) {
            let key = if self.chance(0.9) {
                self.pick(fields).to_string()
            } else {
                self.text(8)
            };
            let value = if self.chance(0.6) {
                self.field_value(&key, channel)
            } else {
                self.value(2)
            };
            m.insert(key, value);
        }
        Value::Object(m)
    }

    /// A body and the content type that goes with it (or not).
    fn body(&mut self, case: &mut Case, fields: &[&str], valid: Option<Value>, channel: &str) {
        let fields: &[&str] = if fields.is_empty() {
            &["id", "name"]
        } else {
            fields
        };
        let json_object = |g: &mut Self| {
            valid
                .clone()
                .filter(|_| g.chance(0.5))
                .unwrap_or_else(|| g.object(fields, channel))
        };
        let body: Vec<u8> = match self.below(14) {
            0 | 1 => Vec::new(),
            2 => self.random_bytes(2000),
            3..=6 => serde_json::to_vec(&json_object(self)).unwrap(),
            7 => {
                // Truncated JSON.
                let full = serde_json::to_vec(&json_object(self)).unwrap();
                let cut = self.below(full.len().max(1));
                full[..cut].to_vec()
            }
            8 => {
                // Deep nesting.
                let depth = self.rng.random_range(100..30_000);
                let (open, close) = if self.chance(0.5) {
                    ("[", "]")
                } else {
                    ("{\"a\":", "}")
                };
                let mut s = open.repeat(depth);
                if self.chance(0.8) {
                    s.push('1');
                    s.push_str(&close.repeat(depth));
                }
                s.into_bytes()
            }
            9 => {
                // Huge JSON: around the 64 KiB limit, or far beyond.
                let n = *self.pick(&[60_000usize, 65_000, 65_536, 70_000, 300_000]);
                let key = self.pick(fields).to_string();
                serde_json::to_vec(&json!({ key: "x".repeat(n) })).unwrap()
            }
            10 => {
                // Wrong types at the top.
                let v = match self.below(5) {
                    0 => json!([1, 2, 3]),
                    1 => json!("status=down"),
                    2 => json!(42),
                    3 => json!(null),
                    _ => json!(true),
                };
                serde_json::to_vec(&v).unwrap()
            }
            11 => {
                // Invalid UTF-8 inside JSON strings.
                let mut b = b"{\"".to_vec();
                b.extend_from_slice(self.pick(fields).as_bytes());
                b.extend_from_slice(b"\":\"\xff\xfe\xc0\xaf\xed\xa0\x80\"}");
                b
            }
            12 => self.query(fields),
            _ => self.text(200).into_bytes(),
        };
        case.body = body;
        let content_type: Option<Vec<u8>> = match self.below(10) {
            0..=3 => Some(b"application/json".to_vec()),
            4 => Some(b"application/json; charset=utf-16".to_vec()),
            5 => Some(b"application/x-www-form-urlencoded".to_vec()),
            6 => Some(b"text/plain".to_vec()),
            7 => Some(b"multipart/form-data; boundary=x".to_vec()),
            8 => Some(b"application/\xff\xfejson".to_vec()),
            _ => None,
        };
        if let Some(ct) = content_type {
            case.header("Content-Type", ct);
        }
    }

    /// Extra headers: mostly harmless, some huge or odd, a few broken.
    fn headers(&mut self, case: &mut Case) {
        for _ in 0..self.below(3) {
            match self.below(100) {
                0..=9 => case.header("X-Big", "a".repeat(64 * 1024)),
                10..=14 => case.header("X-Odd", b"\xff\xfe\x80 obs-text".to_vec()),
                15..=19 => case.header("Expect", "100-continue"),
                20..=22 => case.header("Content-Encoding", "gzip"),
                23..=25 => {
                    let credential = percent_encode(self.text(8).as_bytes());
                    let mut value = b"Bearer ".to_vec();
                    value.extend(credential);
                    case.header("Authorization", value);
                }
                26 => {
                    // Beyond hyper's header buffer: 431 from hyper itself.
                    case.header("X-Huge", "b".repeat(600 * 1024));
                    case.not_http = true;
                }
                27 => {
                    case.header("X-Bad", b"a\x00b".to_vec());
                    case.not_http = true;
                }
                28 => {
                    case.header("Transfer-Encoding", "chunked");
                    case.not_http = true;
                    case.may_hang = true;
                }
                29 => {
                    for i in 0..self.rng.random_range(50..150) {
                        case.header(&format!("X-Many-{i}"), "v");
                    }
                    case.not_http = true;
                }
                30..=32 => case.header("Cookie", self.text(20)),
                33..=49 => case.header("Cookie", percent_encode(self.text(20).as_bytes())),
                50..=69 => case.header("Accept-Encoding", "gzip, br, *"),
                70..=89 => {
                    let value = percent_encode(self.text(30).as_bytes());
                    case.header("X-Text", value);
                }
                _ => case.header("User-Agent", "lifeline-fuzz/1.0"),
            }
        }
        if self.chance(0.01) {
            // Announces more body than is sent: the server waits for it.
            case.declared_length = Some(case.body.len() + 10);
            case.may_hang = true;
        }
        if self.chance(0.01) {
            case.headers
                .push((b"Content-Length".to_vec(), b"abc".to_vec()));
            case.not_http = true;
        }
        // Control characters (CR, LF, NUL…) end or break a header line.
        let legal = |b: &u8| *b == b'\t' || *b >= 0x20 && *b != 0x7f;
        if case.headers.iter().any(|(_, v)| !v.iter().all(legal)) {
            case.not_http = true;
        }
    }

    /// A method: mostly the route's own, sometimes another or garbage.
    fn method(&mut self, own: &'static [u8], case_not_http: &mut bool) -> Vec<u8> {
        match self.below(50) {
            0..=34 => own.to_vec(),
            35..=37 => b"GET".to_vec(),
            38..=40 => b"POST".to_vec(),
            41..=45 => self
                .pick(&[
                    &b"PUT"[..],
                    b"DELETE",
                    b"PATCH",
                    b"HEAD",
                    b"OPTIONS",
                    b"TRACE",
                ])
                .to_vec(),
            46..=48 => self
                .pick(&[&b"FOO"[..], b"get", b"PROPFIND", b"BREW", b"M-SEARCH"])
                .to_vec(),
            _ => {
                *case_not_http = true;
                self.pick(&[&b"G\x01T"[..], b"P\xffST", b"GE(T", b"", b"CONNECT"])
                    .to_vec()
            }
        }
    }
}

// ------------------------------------------------------------------ world

/// A monitor the fuzzer pushes to.
#[derive(Debug)]
struct Target {
    id: String,
    token: String,
    /// Pushes answered 200.
    accepted: usize,
    /// Its beat history is checked at the end (never deleted or rotated).
    checked: bool,
}

struct World {
    ingest: String,
    api: String,
    monitors: Vec<Target>,
    /// The monitor fuzzed pushes go to now.
    victim: usize,
    /// A monitor the fuzzer may delete, pause and rotate.
    scapegoat: usize,
    /// A token that was rotated away before the run.
    revoked: String,
    /// A webhook channel on a real receiver.
    channel: String,
    test_alerts_left: u32,
}

impl World {
    fn plausible_id(&self, g: &mut Gen) -> String {
        match g.below(6) {
            0 => self.monitors[self.victim].id.clone(),
            1 => self.monitors[self.scapegoat].id.clone(),
            2 => self.channel.clone(),
            3 => g.alnum(16).to_ascii_lowercase(),
            _ => String::from_utf8_lossy(&g.segment()).into_owned(),
        }
    }

    fn push_case(&self, g: &mut Gen) -> Case {
        let mut not_http = false;
        let method = g.method(b"POST", &mut not_http);
        let method = if g.chance(0.3) && method == b"POST" {
            b"GET".to_vec()
        } else {
            method
        };
        let victim = &self.monitors[self.victim].token;
        let token: Vec<u8> = match g.below(30) {
            0..=12 => victim.clone().into_bytes(),
            13 | 14 => self.monitors[self.scapegoat].token.clone().into_bytes(),
            15 | 16 => self.revoked.clone().into_bytes(),
            17 | 18 => {
                // The victim's token with one character percent-encoded.
                let mut t = victim.clone().into_bytes();
                let i = g.below(t.len());
                let encoded = format!("%{:02X}", t[i]).into_bytes();
                t.splice(i..=i, encoded);
                t
            }
            19 | 20 => {
                // Almost the victim's token.
                let mut t = victim.clone();
                match g.below(4) {
                    0 => t.push('x'),
                    1 => {
                        t.pop();
                    }
                    2 => t = t.to_ascii_uppercase(),
                    _ => t = format!("{t}%20"),
                }
                t.into_bytes()
            }
            21 => {
                // Raw bytes a request line may not hold.
                not_http = true;
                let mut t = victim.clone().into_bytes();
                t.extend_from_slice(&g.random_bytes(8));
                t.push(0xff);
                t
            }
            _ => g.segment(),
        };
        let mut path = b"/api/push/".to_vec();
        path.extend_from_slice(&token);
        if g.chance(0.05) {
            path.extend_from_slice(b"/extra");
        }
        let mut target = path.clone();
        if g.chance(0.6) {
            target.push(b'?');
            target.extend(g.query(&["status", "msg", "value", "ping", "token"]));
        }
        if g.chance(0.003) {
            // Longer than hyper takes (64 KiB): 414.
            target.extend_from_slice(&vec![b'a'; 70_000]);
            not_http = true;
        }
        not_http |= !valid_target(&target);
        let mut case = Case::new(To::Ingest, &method, target);
        case.not_http = not_http;
        case.push = matches!(method.as_slice(), b"GET" | b"POST");
        // Which live monitor the token resolves to (as the router decodes it).
        let decoded = percent_decode(&token);
        if case.push && !path.ends_with(b"/extra") && !token.contains(&b'/') {
            case.live = self
                .monitors
                .iter()
                .position(|m| m.token.as_bytes() == decoded.as_slice());
        }
        if method == b"POST" || g.chance(0.2) {
            let valid = json!({"status": "up", "msg": "fuzz", "value": 1.5});
            g.body(
                &mut case,
                &["status", "msg", "value", "ping"],
                Some(valid),
                &self.channel,
            );
        }
        g.headers(&mut case);
        case
    }

    fn api_case(&mut self, g: &mut Gen) -> Case {
        // (path template, the route's method, body fields)
        const ROUTES: &[(&str, &[u8], &[&str])] = &[
            (
                "/api/v1/monitors",
                b"POST",
                &[
                    "name",
                    "timeout",
                    "interval",
                    "channels",
                    "confirm",
                    "remind_every",
                ],
            ),
            ("/api/v1/monitors", b"GET", &[]),
            ("/api/v1/monitors/{id}", b"GET", &[]),
            (
                "/api/v1/monitors/{id}",
                b"PATCH",
                &["name", "timeout", "interval", "channels"],
            ),
            ("/api/v1/monitors/{id}", b"DELETE", &[]),
            ("/api/v1/monitors/{id}/pause", b"POST", &[]),
            ("/api/v1/monitors/{id}/resume", b"POST", &[]),
            ("/api/v1/monitors/{id}/token", b"POST", &[]),
            ("/api/v1/monitors/{id}/beats", b"GET", &[]),
            ("/api/v1/monitors/{id}/events", b"GET", &[]),
            ("/api/v1/channels", b"POST", &["type", "name", "url", "to"]),
            ("/api/v1/channels", b"GET", &[]),
            ("/api/v1/channels/{id}", b"GET", &[]),
            ("/api/v1/channels/{id}", b"DELETE", &[]),
            ("/api/v1/channels/{id}/test", b"POST", &[]),
            ("/api/v1/channels/{id}/secret", b"POST", &[]),
            ("/api/v1/alerts/{id}", b"GET", &[]),
            ("/api/v1/outages", b"GET", &[]),
            ("/healthz", b"GET", &[]),
            ("/{id}", b"GET", &[]),
        ];
        let (template, own, fields) = if g.chance(0.3) {
            // The routes that read a body, more often.
            *g.pick(&[ROUTES[0], ROUTES[3], ROUTES[10]])
        } else {
            *g.pick(ROUTES)
        };
        let mut not_http = false;
        let method = g.method(own, &mut not_http);
        let authorized = g.chance(0.75);
        let id: Vec<u8> = match g.below(20) {
            0..=11 => self.plausible_id(g).into_bytes(),
            12 | 13 => format!("{}.{}", self.plausible_id(g), g.below(5)).into_bytes(),
            14 => {
                not_http = true;
                let mut b = g.random_bytes(10);
                b.push(0xfe);
                b
            }
            _ => g.segment(),
        };
        let mut id = id;
        // Keep the fuzzed monitors and the real channel alive and working.
        let victim_ids: Vec<&str> = self
            .monitors
            .iter()
            .filter(|m| m.checked)
            .map(|m| m.id.as_str())
            .collect();
        let destructive = authorized
            && ((method == b"DELETE" && template == "/api/v1/monitors/{id}")
                || (method == b"POST" && template == "/api/v1/monitors/{id}/token"));
        if destructive && victim_ids.contains(&String::from_utf8_lossy(&id).as_ref()) {
            id = self.monitors[self.scapegoat].id.clone().into_bytes();
        }
        if authorized
            && method == b"POST"
            && template == "/api/v1/channels/{id}/test"
            && id == self.channel.as_bytes()
        {
            if self.test_alerts_left == 0 {
                id = g.alnum(16).to_ascii_lowercase().into_bytes();
            } else {
                self.test_alerts_left -= 1;
            }
        }
        let mut target = template.replace("{id}", "\u{1}").into_bytes();
        let at = target.iter().position(|b| *b == 1);
        if let Some(at) = at {
            target.splice(at..=at, id);
        }
        if template.ends_with("/beats") || template.ends_with("/events") || g.chance(0.1) {
            target.push(b'?');
            target.extend(g.query(&["limit"]));
        }
        not_http |= !valid_target(&target);
        let mut case = Case::new(To::Api, &method, target);
        case.not_http = not_http;
        case.authorized = authorized;
        if authorized {
            let variant = *g.pick(&["Bearer ", "bearer ", "Bearer  ", "BEARER "]);
            case.header("Authorization", format!("{variant}{API_KEY}"));
        } else {
            match g.below(7) {
                0 => {}
                1 => case.header("Authorization", "Bearer wrong-key"),
                2 => case.header("Authorization", "Bearer"),
                3 => case.header("Authorization", format!("Basic {API_KEY}")),
                4 => case.header("Authorization", format!("Bearer {}", "k".repeat(64 * 1024))),
                5 => case.header("Authorization", b"Bearer \xff\xfe".to_vec()),
                _ => case.header("Authorization", format!("Bearer {API_KEY}x")),
            }
        }
        if !fields.is_empty() || g.chance(0.2) {
            let valid = if template == "/api/v1/channels" {
                json!({"type": "webhook", "name": "fuzz", "url": "http://127.0.0.1:9/hook"})
            } else {
                json!({"name": "fuzz", "timeout": 3600})
            };
            g.body(&mut case, fields, Some(valid), &self.channel);
        }
        g.headers(&mut case);
        case
    }

    fn other_case(&self, g: &mut Gen) -> Case {
        let to = if g.chance(0.5) { To::Ingest } else { To::Api };
        let mut not_http = false;
        let method = g.method(b"GET", &mut not_http);
        let target: Vec<u8> = match g.below(8) {
            0 => b"/".to_vec(),
            1 => b"/api/push".to_vec(),
            2 => b"/api/push/".to_vec(),
            3 => b"/readyz".to_vec(),
            4 => b"/metrics".to_vec(),
            5 => b"*".to_vec(),
            6 => b"/api/v1/../../etc/passwd".to_vec(),
            _ => {
                let mut p = Vec::new();
                for _ in 0..g.below(6) {
                    p.push(b'/');
                    p.extend(g.segment());
                }
                if p.is_empty() {
                    p.push(b'/');
                }
                p
            }
        };
        not_http |= !valid_target(&target) || method == b"CONNECT";
        let mut case = Case::new(to, &method, target);
        case.not_http = not_http;
        if g.chance(0.3) {
            g.body(&mut case, &["status"], None, &self.channel);
        }
        g.headers(&mut case);
        if g.chance(0.01) {
            // Not HTTP at all.
            case.method = g.random_bytes(30);
            case.not_http = true;
            case.may_hang = true;
        }
        case
    }
}

// ------------------------------------------------------------------- test

/// Counts beats (not pulses) published on the beats subjects of
/// `prefix`, from now on.
pub(crate) async fn watch_beats(prefix: &str) -> Arc<AtomicUsize> {
    let client = async_nats::connect("127.0.0.1:4222").await.expect("nats");
    let names = lifeline_shared::names::Names::new(prefix).unwrap();
    let pulse = names.pulse_subject();
    let mut sub = client
        .subscribe(format!("{prefix}.beats.*"))
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        let _client = client;
        while let Some(msg) = sub.next().await {
            if msg.subject.as_str() != pulse {
                // Ingest packs the pushes that arrive together into one message.
                let beats =
                    serde_json::from_slice::<lifeline_shared::model::BeatBatch>(&msg.payload)
                        .map(|b| b.beats.len())
                        .unwrap_or(1);
                c.fetch_add(beats, Ordering::SeqCst);
            }
        }
    });
    count
}

/// Checks the properties every single answer must have.
fn check(case: &Case, answer: &Option<Answer>) -> Result<(), String> {
    let Some(a) = answer else {
        return if case.may_hang {
            Ok(())
        } else {
            Err("no answer (a panic drops the connection)".into())
        };
    };
    if a.status >= 500 {
        return Err(format!("answered {}", a.status));
    }
    let hyper_refusal = case.not_http
        && matches!(a.status, 400 | 414 | 431)
        && a.body.is_empty()
        && a.header("content-type").is_none();
    if (400..500).contains(&a.status) && !hyper_refusal {
        if case.method == b"HEAD" {
            if a.header("content-type") != Some("application/json") {
                return Err("a HEAD refusal without a JSON content type".into());
            }
        } else {
            let error = a
                .json()
                .and_then(|v| v["error"].as_str().map(str::to_owned));
            if error.is_none() {
                return Err(format!(
                    "a {} without a JSON error: {:?}",
                    a.status,
                    String::from_utf8_lossy(&a.body)
                ));
            }
        }
    }
    if a.status == 429 {
        let retry: u64 = a
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .ok_or("a 429 without Retry-After in seconds")?;
        if retry < 1 {
            return Err(format!("Retry-After {retry}"));
        }
    }
    if case.to == To::Ingest && a.status == 200 && case.push {
        if case.live.is_none() {
            return Err("a push without a live token was accepted".into());
        }
        if a.json() != Some(json!({"ok": true})) {
            return Err(format!("200 body {:?}", String::from_utf8_lossy(&a.body)));
        }
    }
    if case.to == To::Ingest && a.status == 200 && !case.push {
        let path = String::from_utf8_lossy(&case.target).into_owned();
        if path.starts_with("/api/push") {
            return Err("200 for a non-push request on the push path".into());
        }
    }
    if case.to == To::Api
        && !case.authorized
        && case.target.starts_with(b"/api/v1")
        && (200..300).contains(&a.status)
    {
        return Err("an /api/v1 route answered 2xx without the API key".into());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_malformed_requests_get_json_4xx_and_publish_nothing() {
    let panics = service_panics();
    let panics_before = panics.load(Ordering::SeqCst);
    let seed: u64 = std::env::var("LIFELINE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    let cases: usize = std::env::var("LIFELINE_FUZZ_CASES")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(DEFAULT_CASES);
    println!("fuzz: seed {seed}, {cases} cases (replay: LIFELINE_FUZZ_SEED={seed})");

    let stack = Stack::start("fuzz").await;
    let hook = Receiver::start().await;
    let channel = stack.webhook_channel(&hook.url).await;
    let host = |url: &str| url.trim_start_matches("http://").to_owned();
    let new_target = |m: Value, checked: bool| Target {
        id: m["id"].as_str().unwrap().to_owned(),
        token: m["token"].as_str().unwrap().to_owned(),
        accepted: 0,
        checked,
    };
    let victim = new_target(stack.monitor("victim-0", 3600, &[]).await, true);
    let scapegoat = new_target(stack.monitor("scapegoat", 3600, &[]).await, false);
    let rotated = stack.monitor("rotated", 3600, &[]).await;
    let r = stack
        .api(
            reqwest::Method::POST,
            &format!("/api/v1/monitors/{}/token", rotated["id"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut world = World {
        ingest: host(&stack.ingest_url),
        api: host(&stack.api_url),
        monitors: vec![victim, scapegoat],
        victim: 0,
        scapegoat: 1,
        revoked: rotated["token"].as_str().unwrap().to_owned(),
        channel,
        test_alerts_left: TEST_ALERTS,
    };
    let beats = watch_beats(&stack.prefix).await;

    let mut g = Gen {
        rng: StdRng::seed_from_u64(seed),
    };
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let mut hyper_refusals = 0;
    let mut no_answer = 0;
    let started = Instant::now();
    for n in 0..cases {
        let case = match g.below(10) {
            0..=4 => world.push_case(&mut g),
            5..=8 => world.api_case(&mut g),
            _ => world.other_case(&mut g),
        };
        let addr = match case.to {
            To::Ingest => world.ingest.clone(),
            To::Api => world.api.clone(),
        };
        let limit = if case.may_hang {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(40)
        };
        let answer = send_raw(&addr, &case.bytes(), limit)
            .await
            .unwrap_or_else(|e| panic!("case {n} (seed {seed}): {e}\n{}", case.describe()));
        if let Err(e) = check(&case, &answer) {
            panic!(
                "case {n} (seed {seed}): {e}\nrequest: {}\nanswer: {:?}",
                case.describe(),
                answer.as_ref().map(|a| (
                    a.status,
                    &a.headers,
                    String::from_utf8_lossy(&a.body[..a.body.len().min(500)])
                ))
            );
        }
        match &answer {
            None => no_answer += 1,
            Some(a) => {
                *statuses.entry(a.status).or_default() += 1;
                if a.body.is_empty() && case.not_http && a.status >= 400 {
                    hyper_refusals += 1;
                }
                if case.push && a.status == 200 {
                    let live = case.live.expect("checked");
                    world.monitors[live].accepted += 1;
                    if live == world.victim && world.monitors[live].accepted >= HISTORY_ROOM {
                        let m = stack.monitor(&format!("victim-{n}"), 3600, &[]).await;
                        world.monitors.push(new_target(m, true));
                        world.victim = world.monitors.len() - 1;
                    }
                }
            }
        }
    }
    let elapsed = started.elapsed();

    // Still alive and working: health, and a valid push on a fresh monitor.
    for url in [&stack.ingest_url, &stack.api_url] {
        let r = stack.http.get(format!("{url}/healthz")).send().await;
        assert_eq!(
            r.map(|r| r.status().as_u16()).ok(),
            Some(200),
            "{url}/healthz"
        );
    }
    let last = new_target(stack.monitor("after-fuzz", 3600, &[]).await, true);
    assert_eq!(stack.push(&last.token, "msg=after").await.0, 200);
    world.monitors.push(Target {
        accepted: 1,
        ..last
    });

    // Exactly one beat event per 200, none for any refusal.
    let accepted: usize = world.monitors.iter().map(|m| m.accepted).sum();
    wait_for(
        Duration::from_secs(10),
        "a beat event per accepted push",
        || {
            let seen = beats.load(Ordering::SeqCst);
            async move { (seen >= accepted).then_some(()) }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        beats.load(Ordering::SeqCst),
        accepted,
        "beat events published vs pushes answered 200 (seed {seed})"
    );
    // And the evaluator recorded exactly those beats.
    for m in world.monitors.iter().filter(|m| m.checked) {
        let path = format!("/api/v1/monitors/{}/beats?limit=1000", m.id);
        wait_for(Duration::from_secs(10), "beat history complete", || {
            let path = path.clone();
            let stack = &stack;
            async move {
                let v = stack.get_json(&path).await;
                (v["beats"].as_array().map(Vec::len) == Some(m.accepted)).then_some(())
            }
        })
        .await;
    }
    assert_eq!(
        panics.load(Ordering::SeqCst),
        panics_before,
        "service code panicked (seed {seed})"
    );
    println!(
        "fuzz: {cases} cases in {:.1} s, statuses {statuses:?}, {hyper_refusals} refused by hyper, \
         {no_answer} left waiting, {accepted} pushes accepted over {} monitors",
        elapsed.as_secs_f64(),
        world.monitors.len()
    );
}
