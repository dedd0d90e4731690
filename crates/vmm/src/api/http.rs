//! HTTP/1.1 framing for the API: requests are parsed by `httparse` out of a connection's
//! buffer (headers, then a `Content-Length` body), responses written with Firecracker's status
//! codes and JSON bodies. Limits keep a client from making Kite buffer without end.

use super::types::Fault;

/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 8 << 10;
/// Largest request body by default (Firecracker's default too).
pub const MAX_BODY: usize = 51200;
/// Largest request body now: `--http-api-max-payload-size` sets it before the API starts.
static BODY_LIMIT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(MAX_BODY);

/// The largest request body taken.
pub fn max_body() -> usize {
    BODY_LIMIT.load(std::sync::atomic::Ordering::Relaxed)
}

/// `--http-api-max-payload-size`.
pub fn set_max_body(bytes: usize) {
    BODY_LIMIT.store(bytes, std::sync::atomic::Ordering::Relaxed);
}
const MAX_HEADERS: usize = 32;

/// One complete request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
    /// The client asked to close the connection after this request.
    pub close: bool,
}

/// A response: a status and, except for 204, a JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Option<String>,
}

impl Response {
    pub fn no_content() -> Self {
        Self {
            status: 204,
            body: None,
        }
    }

    pub fn json<T: serde::Serialize>(value: &T) -> Self {
        match serde_json::to_string(value) {
            Ok(body) => Self {
                status: 200,
                body: Some(body),
            },
            Err(e) => Self::error(500, format!("cannot encode the response: {e}")),
        }
    }

    /// An error with Firecracker's body, `{"fault_message": "..."}`.
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        let fault = Fault {
            fault_message: crate::one_line(&message.into()),
        };
        Self {
            status,
            body: Some(
                serde_json::to_string(&fault)
                    .unwrap_or_else(|_| r#"{"fault_message":"error"}"#.into()),
            ),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::error(400, message)
    }

    /// The bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            204 => "No Content",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            413 => "Payload Too Large",
            503 => "Service Unavailable",
            _ => "Internal Server Error",
        };
        let mut out = format!("HTTP/1.1 {} {reason}\r\nServer: Kite\r\n", self.status);
        match &self.body {
            Some(body) => {
                out.push_str(&format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ));
            }
            None => out.push_str("\r\n"),
        }
        out.into_bytes()
    }
}

/// What the bytes received so far hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole request yet.
    Partial,
    /// A request, and how many bytes of the buffer it took.
    Complete(Request, usize),
    /// Not a request Kite can serve: answer this and close the connection (the stream cannot
    /// be resynchronised).
    Invalid(Response),
}

/// Parse the first request in `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Parsed::Invalid(Response::error(
                413,
                format!("request head larger than {MAX_HEAD} bytes"),
            ));
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Invalid(Response::bad_request(format!(
                "more than {MAX_HEADERS} headers"
            )));
        }
        Err(e) => {
            return Parsed::Invalid(Response::bad_request(format!(
                "malformed HTTP request: {e}"
            )));
        }
    };
    if head_len > MAX_HEAD {
        return Parsed::Invalid(Response::error(
            413,
            format!("request head larger than {MAX_HEAD} bytes"),
        ));
    }
    let method = req.method.unwrap_or_default().to_string();
    let path = req.path.unwrap_or_default().to_string();
    let mut length = 0usize;
    let mut close = req.version == Some(0);
    for h in req.headers.iter() {
        let value = String::from_utf8_lossy(h.value);
        let value = value.trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            match value.parse::<usize>() {
                Ok(n) => length = n,
                Err(_) => {
                    return Parsed::Invalid(Response::bad_request(format!(
                        "invalid Content-Length '{value}'"
                    )));
                }
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Invalid(Response::bad_request(
                "Transfer-Encoding is not supported: send the body with a Content-Length",
            ));
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    let limit = max_body();
    if length > limit {
        return Parsed::Invalid(Response::error(
            413,
            format!("request body of {length} bytes is larger than the {limit} allowed"),
        ));
    }
    let end = head_len + length;
    if buf.len() < end {
        return Parsed::Partial;
    }
    Parsed::Complete(
        Request {
            method,
            path,
            body: buf[head_len..end].to_vec(),
            close,
        },
        end,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_partial_and_pipelined_requests() {
        let one = b"PUT /actions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        for cut in 0..one.len() {
            assert_eq!(parse(&one[..cut]), Parsed::Partial, "{cut}");
        }
        let mut two = one.to_vec();
        two.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let Parsed::Complete(req, used) = parse(&two) else {
            panic!("not complete");
        };
        assert_eq!(
            (req.method.as_str(), req.path.as_str()),
            ("PUT", "/actions")
        );
        assert_eq!(req.body, b"hello");
        assert_eq!(used, one.len());
        let Parsed::Complete(req, _) = parse(&two[used..]) else {
            panic!("second not complete");
        };
        assert_eq!(
            (req.path.as_str(), req.body.len(), req.close),
            ("/", 0, false)
        );
    }

    #[test]
    fn limits_and_garbage_are_answered() {
        let status = |p: Parsed| match p {
            Parsed::Invalid(r) => r.status,
            other => panic!("{other:?}"),
        };
        assert_eq!(status(parse(b"\x00\x01garbage\r\n\r\n")), 400);
        assert_eq!(
            status(parse(b"PUT / HTTP/1.1\r\nContent-Length: 999999\r\n\r\n")),
            413
        );
        assert_eq!(
            status(parse(b"PUT / HTTP/1.1\r\nContent-Length: x\r\n\r\n")),
            400
        );
        assert_eq!(
            status(parse(
                b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            )),
            400
        );
        let mut long = b"GET /".to_vec();
        long.resize(MAX_HEAD + 10, b'a');
        assert_eq!(status(parse(&long)), 413);
    }

    #[test]
    fn responses_on_the_wire() {
        assert_eq!(
            Response::no_content().encode(),
            b"HTTP/1.1 204 No Content\r\nServer: Kite\r\n\r\n"
        );
        let text = String::from_utf8(Response::bad_request("no \"kernel\"").encode()).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(
            text.ends_with(r#"{"fault_message":"no \"kernel\""}"#),
            "{text}"
        );
        // A newline the client put in a name stays escaped: the message is one line.
        let r = Response::bad_request("unknown field `a\nb`");
        let fault: Fault = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
        assert_eq!(fault.fault_message, "unknown field `a\\nb`");
    }
}
