//! An S3-compatible server for tests (`moto_server` from `pip install 'moto[server]'`, which
//! `scripts/test.sh` installs), and a TCP proxy in front of it that a test can take down, hang and
//! bring back (moto keeps its objects in memory: restarting it would lose them, so an outage is made
//! between the client and the server).

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::{Duration, Instant},
};

use crate::process::free_port;

/// A running `moto_server`, stopped on drop.
pub struct MotoS3 {
    child: Child,
    /// Its base URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    /// Its port.
    pub port: u16,
}

impl MotoS3 {
    /// Starts moto on a free loopback port. Panics with a clear message when it is not installed.
    pub fn start() -> Self {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server is not installed: run `bash scripts/test.sh`, or `pip install 'moto[server]'`");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen on {url}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { child, url, port }
    }

    /// Creates a bucket (moto takes unsigned path-style requests).
    pub fn create_bucket(&self, bucket: &str) {
        let response = ureq::put(&format!("{}/{bucket}", self.url))
            .send_empty()
            .expect("creating the bucket");
        assert!(response.status().is_success(), "{}", response.status());
    }

    /// The keys under `prefix` in `bucket`.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let mut response = ureq::get(&format!(
            "{}/{bucket}?list-type=2&prefix={prefix}",
            self.url
        ))
        .call()
        .expect("listing the bucket");
        let body = response.body_mut().read_to_string().expect("a listing");
        body.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for MotoS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the proxy does with connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Link {
    /// Forwards both ways.
    Up = 0,
    /// Resets every connection, new and open: a server that is gone.
    Down = 1,
    /// Accepts and reads, never answers: a server (or network) that hangs, the case client
    /// timeouts exist for.
    Hung = 2,
}

/// A TCP proxy on a free loopback port to `127.0.0.1:target`, whose link a test sets.
pub struct Proxy {
    /// The port clients connect to.
    pub port: u16,
    link: Arc<AtomicU8>,
}

impl Proxy {
    /// Starts forwarding to `target`.
    pub fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let port = listener.local_addr().expect("bound").port();
        let link = Arc::new(AtomicU8::new(Link::Up as u8));
        let state = link.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                match state.load(Ordering::SeqCst) {
                    l if l == Link::Down as u8 => {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    }
                    l if l == Link::Hung as u8 => {
                        let state = state.clone();
                        std::thread::spawn(move || swallow(client, &state));
                        continue;
                    }
                    _ => {}
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                for (from, to, from_client) in [
                    (client.try_clone(), server.try_clone(), true),
                    (server.try_clone(), client.try_clone(), false),
                ] {
                    let (Ok(from), Ok(to)) = (from, to) else {
                        continue;
                    };
                    let state = state.clone();
                    std::thread::spawn(move || pipe(from, to, &state, from_client));
                }
            }
        });
        Self { port, link }
    }

    /// Takes the server away (`false`) or brings it back (`true`).
    pub fn set_up(&self, up: bool) {
        self.set(if up { Link::Up } else { Link::Down });
    }

    /// Sets the link.
    pub fn set(&self, link: Link) {
        self.link.store(link as u8, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until either closes or the link leaves `Up`. When it hangs, the
/// client's side is kept open and what it sends is read and dropped (`from_client`) until the
/// link changes again; the server's side is closed.
fn pipe(mut from: TcpStream, mut to: TcpStream, link: &AtomicU8, from_client: bool) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = [0u8; 16 * 1024];
    while link.load(Ordering::SeqCst) == Link::Up as u8 {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if read_timed_out(&e) => {}
            Err(_) => break,
        }
    }
    if link.load(Ordering::SeqCst) == Link::Hung as u8 {
        match from_client {
            true => {
                let _ = to.shutdown(Shutdown::Both);
                swallow(from, link);
            }
            false => {
                let _ = from.shutdown(Shutdown::Both);
            }
        }
        return;
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// Reads and drops until the peer closes or the link is no longer hung, then closes.
fn swallow(mut from: TcpStream, link: &AtomicU8) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = [0u8; 16 * 1024];
    while link.load(Ordering::SeqCst) == Link::Hung as u8 {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if read_timed_out(&e) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
}

/// Whether a read with a timeout ended for the timeout only (the connection is fine).
fn read_timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}
