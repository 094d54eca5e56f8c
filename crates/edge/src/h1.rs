//! The HTTP/1.1 client side of an upstream connection.
//!
//! A connection here has no task of its own: the task of the request that
//! holds it writes the request, reads the response head and, through the
//! response body, reads the body. Between requests it sits in its target's
//! pool (see [`crate::upstream`]). Parsing is httparse's; this module decides
//! message framing (RFC 9112, section 6) and decodes chunked bodies.

use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use http_body::Body as HttpBody;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::body::{Body, BoxError};

/// Most header lines a response head may carry.
const MAX_HEADERS: usize = 100;
/// Largest response head accepted.
const MAX_HEAD_BYTES: usize = 256 * 1024;
/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 8 * 1024;
/// Longest chunk-size line or trailer line of a chunked body.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Most bytes a chunked body's trailer section may hold.
const MAX_TRAILERS: usize = 64 * 1024;

/// The transport under a connection.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, data),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Why an exchange on a connection failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The upstream closed the connection, or reset it, before a byte of the
    /// response arrived. On a pooled connection this usually means it had
    /// timed the connection out just as the request went out.
    ClosedEarly(io::Error),
    /// Reading or writing failed after the response had begun.
    Io(io::Error),
    /// The response head was not valid HTTP/1.x.
    Protocol(String),
    /// The request body could not be read.
    Body(BoxError),
}

/// How a request body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body at all.
    None,
    /// `content-length`: exactly this many bytes.
    Length(u64),
    /// `transfer-encoding: chunked`.
    Chunked,
}

/// The request body on its way out.
pub(crate) struct Outgoing {
    body: Option<Body>,
    framing: Framing,
    /// Body bytes sent so far (checked against a declared length).
    sent: u64,
    /// Whether the whole request, body included, is in the write buffer or
    /// sent.
    done: bool,
}

impl Outgoing {
    /// Decides the framing of `body`: none when it is known to be empty, its
    /// length when known exactly, chunked otherwise.
    pub(crate) fn new(body: Body) -> Self {
        let framing = if body.is_end_stream() {
            Framing::None
        } else {
            match body.size_hint().exact() {
                Some(n) => Framing::Length(n),
                None => Framing::Chunked,
            }
        };
        Outgoing {
            body: (framing != Framing::None).then_some(body),
            framing,
            sent: 0,
            done: false,
        }
    }

    /// Whether the request has no body, so it can be sent again as it is.
    pub(crate) fn is_empty(&self) -> bool {
        self.framing == Framing::None
    }

    /// Gets a body-less request ready to be sent again.
    pub(crate) fn rewind(&mut self) {
        debug_assert!(self.is_empty());
        self.done = false;
    }

    /// Appends the next piece of the body, in its framing, to `out`.
    fn poll_more(&mut self, cx: &mut Context<'_>, out: &mut Vec<u8>) -> Poll<Result<(), Failure>> {
        let Some(body) = self.body.as_mut() else {
            self.done = true;
            return Poll::Ready(Ok(()));
        };
        loop {
            match ready!(Pin::new(&mut *body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // Trailers are not forwarded.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if data.is_empty() {
                        continue;
                    }
                    self.sent += data.len() as u64;
                    match self.framing {
                        Framing::Length(n) if self.sent > n => {
                            return Poll::Ready(Err(Failure::Body(
                                format!("request body longer than its {n} bytes").into(),
                            )))
                        }
                        Framing::Chunked => {
                            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                            out.extend_from_slice(&data);
                            out.extend_from_slice(b"\r\n");
                        }
                        _ => out.extend_from_slice(&data),
                    }
                    return Poll::Ready(Ok(()));
                }
                Some(Err(e)) => return Poll::Ready(Err(Failure::Body(e))),
                None => {
                    if let Framing::Length(n) = self.framing {
                        if self.sent != n {
                            return Poll::Ready(Err(Failure::Body(
                                format!("request body ended after {} of {n} bytes", self.sent)
                                    .into(),
                            )));
                        }
                    }
                    if self.framing == Framing::Chunked {
                        out.extend_from_slice(b"0\r\n\r\n");
                    }
                    self.body = None;
                    self.done = true;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

/// A response head as read from the upstream.
pub(crate) struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    /// How the body that follows is delimited.
    pub body: Decoder,
    /// Whether the upstream is willing to take another request on this
    /// connection once the body is read.
    pub keep_alive: bool,
}

/// What one look at the read buffer found.
enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// An interim (1xx) response, consumed.
    Interim,
    /// The response head.
    Final(Head),
}

/// One HTTP/1.1 connection to an upstream.
pub(crate) struct Conn {
    io: Stream,
    /// Bytes read and not yet consumed.
    read: BytesMut,
    /// Bytes to write, from `written` on.
    write: Vec<u8>,
    written: usize,
    flushed: bool,
    /// Set when a write failed; what is left is read for a response that
    /// may already be there.
    write_error: Option<io::Error>,
    /// Whether any byte of the current response arrived.
    responded: bool,
}

impl Conn {
    pub(crate) fn new(io: Stream) -> Self {
        Conn {
            io,
            read: BytesMut::new(),
            write: Vec::new(),
            written: 0,
            flushed: true,
            write_error: None,
            responded: false,
        }
    }

    /// Whether the connection can take a request: the upstream has not
    /// closed it and sent nothing unasked. Looks at what the socket already
    /// has without waiting (for TLS, that also takes in session tickets).
    pub(crate) fn is_reusable(&mut self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        self.poll_fill(&mut cx).is_pending()
    }

    /// Sends the request (head and body) and reads the response head. A head
    /// may arrive before the request body was all sent; [`Conn::sent_all`]
    /// then says false, and the caller goes on sending with
    /// [`Conn::poll_send`] while it reads the response body, as a
    /// full-duplex exchange needs.
    pub(crate) async fn exchange(
        &mut self,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        out: &mut Outgoing,
    ) -> Result<Head, Failure> {
        self.write.clear();
        self.written = 0;
        self.write_error = None;
        self.responded = false;
        encode_head(&mut self.write, method, target, headers, out.framing);
        self.flushed = false;
        let head_request = method == Method::HEAD;
        poll_fn(|cx| self.poll_exchange(cx, out, head_request)).await
    }

    fn poll_exchange(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Outgoing,
        head_request: bool,
    ) -> Poll<Result<Head, Failure>> {
        // Sending comes first: the request must be out before there is
        // anything to read. While the body is still on its way, a head may
        // arrive anyway; the response then goes on and the rest of the body
        // is sent beside it (see [`Conn::poll_send`]).
        if let Poll::Ready(Err(e)) = self.poll_send(cx, out) {
            return Poll::Ready(Err(e));
        }
        match ready!(self.poll_head(cx, head_request)) {
            Ok(head) => Poll::Ready(Ok(head)),
            // A write that failed usually says why better than the closed
            // connection found after it.
            Err(Failure::ClosedEarly(e)) => Poll::Ready(Err(Failure::ClosedEarly(
                self.write_error.take().unwrap_or(e),
            ))),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// Sends what is left of the request as far as the socket and the body
    /// allow. Ready once it is all sent, or when a write failed (the error
    /// is kept: what the upstream already answered may still be read);
    /// pending while waiting on either side. An error is the request body's.
    pub(crate) fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Outgoing,
    ) -> Poll<Result<(), Failure>> {
        loop {
            if self.write_error.is_some() {
                return Poll::Ready(Ok(()));
            }
            if self.written < self.write.len() {
                match ready!(Pin::new(&mut self.io).poll_write(cx, &self.write[self.written..])) {
                    Ok(0) => self.write_error = Some(io::ErrorKind::WriteZero.into()),
                    Ok(n) => self.written += n,
                    Err(e) => self.write_error = Some(e),
                }
            } else if !self.flushed {
                match ready!(Pin::new(&mut self.io).poll_flush(cx)) {
                    Ok(()) => {
                        self.flushed = true;
                        self.write.clear();
                        self.written = 0;
                    }
                    Err(e) => self.write_error = Some(e),
                }
            } else if !out.done {
                ready!(out.poll_more(cx, &mut self.write))?;
                self.flushed = self.write.is_empty();
            } else {
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Whether a write of the current request failed.
    pub(crate) fn write_failed(&self) -> bool {
        self.write_error.is_some()
    }

    /// Whether the whole request, body included, went out on the socket.
    pub(crate) fn sent_all(&self, out: &Outgoing) -> bool {
        out.done && self.flushed && self.write_error.is_none()
    }

    /// Reads until a whole final response head is in, skipping interim
    /// (1xx) responses other than 101.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        head_request: bool,
    ) -> Poll<Result<Head, Failure>> {
        loop {
            if !self.read.is_empty() {
                match self.parse_head(head_request)? {
                    Parsed::Final(head) => return Poll::Ready(Ok(head)),
                    // What follows may already be buffered.
                    Parsed::Interim => continue,
                    Parsed::Partial if self.read.len() >= MAX_HEAD_BYTES => {
                        return Poll::Ready(Err(Failure::Protocol(format!(
                            "response head larger than {MAX_HEAD_BYTES} bytes"
                        ))))
                    }
                    Parsed::Partial => {}
                }
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) if self.responded => {
                    return Poll::Ready(Err(Failure::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed in the middle of the response head",
                    ))))
                }
                Ok(0) => {
                    return Poll::Ready(Err(Failure::ClosedEarly(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed before the response",
                    ))))
                }
                Ok(_) => self.responded = true,
                Err(e) if self.responded => return Poll::Ready(Err(Failure::Io(e))),
                Err(e) => return Poll::Ready(Err(Failure::ClosedEarly(e))),
            }
        }
    }

    /// Parses a response head at the start of the read buffer.
    ///
    /// The framing headers are read from the raw head, and the hop-by-hop
    /// ones (RFC 9110, section 7.6.1: `connection`, those it names,
    /// `keep-alive`, `transfer-encoding`...) are used here and never enter
    /// the header map, except on a 101, whose `upgrade` and `connection` the
    /// upgraded stream needs.
    fn parse_head(&mut self, head_request: bool) -> Result<Parsed, Failure> {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        // Where each name and value lies in the head, so the header map can
        // be built from the head's own copy; a name end of 0 marks a header
        // left out.
        let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let base = self.read.as_ptr() as usize;
        let mut scan = Scan::default();
        let (len, code, minor, count) = match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, &self.read, &mut slots)
        {
            Ok(httparse::Status::Complete(len)) => {
                let keep_hop = resp.code == Some(101);
                for (span, h) in spans.iter_mut().zip(resp.headers.iter()) {
                    let hop = scan.header(h.name.as_bytes(), h.value);
                    if hop && !keep_hop {
                        continue;
                    }
                    let n = h.name.as_ptr() as usize - base;
                    let v = h.value.as_ptr() as usize - base;
                    *span = (
                        n as u32,
                        (n + h.name.len()) as u32,
                        v as u32,
                        (v + h.value.len()) as u32,
                    );
                }
                if scan.names_others && !keep_hop {
                    leave_out_named(resp.headers, &mut spans);
                }
                (
                    len,
                    resp.code.unwrap_or(0),
                    resp.version.unwrap_or(1),
                    resp.headers.len(),
                )
            }
            Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
            Err(e) => return Err(Failure::Protocol(format!("invalid response head: {e}"))),
        };
        // A copy of the head, so the read buffer stays unshared and is
        // reused for the next read instead of a new one being allocated.
        let raw = Bytes::copy_from_slice(&self.read[..len]);
        self.read.advance(len);
        let status = StatusCode::from_u16(code)
            .map_err(|_| Failure::Protocol(format!("invalid status code {code}")))?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            return Ok(Parsed::Interim);
        }
        let mut headers = HeaderMap::with_capacity(count);
        for &(ns, ne, vs, ve) in spans[..count].iter().filter(|s| s.1 != 0) {
            let name = HeaderName::from_bytes(&raw[ns as usize..ne as usize])
                .map_err(|_| Failure::Protocol("invalid header name in the response".into()))?;
            let value = HeaderValue::from_maybe_shared(raw.slice(vs as usize..ve as usize))
                .map_err(|_| Failure::Protocol(format!("invalid value of header {name}")))?;
            headers.append(name, value);
        }
        let version = if minor == 0 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        // RFC 9112, section 9.3: HTTP/1.1 stays open unless `close` is
        // said. An HTTP/1.0 upstream's persistence rests on a `keep-alive`
        // extension whose framing rules differ; its connection is never
        // pooled.
        let mut keep_alive = version == Version::HTTP_11 && !scan.close;
        let body = if status == StatusCode::SWITCHING_PROTOCOLS {
            keep_alive = false;
            Decoder::Upgrade
        } else if head_request
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            Decoder::Done
        } else if let Some(chunked) = scan.chunked {
            // A transfer coding overrides any length given beside it, but a
            // response with both may be framed differently by whoever sent
            // it (RFC 9112, section 6.3): this connection is not reused.
            if scan.length.is_some() || scan.bad_length {
                keep_alive = false;
            }
            headers.remove(header::CONTENT_LENGTH);
            if chunked {
                Decoder::Chunked(Chunk::Size)
            } else {
                keep_alive = false;
                Decoder::UntilClose
            }
        } else if scan.bad_length {
            return Err(Failure::Protocol("invalid content-length".into()));
        } else if let Some(n) = scan.length {
            if n == 0 {
                Decoder::Done
            } else {
                Decoder::Length(n)
            }
        } else {
            keep_alive = false;
            Decoder::UntilClose
        };
        Ok(Parsed::Final(Head {
            status,
            version,
            headers,
            body,
            keep_alive,
        }))
    }

    /// Reads whatever the socket has into the read buffer; `Ok(0)` at the
    /// end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < READ_CHUNK / 4 {
            self.read.reserve(READ_CHUNK);
        }
        // `read_buf` keeps no state between polls, so one poll of a fresh
        // future is a plain read into the buffer's spare room.
        let read = self.io.read_buf(&mut self.read);
        std::pin::pin!(read).poll(cx)
    }

    /// Hands the connection over to an upgraded protocol, with the bytes
    /// that arrived after the 101 response.
    pub(crate) fn into_upgraded(self) -> Upgraded {
        Upgraded {
            io: self.io,
            early: self.read.freeze(),
        }
    }
}

/// Writes the request head: request line, the headers as given except the
/// framing ones, then the framing this body needs.
fn encode_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    framing: Framing,
) {
    out.reserve(
        64 + target.len()
            + headers
                .iter()
                .map(|(k, v)| k.as_str().len() + v.len() + 4)
                .sum::<usize>(),
    );
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // The framing is always ours: a body-less request never carries the
    // client's `content-length`, whatever it said.
    for (name, value) in headers {
        if name == header::TRANSFER_ENCODING || name == header::CONTENT_LENGTH {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        // RFC 9110, section 8.6: a request whose method expects content says
        // that it has none.
        Framing::None if matches!(*method, Method::POST | Method::PUT | Method::PATCH) => {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        Framing::None => {}
        Framing::Length(n) => {
            out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// What the framing and hop-by-hop headers of a response head say.
#[derive(Debug, Default)]
struct Scan {
    /// `connection: close` was said.
    close: bool,
    /// `connection` names headers other than the hop-by-hop ones.
    names_others: bool,
    /// The length every `content-length` value agrees on.
    length: Option<u64>,
    /// A `content-length` value was not a number, or two disagreed.
    bad_length: bool,
    /// Whether the last transfer coding named is `chunked`; `None` when no
    /// `transfer-encoding` was given.
    chunked: Option<bool>,
}

/// The comma-separated tokens of a header value, trimmed, empty ones left out.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Whether `name` is one of the hop-by-hop headers that never cross a
/// proxy, whatever `connection` says.
fn is_hop_by_hop(name: &[u8]) -> bool {
    crate::proxy::hop_by_hop_index(name).is_some()
}

impl Scan {
    /// Takes in one header; says whether it is hop-by-hop.
    fn header(&mut self, name: &[u8], value: &[u8]) -> bool {
        match name.len() {
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for t in tokens(value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        self.close = true;
                    } else if !t.eq_ignore_ascii_case(b"keep-alive") && !is_hop_by_hop(t) {
                        self.names_others = true;
                    }
                }
                true
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                for t in tokens(value) {
                    match parse_length(t) {
                        Some(n) if self.length.is_none_or(|l| l == n) => self.length = Some(n),
                        _ => self.bad_length = true,
                    }
                }
                if value.trim_ascii().is_empty() {
                    self.bad_length = true;
                }
                false
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                if let Some(last) = tokens(value).last() {
                    self.chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
                }
                true
            }
            _ => is_hop_by_hop(name),
        }
    }
}

/// A `content-length` value: decimal digits only.
fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

/// Marks as left out (name end 0) every header that a `connection` header
/// names. Rare: `connection` nearly always says only `keep-alive` or
/// `close`.
fn leave_out_named(headers: &[httparse::Header<'_>], spans: &mut [(u32, u32, u32, u32)]) {
    let named: Vec<&[u8]> = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| tokens(h.value))
        .collect();
    for (span, h) in spans.iter_mut().zip(headers) {
        if named
            .iter()
            .any(|n| n.eq_ignore_ascii_case(h.name.as_bytes()))
        {
            span.1 = 0;
        }
    }
}

/// Where a chunked body's decoding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// Reading the trailer section (discarded), this many bytes so far.
    Trailers(usize),
}

/// How the response body is delimited, and how much of it is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decoder {
    /// Nothing (left) to read.
    Done,
    /// This many bytes left.
    Length(u64),
    /// Chunked transfer coding.
    Chunked(Chunk),
    /// Everything until the upstream closes the connection.
    UntilClose,
    /// A 101 response: the connection now belongs to another protocol.
    Upgrade,
}

impl Decoder {
    pub(crate) fn is_done(&self) -> bool {
        matches!(self, Decoder::Done | Decoder::Upgrade)
    }

    /// The next piece of the body, read from `conn`.
    pub(crate) fn poll_data(
        &mut self,
        conn: &mut Conn,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Failure>>> {
        loop {
            match *self {
                Decoder::Done | Decoder::Upgrade => return Poll::Ready(None),
                Decoder::Length(left) => {
                    if !conn.read.is_empty() {
                        let n = (conn.read.len() as u64).min(left);
                        let data = take(&mut conn.read, n as usize);
                        *self = if n == left {
                            Decoder::Done
                        } else {
                            Decoder::Length(left - n)
                        };
                        return Poll::Ready(Some(Ok(data)));
                    }
                }
                Decoder::UntilClose => {
                    if !conn.read.is_empty() {
                        let n = conn.read.len();
                        return Poll::Ready(Some(Ok(take(&mut conn.read, n))));
                    }
                }
                Decoder::Chunked(state) => {
                    if let Some(step) = self.chunk_step(state, conn)? {
                        return Poll::Ready(Some(Ok(step)));
                    }
                    if self.is_done() {
                        return Poll::Ready(None);
                    }
                    if *self != Decoder::Chunked(state) {
                        // Moved on without needing more input.
                        continue;
                    }
                }
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if *self == Decoder::UntilClose => {
                    *self = Decoder::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    return Poll::Ready(Some(Err(Failure::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "upstream closed the connection before the body ended",
                    )))))
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(Failure::Io(e)))),
            }
        }
    }

    /// One step of chunked decoding on what is buffered: data when some is
    /// there, `None` when it moved to another state or needs more bytes.
    fn chunk_step(&mut self, state: Chunk, conn: &mut Conn) -> Result<Option<Bytes>, Failure> {
        let buf = &mut conn.read;
        match state {
            Chunk::Size => {
                let Some(end) = buf.iter().position(|&b| b == b'\n') else {
                    if buf.len() > MAX_CHUNK_LINE {
                        return Err(Failure::Protocol("chunk-size line too long".into()));
                    }
                    return Ok(None);
                };
                let size = parse_chunk_size(&buf[..=end])?;
                buf.advance(end + 1);
                *self = Decoder::Chunked(if size == 0 {
                    Chunk::Trailers(0)
                } else {
                    Chunk::Data(size)
                });
                Ok(None)
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = (buf.len() as u64).min(left);
                let data = take(buf, n as usize);
                *self = Decoder::Chunked(if n == left {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left - n)
                });
                Ok(Some(data))
            }
            Chunk::DataEnd => {
                if buf.starts_with(b"\r\n") {
                    buf.advance(2);
                } else if buf.starts_with(b"\n") {
                    buf.advance(1);
                } else if buf.len() >= 2 || (buf.len() == 1 && buf[0] != b'\r') {
                    return Err(Failure::Protocol("chunk data not followed by CRLF".into()));
                } else {
                    return Ok(None);
                }
                *self = Decoder::Chunked(Chunk::Size);
                Ok(None)
            }
            Chunk::Trailers(seen) => {
                let Some(end) = buf.iter().position(|&b| b == b'\n') else {
                    if buf.len() > MAX_CHUNK_LINE {
                        return Err(Failure::Protocol("trailer line too long".into()));
                    }
                    return Ok(None);
                };
                let line = end + 1;
                let blank = matches!(&buf[..line], b"\r\n" | b"\n");
                buf.advance(line);
                if blank {
                    *self = Decoder::Done;
                } else if seen + line > MAX_TRAILERS {
                    return Err(Failure::Protocol("trailers too large".into()));
                } else {
                    *self = Decoder::Chunked(Chunk::Trailers(seen + line));
                }
                Ok(None)
            }
        }
    }
}

/// The first `n` bytes of `buf`, as a copy: the buffer stays unshared, so
/// the next read reuses it rather than allocating another. (The body goes
/// on to a socket or TLS writer that copies it anyway.)
fn take(buf: &mut BytesMut, n: usize) -> Bytes {
    let data = Bytes::copy_from_slice(&buf[..n]);
    buf.advance(n);
    data
}

/// The size on a chunk-size line (hex digits, then optional extensions).
fn parse_chunk_size(line: &[u8]) -> Result<u64, Failure> {
    let bad = || Failure::Protocol("invalid chunk size".into());
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
    let digits = digits.trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return Err(bad());
    }
    let mut size = 0u64;
    for &d in digits {
        let v = (d as char).to_digit(16).ok_or_else(bad)?;
        size = size * 16 + u64::from(v);
    }
    Ok(size)
}

/// A connection after a 101 response, handed to the upgraded protocol: the
/// bytes that came right after the response head are read first.
pub struct Upgraded {
    io: Stream,
    early: Bytes,
}

impl AsyncRead for Upgraded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.early.is_empty() {
            let n = this.early.len().min(buf.remaining());
            buf.put_slice(&this.early.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_are_hex_with_optional_extensions() {
        assert_eq!(parse_chunk_size(b"1a\r\n").unwrap(), 26);
        assert_eq!(parse_chunk_size(b"FF;name=value\r\n").unwrap(), 255);
        assert_eq!(parse_chunk_size(b"0\n").unwrap(), 0);
        assert!(parse_chunk_size(b"\r\n").is_err());
        assert!(parse_chunk_size(b"zz\r\n").is_err());
        assert!(parse_chunk_size(b"1000000000000000\r\n").is_err());
    }

    fn scan(headers: &[(&str, &str)]) -> (Scan, Vec<bool>) {
        let mut scan = Scan::default();
        let hops = headers
            .iter()
            .map(|(n, v)| scan.header(n.as_bytes(), v.as_bytes()))
            .collect();
        (scan, hops)
    }

    #[test]
    fn content_lengths_must_agree() {
        let (s, _) = scan(&[("Content-Length", "5"), ("content-length", "5, 5")]);
        assert_eq!((s.length, s.bad_length), (Some(5), false));
        for bad in [
            &[("content-length", "5"), ("content-length", "6")][..],
            &[("content-length", "-1")],
            &[("content-length", "")],
            &[("content-length", "99999999999999999999")],
        ] {
            assert!(scan(bad).0.bad_length, "{bad:?}");
        }
    }

    #[test]
    fn framing_and_connection_headers_are_read_and_are_hop_by_hop() {
        let (s, hops) = scan(&[
            ("Connection", "Keep-Alive, X-Trace"),
            ("Transfer-Encoding", "gzip, chunked"),
            ("Content-Type", "text/plain"),
            ("keep-alive", "timeout=5"),
            ("Content-Length", "3"),
        ]);
        assert!(!s.close && s.names_others);
        assert_eq!(s.chunked, Some(true));
        assert_eq!(hops, [true, true, false, true, false]);
        let (s, _) = scan(&[
            ("connection", "close, upgrade"),
            ("transfer-encoding", "chunked, gzip"),
        ]);
        assert!(s.close && !s.names_others);
        assert_eq!(s.chunked, Some(false));
    }

    #[test]
    fn the_head_carries_the_framing_the_body_needs() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("b"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("gzip"));
        let mut out = Vec::new();
        encode_head(&mut out, &Method::POST, "/x?y", &headers, Framing::Chunked);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /x?y HTTP/1.1\r\nhost: b\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        // A body-less request never carries the client's length.
        let mut out = Vec::new();
        encode_head(&mut out, &Method::GET, "/", &headers, Framing::None);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET / HTTP/1.1\r\nhost: b\r\n\r\n"
        );
        let mut out = Vec::new();
        encode_head(&mut out, &Method::POST, "/", &headers, Framing::None);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST / HTTP/1.1\r\nhost: b\r\ncontent-length: 0\r\n\r\n"
        );
    }
}
