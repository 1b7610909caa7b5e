//! The DNS server: UDP and TCP on one address, the zone's answers for cluster names, every
//! other query forwarded over UDP to the upstream resolvers in turn (SERVFAIL when none
//! answers). Queries in flight and TCP connections are bounded; a query over the bound is
//! dropped (the client retries), never queued.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};
use tracing::debug;

use crate::wire::{Reply, reply};
use crate::zone::Zone;

/// Queries answered or forwarded at once.
pub const MAX_IN_FLIGHT: usize = 1024;
/// TCP connections served at once.
pub const MAX_TCP_CONNECTIONS: usize = 256;
/// How long an upstream has to answer before the next one is tried.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a TCP connection may sit idle between queries.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest DNS message over UDP this server reads (EDNS sizes included).
const UDP_MESSAGE_MAX: usize = 4096;

/// What a query needs: the current zone and where to forward.
#[derive(Clone)]
pub struct Resolver {
    pub zone: watch::Receiver<Arc<Zone>>,
    pub upstreams: Arc<Vec<SocketAddr>>,
}

impl Resolver {
    /// The response bytes for one query.
    pub async fn resolve(&self, query: &[u8]) -> Option<Vec<u8>> {
        let zone = self.zone.borrow().clone();
        match reply(&zone, query) {
            Reply::Answer(bytes) => Some(bytes),
            Reply::Forward => Some(self.forward(query).await.unwrap_or_else(|| servfail(query))),
        }
    }

    async fn forward(&self, query: &[u8]) -> Option<Vec<u8>> {
        for upstream in self.upstreams.iter() {
            let bind: SocketAddr = if upstream.is_ipv4() {
                "0.0.0.0:0".parse().ok()?
            } else {
                "[::]:0".parse().ok()?
            };
            let Ok(socket) = UdpSocket::bind(bind).await else {
                continue;
            };
            if socket.send_to(query, upstream).await.is_err() {
                continue;
            }
            let mut buf = vec![0u8; UDP_MESSAGE_MAX];
            match tokio::time::timeout(UPSTREAM_TIMEOUT, socket.recv_from(&mut buf)).await {
                Ok(Ok((n, from))) if from == *upstream && n >= 2 && buf[..2] == query[..2] => {
                    buf.truncate(n);
                    return Some(buf);
                }
                _ => debug!(%upstream, "upstream did not answer"),
            }
        }
        None
    }
}

/// SERVFAIL for `query` (its ID and question kept when it parses).
fn servfail(query: &[u8]) -> Vec<u8> {
    use hickory_proto::op::{Message, MessageType, ResponseCode};
    match Message::from_vec(query) {
        Ok(q) => {
            let mut m = Message::new();
            m.set_id(q.id())
                .set_message_type(MessageType::Response)
                .set_op_code(q.op_code())
                .set_recursion_desired(q.recursion_desired())
                .set_recursion_available(true)
                .set_response_code(ResponseCode::ServFail)
                .add_queries(q.queries().iter().cloned());
            m.to_vec().unwrap_or_default()
        }
        Err(_) => Vec::new(),
    }
}

/// Serves UDP on `udp` and TCP on `tcp` until the tasks are dropped.
pub async fn serve(udp: UdpSocket, tcp: TcpListener, resolver: Resolver) {
    let udp = Arc::new(udp);
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let connections = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    let udp_loop = {
        let resolver = resolver.clone();
        let in_flight = in_flight.clone();
        async move {
            let mut buf = vec![0u8; UDP_MESSAGE_MAX];
            loop {
                let Ok((n, client)) = udp.recv_from(&mut buf).await else {
                    continue;
                };
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    debug!("too many queries in flight; dropped one");
                    continue;
                };
                let query = buf[..n].to_vec();
                let (udp, resolver) = (udp.clone(), resolver.clone());
                tokio::spawn(async move {
                    if let Some(bytes) = resolver.resolve(&query).await
                        && !bytes.is_empty()
                    {
                        let _ = udp.send_to(&bytes, client).await;
                    }
                    drop(permit);
                });
            }
        }
    };
    let tcp_loop = async move {
        loop {
            let Ok((stream, _)) = tcp.accept().await else {
                continue;
            };
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                continue;
            };
            let resolver = resolver.clone();
            tokio::spawn(async move {
                serve_tcp(stream, resolver).await;
                drop(permit);
            });
        }
    };
    tokio::join!(udp_loop, tcp_loop);
}

/// One TCP connection: length-prefixed queries until EOF or idleness.
async fn serve_tcp(mut stream: TcpStream, resolver: Resolver) {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut query))
            .await
            .is_err()
        {
            return;
        }
        let Some(bytes) = resolver.resolve(&query).await else {
            return;
        };
        let Ok(n) = u16::try_from(bytes.len()) else {
            return;
        };
        if stream.write_all(&n.to_be_bytes()).await.is_err()
            || stream.write_all(&bytes).await.is_err()
        {
            return;
        }
    }
}
