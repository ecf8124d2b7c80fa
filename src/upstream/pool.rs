//! Upstream connections kept between requests, over hyper's connection API.
//!
//! One table of origins (`scheme://host:port`), each with the HTTP/1.1
//! connections idle on it and at most one shared HTTP/2 connection (where
//! TLS negotiated it). A request takes an idle connection or opens one; an
//! HTTP/1.1 connection comes back when its answer's body has been read to
//! the end (an answer dropped before its end closes it). No task is spawned
//! per request and nothing per request is allocated for the table: the
//! lookup borrows the origin from the request's URL.
//!
//! An idle connection is dropped once it has been idle for [`IDLE`]: found
//! so when it is next looked at, and by a sweep of the whole table at most
//! every [`SWEEP`], made by whichever request comes back then.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hyper::client::conn::{http1, http2};

use super::Payload;

/// How long a connection is kept unused.
pub const IDLE: Duration = Duration::from_secs(90);
/// How often at most the whole table is swept of expired connections.
const SWEEP: Duration = Duration::from_secs(30);

type Table = HashMap<Box<str>, Arc<Origin>, foldhash::fast::RandomState>;

#[derive(Default)]
pub struct Pool {
    origins: Mutex<Table>,
    swept: Mutex<Option<Instant>>,
}

/// The connections of one origin.
#[derive(Default)]
pub struct Origin {
    /// The `Host` header of its HTTP/1.1 requests (its authority without
    /// user information); `None` when HTTP cannot carry it.
    pub host: Option<http::HeaderValue>,
    idle: Mutex<Vec<(http1::SendRequest<Payload>, Instant)>>,
    shared: Mutex<Option<http2::SendRequest<Payload>>>,
}

/// A connection ready for one request.
pub enum Taken {
    H1(http1::SendRequest<Payload>),
    H2(http2::SendRequest<Payload>),
}

/// An HTTP/1.1 connection lent to a request, given back by
/// [`Lease::give_back`] once its answer has been read to its end.
pub struct Lease {
    pool: Arc<Pool>,
    origin: Arc<Origin>,
    sender: http1::SendRequest<Payload>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pool {
    /// The origin's entry, made on first use.
    pub fn origin(&self, origin: &str) -> Arc<Origin> {
        let mut table = lock(&self.origins);
        if let Some(o) = table.get(origin) {
            return o.clone();
        }
        let o = Arc::new(Origin {
            host: host_of(origin),
            ..Origin::default()
        });
        table.insert(origin.into(), o.clone());
        o
    }

    /// Drops every connection idle for longer than [`IDLE`], and the
    /// origins left with none, at most once every [`SWEEP`].
    fn sweep(&self, now: Instant) {
        {
            let mut swept = lock(&self.swept);
            match *swept {
                Some(at) if now.duration_since(at) < SWEEP => return,
                _ => *swept = Some(now),
            }
        }
        lock(&self.origins).retain(|_, o| {
            o.expire(now);
            let shared_open = lock(&o.shared).as_ref().is_some_and(|s| !s.is_closed());
            // An origin a request holds (a lease, or one about to open a
            // connection) is kept: what it gives back must find it.
            shared_open || !lock(&o.idle).is_empty() || Arc::strong_count(o) > 1
        });
    }
}

/// `host[:port]` of `scheme://[user@]host[:port]`, as a header value.
fn host_of(origin: &str) -> Option<http::HeaderValue> {
    let (_, authority) = origin.split_once("://")?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    http::HeaderValue::from_str(host).ok()
}

impl Origin {
    /// An open connection ready for a request, if one is idle.
    pub fn take(&self, now: Instant) -> Option<Taken> {
        {
            let mut shared = lock(&self.shared);
            match shared.as_ref() {
                Some(s) if !s.is_closed() => return Some(Taken::H2(s.clone())),
                Some(_) => *shared = None,
                None => {}
            }
        }
        let mut idle = lock(&self.idle);
        // Newest first: the one most likely still open at the far end.
        while let Some((sender, since)) = idle.pop() {
            if sender.is_ready() && now.duration_since(since) < IDLE {
                return Some(Taken::H1(sender));
            }
        }
        None
    }

    /// Keeps an HTTP/2 connection for every later request to the origin.
    pub fn share(&self, sender: http2::SendRequest<Payload>) {
        *lock(&self.shared) = Some(sender);
    }

    fn expire(&self, now: Instant) {
        lock(&self.idle).retain(|(s, since)| !s.is_closed() && now.duration_since(*since) < IDLE);
    }
}

impl Lease {
    pub fn new(pool: Arc<Pool>, origin: Arc<Origin>, sender: http1::SendRequest<Payload>) -> Self {
        Self {
            pool,
            origin,
            sender,
        }
    }

    /// The answer was read to its end: the connection is idle again. One
    /// not yet ready (its task has not seen the end) is waited for by a
    /// task of its own, as rarely needed as it is cheap.
    #[allow(clippy::disallowed_methods)] // ends with the connection, as its own task does
    pub fn give_back(self) {
        let Lease {
            pool,
            origin,
            mut sender,
        } = self;
        let now = Instant::now();
        if sender.is_ready() {
            lock(&origin.idle).push((sender, now));
        } else if !sender.is_closed() {
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    lock(&origin.idle).push((sender, Instant::now()));
                }
            });
        }
        pool.sweep(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_found_by_their_text_and_swept_when_unused() {
        let pool = Pool::default();
        let a = pool.origin("http://127.0.0.1:1");
        let again = pool.origin("http://127.0.0.1:1");
        assert!(Arc::ptr_eq(&a, &again));
        assert_eq!(a.host.as_ref().unwrap(), "127.0.0.1:1");
        let proxied = pool.origin("https://user:pw@api.example.com");
        assert_eq!(proxied.host.as_ref().unwrap(), "api.example.com");
        drop(proxied);
        assert!(a.take(Instant::now()).is_none());
        drop((a, again));
        pool.sweep(Instant::now());
        assert!(lock(&pool.origins).is_empty());
        // Held by a request: kept.
        let held = pool.origin("http://127.0.0.1:2");
        *lock(&pool.swept) = None;
        pool.sweep(Instant::now());
        assert_eq!(lock(&pool.origins).len(), 1);
        drop(held);
    }
}
