//! A fault-injecting TCP proxy for one direction of one link between two
//! nodes. Node A reaches node B through the proxy (A's config lists the
//! proxy's port as B's address), so cutting the proxy cuts exactly A → B:
//! Raft messages travel on one connection per direction, which makes
//! asymmetric partitions a matter of cutting one proxy.
//!
//! Cut: open connections are closed and new ones closed at once. Heal: new
//! connections are forwarded again (nodes reconnect on their own).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

pub struct Proxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
    /// Bumped on every cut, so that connections opened before it close.
    epoch: Arc<AtomicU64>,
}

impl Proxy {
    /// Listens on a free port and forwards to `target`.
    pub async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let epoch = Arc::new(AtomicU64::new(0));
        let (c, e) = (cut.clone(), epoch.clone());
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else { return };
                if c.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let (c, e, target) = (c.clone(), e.clone(), target.clone());
                tokio::spawn(async move { forward(inbound, target, c, e).await });
            }
        });
        Proxy { port, cut, epoch }
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }
}

async fn forward(mut inbound: TcpStream, target: String, cut: Arc<AtomicBool>, epoch: Arc<AtomicU64>) {
    let born = epoch.load(Ordering::SeqCst);
    let Ok(mut outbound) = TcpStream::connect(&target).await else { return };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (mut ri, mut wi) = inbound.split();
    let (mut ro, mut wo) = outbound.split();
    let watch = async {
        // A cut ends the connection; checked every few milliseconds.
        loop {
            if cut.load(Ordering::SeqCst) || epoch.load(Ordering::SeqCst) != born {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await; // poll interval
        }
    };
    tokio::select! {
        _ = tokio::io::copy(&mut ri, &mut wo) => {}
        _ = tokio::io::copy(&mut ro, &mut wi) => {}
        _ = watch => {}
    }
    let _ = wo.shutdown().await;
    let _ = wi.shutdown().await;
}
