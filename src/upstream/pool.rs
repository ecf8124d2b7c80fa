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
/// How many of an origin's URLs are kept parsed.
const URLS: usize = 16;

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
    /// Its URLs last asked for, parsed (as they are and in origin form):
    /// an upstream's few endpoints are asked again and again, and parsing
    /// one cost some 800 instructions. The oldest goes first.
    urls: Mutex<Vec<(Box<str>, Target)>>,
}

/// A request's URL parsed: absolute (for HTTP/2, and to connect) and in
/// origin form (the path and query an HTTP/1.1 request line carries).
#[derive(Clone)]
pub struct Target {
    pub absolute: http::Uri,
    pub origin_form: http::Uri,
}

impl Target {
    fn parse(url: &str) -> Option<Target> {
        let absolute = http::Uri::try_from(url).ok()?;
        let mut parts = http::uri::Parts::default();
        parts.path_and_query = Some(match absolute.path_and_query() {
            Some(p) if p.as_str().starts_with('/') => p.clone(),
            // No path (`https://host` or `https://host?q`): the root's.
            p => {
                let query = p.and_then(http::uri::PathAndQuery::query);
                let text = query.map_or_else(|| "/".to_string(), |q| format!("/?{q}"));
                http::uri::PathAndQuery::try_from(text).ok()?
            }
        });
        let origin_form = http::Uri::from_parts(parts).ok()?;
        Some(Target {
            absolute,
            origin_form,
        })
    }
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
    /// `url` (one of this origin's) parsed, or `None` when it is not a URL
    /// HTTP can carry.
    pub fn target(&self, url: &str) -> Option<Target> {
        let mut urls = lock(&self.urls);
        if let Some((_, target)) = urls.iter().find(|(u, _)| **u == *url) {
            return Some(target.clone());
        }
        let target = Target::parse(url)?;
        if urls.len() >= URLS {
            urls.remove(0);
        }
        urls.push((url.into(), target.clone()));
        Some(target)
    }

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

    #[test]
    fn an_origins_urls_are_parsed_once_into_both_forms_and_kept_boundedly() {
        let origin = Pool::default().origin("http://h:1");
        let t = origin.target("http://h:1/v1/chat/completions?x=1").unwrap();
        assert_eq!(t.absolute, "http://h:1/v1/chat/completions?x=1");
        assert_eq!(t.origin_form, "/v1/chat/completions?x=1");
        assert_eq!(origin.target("http://h:1").unwrap().origin_form, "/");
        assert_eq!(
            origin.target("http://h:1?k=v").unwrap().origin_form,
            "/?k=v"
        );
        // Not a URL HTTP can carry: nothing kept.
        assert!(origin.target("http://h:1/a b").is_none());
        assert_eq!(lock(&origin.urls).len(), 3);
        // The same text is the same entry; past the bound the oldest goes.
        origin.target("http://h:1/v1/chat/completions?x=1").unwrap();
        assert_eq!(lock(&origin.urls).len(), 3);
        for i in 0..URLS {
            origin.target(&format!("http://h:1/m{i}")).unwrap();
        }
        let urls = lock(&origin.urls);
        assert_eq!(urls.len(), URLS);
        assert_eq!(&*urls[0].0, "http://h:1/m0");
        assert_eq!(&*urls[URLS - 1].0, format!("http://h:1/m{}", URLS - 1));
    }
}
