//! A lean HTTP/1.1 keep-alive client for generating load.
//!
//! One [`Conn`] is one TCP connection with one request in flight at a time
//! (no pipelining, as wrk and real push clients do): it writes prepared
//! request bytes, then reads until the response is complete — the status
//! line and headers, then a `Content-Length` body, a chunked body, or (for a
//! response without either) everything until the server closes. The read
//! buffer is reused from request to request; nothing else is allocated per
//! request.

use std::{io, net::SocketAddr};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// How a response's body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Body {
    /// Exactly this many bytes follow the head.
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the server closes the connection.
    UntilClose,
}

/// A parsed status line and headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    /// The status code.
    pub(crate) status: u16,
    /// Bytes of the status line and headers, blank line included.
    pub(crate) len: usize,
    /// How the body ends.
    pub(crate) body: Body,
    /// The server closes the connection after this response.
    pub(crate) close: bool,
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed response: {what}"),
    )
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses the head at the start of `buf`; `None` while it is incomplete.
pub(crate) fn parse_head(buf: &[u8]) -> io::Result<Option<Head>> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > 64 * 1024 {
            return Err(malformed("head longer than 64 KiB"));
        }
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| malformed("head not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(malformed("no HTTP/1.x status line"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| malformed("no status code"))?;
    let mut close = version == "HTTP/1.0";
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(malformed("header without a colon"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse().map_err(|_| malformed("bad content-length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                close = true;
            } else if v.contains("keep-alive") {
                close = false;
            }
        }
    }
    let body = if (100..200).contains(&status) || status == 204 || status == 304 {
        Body::Length(0)
    } else if chunked {
        Body::Chunked
    } else if let Some(n) = length {
        Body::Length(n)
    } else {
        close = true;
        Body::UntilClose
    };
    Ok(Some(Head {
        status,
        len: end + 4,
        body,
        close,
    }))
}

/// Where a chunked body (starting at `buf[0]`) ends; `None` while incomplete.
pub(crate) fn chunked_end(buf: &[u8]) -> io::Result<Option<usize>> {
    let mut at = 0;
    loop {
        let Some(eol) = find(&buf[at..], b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&buf[at..at + eol]).map_err(|_| malformed("chunk size"))?;
        let size_hex = line.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(size_hex, 16).map_err(|_| malformed("chunk size not hex"))?;
        at += eol + 2;
        if size == 0 {
            // Optional trailers, then a blank line.
            loop {
                let Some(eol) = find(&buf[at..], b"\r\n") else {
                    return Ok(None);
                };
                at += eol + 2;
                if eol == 0 {
                    return Ok(Some(at));
                }
            }
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        at += size + 2;
    }
}

/// A response: its status, and whether the connection must be dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) close: bool,
}

/// One keep-alive connection.
pub(crate) struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Connects (with `TCP_NODELAY`, as every HTTP client does).
    pub(crate) async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(8 * 1024),
        })
    }

    async fn read_more(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(8 * 1024);
        }
        self.stream.read_buf(&mut self.buf).await
    }

    /// Sends `request` (complete HTTP/1.1 request bytes) and reads the whole
    /// response.
    pub(crate) async fn send(&mut self, request: &[u8]) -> io::Result<Response> {
        self.stream.write_all(request).await?;
        self.buf.clear();
        let head = loop {
            if let Some(head) = parse_head(&self.buf)? {
                break head;
            }
            if self.read_more().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        };
        match head.body {
            Body::Length(n) => {
                while self.buf.len() < head.len + n {
                    if self.read_more().await? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
            }
            Body::Chunked => {
                while chunked_end(&self.buf[head.len..])?.is_none() {
                    if self.read_more().await? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
            }
            Body::UntilClose => while self.read_more().await? > 0 {},
        }
        Ok(Response {
            status: head.status,
            close: head.close,
        })
    }
}

/// The bytes of a body-less `POST` to `path`.
pub(crate) fn post(path: &str, host: &str) -> Vec<u8> {
    format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_content_length_response() {
        let r = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}";
        let head = parse_head(r).unwrap().unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.body, Body::Length(11));
        assert_eq!(head.len + 11, r.len());
        assert!(!head.close);
    }

    #[test]
    fn incomplete_heads_wait_for_more() {
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le").unwrap(), None);
        assert_eq!(parse_head(b"").unwrap(), None);
    }

    #[test]
    fn reads_close_and_status_without_length() {
        let head = parse_head(
            b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(head.status, 503);
        assert!(head.close);
        assert_eq!(head.body, Body::UntilClose);
        let head = parse_head(b"HTTP/1.1 204 No Content\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((head.body, head.close), (Body::Length(0), false));
        let head = parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(head.close);
    }

    #[test]
    fn refuses_garbage() {
        assert!(parse_head(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 abc OK\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
    }

    #[test]
    fn finds_the_end_of_chunked_bodies() {
        let head = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.body, Body::Chunked);
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n";
        assert_eq!(chunked_end(body).unwrap(), Some(body.len()));
        assert_eq!(chunked_end(&body[..body.len() - 1]).unwrap(), None);
        assert_eq!(chunked_end(b"5\r\nhel").unwrap(), None);
        let trailers = b"0\r\nx-a: 1\r\n\r\n";
        assert_eq!(chunked_end(trailers).unwrap(), Some(trailers.len()));
        assert!(chunked_end(b"zz\r\n").is_err());
    }

    #[tokio::test]
    async fn a_connection_is_reused_across_requests() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0; 4096];
            let mut seen = Vec::new();
            for reply in [
                &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"[..],
                b"HTTP/1.1 429 Too Many Requests\r\ntransfer-encoding: chunked\r\n\r\n2\r\nno\r\n0\r\n\r\n",
            ] {
                let n = s.read(&mut buf).await.unwrap();
                seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                // Split the answer to exercise partial reads.
                let (a, b) = reply.split_at(reply.len() / 2);
                s.write_all(a).await.unwrap();
                s.flush().await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                s.write_all(b).await.unwrap();
            }
            seen
        });
        let mut c = Conn::connect(addr).await.unwrap();
        let req = post("/api/push/abc", "127.0.0.1");
        assert_eq!(
            c.send(&req).await.unwrap(),
            Response {
                status: 200,
                close: false
            }
        );
        assert_eq!(c.send(&req).await.unwrap().status, 429);
        let seen = server.await.unwrap();
        assert!(seen[0].starts_with("POST /api/push/abc HTTP/1.1\r\n"));
        assert!(seen[1].ends_with("Content-Length: 0\r\n\r\n"));
    }
}
