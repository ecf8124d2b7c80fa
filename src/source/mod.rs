//! Where operator data comes from. Each source publishes whole [`Catalog`]
//! snapshots into a [`CatalogHandle`]; the request path only ever loads one.

pub mod file;
pub mod postgres;

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::catalog::Catalog;

/// The live catalog, swapped as a whole on every reload.
#[derive(Clone)]
pub struct CatalogHandle {
    current: Arc<ArcSwap<Catalog>>,
    /// Set once a first snapshot has been published: `/readyz` waits for it.
    loaded: Arc<std::sync::atomic::AtomicBool>,
}

impl CatalogHandle {
    pub fn new() -> Self {
        Self {
            current: Arc::new(ArcSwap::from_pointee(Catalog::empty())),
            loaded: Arc::default(),
        }
    }

    pub fn load(&self) -> Arc<Catalog> {
        self.current.load_full()
    }

    pub fn publish(&self, catalog: Catalog) {
        self.current.store(Arc::new(catalog));
        self.loaded
            .store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Default for CatalogHandle {
    fn default() -> Self {
        Self::new()
    }
}
