//! Kept-alive connections answer small requests without waiting on Nagle's algorithm: the
//! server sets TCP_NODELAY on every connection it accepts. Checked on the server's own socket
//! (this test shares the process with the in-process server), never by timing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{BorrowedFd, RawFd};

use crate::harness::{Backend, Server};

/// The server's end of `client`: the socket in this process whose peer is the client.
fn server_side(client: &TcpStream) -> Option<RawFd> {
    let client_addr = client.local_addr().ok()?;
    for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<RawFd>().ok()) else { continue };
        // SAFETY: the descriptor stays open while the server holds the connection (the client
        // keeps it alive); a descriptor that is not a socket just fails the calls below.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let sock = socket2::SockRef::from(&borrowed);
        if sock.peer_addr().ok().and_then(|a| a.as_socket()) == Some(client_addr) {
            return Some(fd);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_connections_disable_nagle() {
    let server = Server::start(Backend::Sqlite).await;
    let addr = server.base.trim_start_matches("http://").to_owned();
    let (fd, nodelay) = tokio::task::spawn_blocking(move || {
        let mut client = TcpStream::connect(&addr).unwrap();
        // Two requests on one kept-alive connection, so the server has surely accepted it.
        for _ in 0..2 {
            client.write_all(format!("GET /v2/ HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).unwrap();
            let mut buf = [0u8; 512];
            let n = client.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
        }
        let fd = server_side(&client).expect("the server's end of the connection in this process");
        // SAFETY: as above; the client still holds the connection open.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let nodelay = socket2::SockRef::from(&borrowed).tcp_nodelay().unwrap();
        // The client's own socket is the control: the default is Nagle on.
        assert!(!client.nodelay().unwrap(), "a fresh socket has Nagle's algorithm on");
        (fd, nodelay)
    })
    .await
    .unwrap();
    assert!(nodelay, "server socket {fd} was accepted without TCP_NODELAY");
}
