//! The floor of switchyard's own stack: a reverse proxy made of nothing but
//! tokio and hyper (server, and client over one upstream connection per
//! client connection, or hyper-util's pooled client as switchyard uses),
//! forwarding every request to the mock as it came. Run by the bench as a
//! process of its own (this executable again, `FLOOR_UPSTREAM` set) so that
//! callgrind counts what these layers cost before any gateway logic.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// The environment variable naming the mock's address; its presence makes
/// this executable the floor proxy.
pub const UPSTREAM: &str = "FLOOR_UPSTREAM";
/// `pooled`: hyper-util's pooled client; anything else: one hyper client
/// connection per client connection.
pub const CLIENT: &str = "FLOOR_CLIENT";

/// Serves on a free port (printed as `listening <addr>` on stdout) until
/// killed.
pub fn run() {
    let upstream: SocketAddr = std::env::var(UPSTREAM).unwrap().parse().unwrap();
    let pooled = std::env::var(CLIENT).is_ok_and(|v| v == "pooled");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("listening {}", listener.local_addr().unwrap());
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build_http::<Incoming>();
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let _ = tcp.set_nodelay(true);
            if pooled {
                tokio::spawn(serve_pooled(tcp, client.clone(), upstream));
            } else {
                tokio::spawn(serve_direct(tcp, upstream));
            }
        }
    });
}

type Pooled = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Incoming,
>;

async fn serve_pooled(tcp: tokio::net::TcpStream, client: Pooled, upstream: SocketAddr) {
    let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
        let client = client.clone();
        async move {
            let uri = format!("http://{upstream}{}", request.uri().path());
            *request.uri_mut() = uri.parse().unwrap();
            let response = client.request(request).await.unwrap();
            Ok::<_, Infallible>(response)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tcp), service)
        .await;
}

async fn serve_direct(tcp: tokio::net::TcpStream, upstream: SocketAddr) {
    let out = tokio::net::TcpStream::connect(upstream).await.unwrap();
    let _ = out.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(out))
        .await
        .unwrap();
    tokio::spawn(conn);
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
        let sender = sender.clone();
        async move {
            let response = sender.lock().await.send_request(request).await.unwrap();
            Ok::<_, Infallible>(response)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tcp), service)
        .await;
}
