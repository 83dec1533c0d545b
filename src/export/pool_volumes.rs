//! The exports of pool volumes (docs/FORMAT.md §11): each volume an NBD
//! export named as the volume and, when asked for (config `[[pool.volume]]
//! vhost_user_blk`, `vraid volume create --vhost-socket`), a
//! vhost-user-blk socket of its own, both over the volume's one client
//! stack (QoS, faults, write log, cache) and I/O counters.
//!
//! ```text
//!  PoolService ─ExportSink─► PoolExports ─► NBD ExportTable (name)
//!                               │          └► VhostServer (socket), if planned
//!                               └ NamedStacks: ClientStack + IoStats + socket
//! ```
//!
//! A vhost socket is planned by volume name before the volume is exported
//! (at start-up from the config, or by `volume.create`); the plan stays
//! with the name (a rename moves it, a delete drops it). A socket that
//! cannot be bound leaves the volume on NBD only, the reason kept for the
//! caller ([`PoolExports::vhost_error`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::block::BlockDevice;
use crate::export::fence::Fence;
use crate::export::nbd::meta::MetaContexts;
use crate::export::nbd::{Export, ExportTable};
use crate::export::vhost::{VhostExport, VhostServer};
use crate::metrics::stats::StatsDevice;
use crate::pool::service::ExportSink;
use crate::volfault::named::{NamedClient, NamedStacks};
use crate::volfault::ClientStack;

/// A pool volume's vhost-user-blk socket and queue count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VhostPlan {
    /// Socket path.
    pub socket: PathBuf,
    /// Request queues (1..=16).
    pub num_queues: u16,
}

/// The NBD and vhost-user-blk exports of every pool volume.
pub struct PoolExports {
    table: ExportTable,
    stacks: NamedStacks,
    plans: Mutex<HashMap<String, VhostPlan>>,
    servers: Mutex<HashMap<String, VhostServer>>,
    failed: Mutex<HashMap<String, String>>,
    /// The fences in front of the arrays' own exports, by array name.
    fences: Mutex<HashMap<String, Arc<Fence>>>,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for PoolExports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolExports")
            .field("plans", &*lock(&self.plans))
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PoolExports {
    /// Exports into `table`, stacks into `stacks`; vhost requests run on
    /// `runtime`.
    pub fn new(
        table: ExportTable,
        stacks: NamedStacks,
        runtime: tokio::runtime::Handle,
    ) -> Arc<PoolExports> {
        Arc::new(PoolExports {
            table,
            stacks,
            plans: Mutex::new(HashMap::new()),
            servers: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            fences: Mutex::new(HashMap::new()),
            runtime,
        })
    }

    /// The client stacks (shared with the control plane).
    pub fn stacks(&self) -> &NamedStacks {
        &self.stacks
    }

    /// Registers the fence in front of array `name`'s own exports (cut
    /// when a pool takes the array over).
    pub fn add_array(&self, name: &str, fence: Arc<Fence>) {
        lock(&self.fences).insert(name.to_string(), fence);
    }

    /// Takes over the running vhost server of array `name` (stopped when a
    /// pool takes the array over).
    pub fn adopt_vhost(&self, name: &str, server: VhostServer) {
        lock(&self.servers).insert(name.to_string(), server);
    }

    /// Plans a vhost socket for volume `name` (started when it is exported).
    pub fn plan_vhost(&self, name: &str, plan: VhostPlan) {
        lock(&self.plans).insert(name.to_string(), plan);
    }

    /// Forgets the vhost plan of `name` (a create that failed).
    pub fn drop_plan(&self, name: &str) {
        lock(&self.plans).remove(name);
        lock(&self.failed).remove(name);
    }

    /// Why the planned socket of `name` does not serve, if it failed.
    pub fn vhost_error(&self, name: &str) -> Option<String> {
        lock(&self.failed).get(name).cloned()
    }

    /// The volume whose vhost plan names `socket` (any spelling of it).
    pub fn socket_owner(&self, socket: &Path) -> Option<String> {
        let same = |p: &Path| {
            p == socket
                || std::path::absolute(p).ok() == std::path::absolute(socket).ok()
                || std::fs::canonicalize(p)
                    .ok()
                    .is_some_and(|c| Some(c) == std::fs::canonicalize(socket).ok())
        };
        lock(&self.plans)
            .iter()
            .find(|(_, plan)| same(&plan.socket))
            .map(|(n, _)| n.clone())
    }

    fn start_vhost(&self, name: &str, device: Arc<dyn BlockDevice>, read_only: bool) {
        let Some(plan) = lock(&self.plans).get(name).cloned() else {
            return;
        };
        let export = VhostExport {
            device,
            socket: plan.socket.clone(),
            name: name.to_string(),
            read_only,
            num_queues: plan.num_queues,
            min_io: 4096,
            opt_io: 4096,
        };
        match VhostServer::start(export, self.runtime.clone()) {
            Ok(server) => {
                tracing::info!(volume = name, socket = %plan.socket.display(), "pool volume on vhost-user-blk");
                lock(&self.failed).remove(name);
                self.stacks.set_vhost(name, Some(plan.socket));
                lock(&self.servers).insert(name.to_string(), server);
            }
            Err(e) => {
                let why = crate::daemon::error_chain(&e);
                tracing::error!(volume = name, error = %why, "pool volume not exported over vhost-user-blk");
                lock(&self.failed).insert(name.to_string(), why);
            }
        }
    }

    /// Stops the vhost server of `name`, if any, and waits for it (its
    /// frontend disconnected, its requests drained).
    fn stop_vhost(&self, name: &str) {
        let Some(server) = lock(&self.servers).remove(name) else {
            return;
        };
        stop_blocking(server);
    }

    /// Stops every vhost server (shutdown).
    pub async fn shutdown(&self) {
        let servers: Vec<VhostServer> = lock(&self.servers).drain().map(|(_, s)| s).collect();
        for s in servers {
            if let Err(e) = tokio::task::spawn_blocking(move || s.shutdown()).await {
                tracing::warn!("vhost-user-blk shutdown failed: {e}");
            }
        }
    }
}

/// Runs a vhost server's (blocking) shutdown without stalling the runtime:
/// in place on a multi-thread runtime, else on a thread of its own.
fn stop_blocking(server: VhostServer) {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(|| server.shutdown()),
        _ => {
            let _ = std::thread::Builder::new()
                .name("vhost-stop".into())
                .spawn(move || server.shutdown());
        }
    }
}

impl ExportSink for PoolExports {
    fn add(
        &self,
        name: &str,
        description: String,
        device: Arc<dyn BlockDevice>,
        read_only: bool,
        contexts: MetaContexts,
    ) {
        let stack = ClientStack::new(device);
        let client = NamedClient::new(stack);
        let top: Arc<dyn BlockDevice> = Arc::new(StatsDevice::new(
            client.stack.device.clone(),
            client.stats.clone(),
        ));
        self.stop_vhost(name);
        self.stacks.insert_client(name, client);
        self.table.insert(Export {
            name: name.to_string(),
            description,
            device: top.clone(),
            read_only,
            preferred_block: 4096,
            multi_conn: true,
            contexts,
        });
        self.start_vhost(name, top, read_only);
    }

    fn remove(&self, name: &str) {
        if let Some(fence) = lock(&self.fences).remove(name) {
            fence.cut();
        }
        self.stop_vhost(name);
        lock(&self.plans).remove(name);
        lock(&self.failed).remove(name);
        self.table.remove(name);
        self.stacks.remove(name);
    }

    fn clients(&self, name: &str) -> usize {
        let vhost = lock(&self.servers)
            .get(name)
            .is_some_and(VhostServer::has_frontend);
        self.table.holders(name) + usize::from(vhost)
    }

    fn rename(&self, old: &str, new: &str) -> bool {
        let Some(export) = self.table.remove(old) else {
            return false;
        };
        self.stacks.rename(old, new);
        // One guard each: a second `lock` inside an `if let` on the first
        // would deadlock (the scrutinee's guard lives through the block).
        {
            let mut plans = lock(&self.plans);
            if let Some(plan) = plans.remove(old) {
                plans.insert(new.to_string(), plan);
            }
        }
        {
            let mut servers = lock(&self.servers);
            if let Some(s) = servers.remove(old) {
                servers.insert(new.to_string(), s);
            }
        }
        self.table.insert(Export {
            name: new.to_string(),
            description: export.description.clone(),
            device: export.device.clone(),
            read_only: export.read_only,
            preferred_block: export.preferred_block,
            multi_conn: export.multi_conn,
            contexts: export.contexts.clone(),
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member::memory::MemDevice;
    use tokio::runtime::Handle;

    fn volume(name: &str) -> Arc<dyn BlockDevice> {
        Arc::new(MemDevice::new(name, 8 << 20))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn volumes_get_an_nbd_export_and_their_planned_socket_which_follow_renames() {
        let dir = tempfile::tempdir().unwrap();
        let table = ExportTable::default();
        let sink = PoolExports::new(table.clone(), Default::default(), Handle::current());
        let sock = dir.path().join("v.sock");
        sink.plan_vhost(
            "v",
            VhostPlan {
                socket: sock.clone(),
                num_queues: 1,
            },
        );

        sink.add("v", "d".into(), volume("v"), false, Default::default());
        sink.add(
            "plain",
            "d".into(),
            volume("plain"),
            false,
            Default::default(),
        );
        let held = table.lookup("v").unwrap();

        assert!(sock.exists(), "the planned socket was not bound");
        assert_eq!(sink.vhost_error("v"), None);
        assert_eq!(sink.socket_owner(&sock).as_deref(), Some("v"));
        assert_eq!(sink.stacks().client("v").unwrap().vhost, Some(sock.clone()));
        assert_eq!(sink.stacks().client("plain").unwrap().vhost, None);
        assert_eq!(sink.clients("v"), 1, "a holder of the export is a client");
        drop(held);
        assert_eq!(sink.clients("v"), 0);
        assert!(sink.rename("v", "w"));
        assert!(table.lookup("v").is_none() && table.lookup("w").is_some());
        assert_eq!(sink.socket_owner(&sock).as_deref(), Some("w"));
        assert_eq!(sink.stacks().client("w").unwrap().vhost, Some(sock.clone()));
        sink.remove("w");
        assert!(!sock.exists(), "a removed volume's socket stayed");
        assert!(table.lookup("w").is_none() && sink.stacks().get("w").is_none());
        assert_eq!(sink.socket_owner(&sock), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_socket_path_that_is_a_file_is_refused_and_removing_an_array_cuts_its_fence() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("notes");
        std::fs::write(&file, b"keep").unwrap();
        let sink = PoolExports::new(
            ExportTable::default(),
            Default::default(),
            Handle::current(),
        );
        let fence = Fence::new();
        sink.add_array("arr", fence.clone());
        sink.plan_vhost(
            "v",
            VhostPlan {
                socket: file.clone(),
                num_queues: 1,
            },
        );

        sink.add("v", "d".into(), volume("v"), false, Default::default());
        sink.remove("arr");

        let why = sink.vhost_error("v").expect("a file taken as a socket");
        assert!(why.contains("not a socket"), "{why}");
        assert_eq!(std::fs::read(&file).unwrap(), b"keep");
        assert!(fence.is_cut());
    }
}
