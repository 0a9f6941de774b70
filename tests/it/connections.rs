//! What slow and many clients can hold: half-sent requests are closed after the
//! header timeout, one address gets a bounded number of connections (429 past
//! it), everyone together another (503 past it), and the daemon keeps
//! answering others meanwhile. Loopback only: 127.0.0.1, .2 and .3 stand for
//! three machines; every loop is bounded in count and time.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::Daemon;

const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
const PER_ADDRESS: usize = 8;
const MAX: usize = 12;

fn from(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// A TCP connection to the daemon from `source`.
async fn connect(d: &Daemon, source: IpAddr) -> TcpStream {
    let addr: SocketAddr = d.url.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Everything the daemon sends until it closes, or `None` if it has not closed
/// within `limit`. A reset counts as closed.
async fn until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut answer = Vec::new();
    match tokio::time::timeout(limit, stream.read_to_end(&mut answer)).await {
        Ok(_) => Some(String::from_utf8_lossy(&answer).into_owned()),
        Err(_) => None,
    }
}

/// `GET /healthz` from `source` on a connection of its own; the answer's status.
async fn healthz(d: &Daemon, source: IpAddr) -> u16 {
    let mut stream = connect(d, source).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: dynapi\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = until_closed(&mut stream, Duration::from_secs(5))
        .await
        .expect("the daemon answers /healthz and closes");
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Checks a refusal sent without reading a request: `status`, `Retry-After`,
/// `Connection: close` and the JSON error shape.
fn assert_refused(answer: &str, status: u16) {
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status} ")),
        "{answer}"
    );
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("\r\nretry-after: 1"), "{head}");
    assert!(head.contains("\r\nconnection: close"), "{head}");
    let json: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(json["error"]["code"], "too_many_connections", "{body}");
    assert!(json["error"]["message"].is_string());
}

#[tokio::test]
async fn half_sent_requests_are_bounded_per_address_and_closed_after_the_header_timeout() {
    let d = Daemon::start_with(|c| {
        c.connections.header_timeout = HEADER_TIMEOUT;
        c.connections.per_address = PER_ADDRESS;
        c.connections.max = MAX;
    })
    .await;
    let attacker = from(1);

    // The attacker's connections: half a request line and headers, a silent
    // one, and half an HTTP/2 preface (where the version is not known yet).
    let started = Instant::now();
    let mut held = Vec::new();
    for i in 0..PER_ADDRESS {
        let mut stream = connect(&d, attacker).await;
        let half: &[u8] = match i {
            0 => b"",
            1 => b"PRI * HTTP/2.0\r\n",
            _ => b"GET /healthz HTTP/1.1\r\nHost: dynapi\r\nX-Slow: ",
        };
        stream.write_all(half).await.unwrap();
        held.push(stream);
    }
    // Settle: the daemon has accepted them all before more come.
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Past the bound, each further connection from that address is answered at
    // once, without a request, and closed.
    for _ in 0..20 {
        let mut stream = connect(&d, attacker).await;
        let answer = until_closed(&mut stream, Duration::from_secs(2))
            .await
            .expect("a refused connection is closed at once");
        assert_refused(&answer, 429);
    }
    // Others are served meanwhile.
    assert_eq!(healthz(&d, from(2)).await, 200);
    assert!(
        started.elapsed() < HEADER_TIMEOUT,
        "the checks above ran while the attacker's connections were still open"
    );

    // The half-sent connections are closed after the header timeout, not
    // before, and not long after.
    for (i, stream) in held.iter_mut().enumerate() {
        let closed = until_closed(stream, Duration::from_secs(5)).await;
        assert!(closed.is_some(), "connection {i} is still open");
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= HEADER_TIMEOUT - Duration::from_millis(100),
        "closed after {elapsed:?}, before the header timeout"
    );
    assert!(elapsed < HEADER_TIMEOUT * 4, "closed after {elapsed:?}");

    // Their places are free again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(healthz(&d, attacker).await, 200);
}

#[tokio::test]
async fn past_the_overall_bound_connections_are_answered_503_and_places_come_back() {
    let d = Daemon::start_with(|c| {
        c.connections.header_timeout = Duration::from_secs(30);
        c.connections.per_address = PER_ADDRESS;
        c.connections.max = MAX;
    })
    .await;
    // Held from two addresses, each within its own bound, together the whole.
    let mut held = Vec::new();
    for i in 0..MAX {
        let source = from(if i < PER_ADDRESS { 1 } else { 2 });
        let mut stream = connect(&d, source).await;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .unwrap();
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..5 {
        let mut stream = connect(&d, from(3)).await;
        let answer = until_closed(&mut stream, Duration::from_secs(2))
            .await
            .expect("a refused connection is closed at once");
        assert_refused(&answer, 503);
    }
    // A client closing frees its place for someone else.
    drop(held.pop());
    let mut served = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        served = Some(healthz(&d, from(3)).await);
        if served == Some(200) {
            break;
        }
    }
    assert_eq!(served, Some(200));
}
