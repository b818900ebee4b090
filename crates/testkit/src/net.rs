//! Addresses where nothing answers, built so that no other process can take them while a test
//! runs. (Binding a port and dropping the listener "to get a free port" races: anything else on
//! the machine may bind that port before the test connects to it.)
//!
//! - [`RefusingAddress`]: a socket bound to a port but never `listen()`ed. The port stays
//!   reserved for as long as the value lives, and the kernel answers every connection attempt
//!   with a reset: "connection refused", at once, every time.
//! - [`SilentListener`]: a listener that is open but never accepts: connections complete in the
//!   kernel's backlog and then nothing is ever said on them (a backend that hangs).
//! - [`closes_every_connection`]: accepts and closes each connection at once (a backend that
//!   drops every call).

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// A loopback port that refuses every connection for as long as this value lives.
#[derive(Debug)]
pub struct RefusingAddress {
    /// Bound, never listening: this is what holds the port.
    _socket: TcpSocket,
    address: SocketAddr,
}

impl RefusingAddress {
    /// Reserves a fresh port on 127.0.0.1.
    pub fn new() -> std::io::Result<Self> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let address = socket.local_addr()?;
        Ok(Self {
            _socket: socket,
            address,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://127.0.0.1:<port>`, as a backend URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

/// A loopback listener that never accepts: a connection attempt succeeds (the kernel queues it)
/// and then waits forever for an answer.
#[derive(Debug)]
pub struct SilentListener {
    _listener: TcpListener,
    address: SocketAddr,
}

impl SilentListener {
    pub async fn new() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        Ok(Self {
            _listener: listener,
            address,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

/// A loopback "server" that accepts every TCP connection and closes it at once, for as long as
/// the runtime runs.
pub async fn closes_every_connection() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            drop(socket);
        }
    });
    Ok(address)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncReadExt as _;
    use tokio::net::TcpStream;

    use super::*;

    #[tokio::test]
    async fn a_refusing_address_refuses_every_time_while_it_lives() {
        let refusing = RefusingAddress::new().unwrap();
        for _ in 0..3 {
            let error = TcpStream::connect(refusing.address()).await.unwrap_err();
            assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        // The port stays taken: nobody else can listen there meanwhile.
        assert!(TcpListener::bind(refusing.address()).await.is_err());
    }

    #[tokio::test]
    async fn a_silent_listener_connects_but_never_answers() {
        let silent = SilentListener::new().await.unwrap();
        let mut stream = TcpStream::connect(silent.address()).await.unwrap();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut byte)).await;
        assert!(read.is_err(), "no answer, no close: {read:?}");
    }

    #[tokio::test]
    async fn a_closing_server_closes_at_once() {
        let address = closes_every_connection().await.unwrap();
        let mut stream = TcpStream::connect(address).await.unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
            .await
            .expect("closed, not held");
        // A close (0 bytes) or a reset, never data.
        assert!(read.map_or(true, |bytes| bytes == 0));
    }
}
