//! `vraid pool ...` and `vraid volume ...`: the client side of the pool
//! methods (`pool_methods`), with their text output.

use super::cli::{print_json, socket};
use super::client::{call, ClientError};
use super::pool_methods::{
    DeletedReply, PoolCreateParams, PoolParams, PoolSetParams, VolumeCreateParams,
    VolumeNameParams, VolumeNewNameParams, VolumeResizeParams, VolumeRevertParams,
};
use super::status::PoolVolumeStatus;
use crate::cli::{PoolCommand, VolumeCommand};
use crate::pool::check::CheckReport;
use crate::pool::service::PoolListing;
use crate::pool::VolumeInfo;

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// The text form of a pool listing (also in `vraid volume list`).
pub fn render_pool(p: &PoolListing) -> String {
    let s = &p.space;
    let events: Vec<String> = p.fill_events.iter().map(|t| format!("{t}%")).collect();
    let mut out = format!(
        "pool {}: {}cluster {} KiB, used {} of {} ({:.1}%), free {}, provisioned {} ({:.2}x \
         overcommit, {} volumes), fill events at {}\n",
        p.pool,
        match p.version {
            0 => String::new(),
            3 => "version 3 (split clusters), ".to_string(),
            v => format!("version {v}, "),
        },
        s.cluster_size >> 10,
        gib(s.used_bytes),
        gib(s.total_bytes),
        p.used_percent,
        gib(s.free_bytes),
        gib(s.provisioned_bytes),
        p.overcommit,
        p.volumes.len(),
        if events.is_empty() {
            "none".to_string()
        } else {
            events.join(", ")
        }
    );
    for v in &p.volumes {
        out.push_str(&render_volume(v));
    }
    out
}

fn render_volume(v: &VolumeInfo) -> String {
    let kind = match (&v.parent, v.snapshot) {
        (Some(p), true) => format!("snapshot of {p}"),
        (Some(p), false) => format!("clone of {p}"),
        _ => "volume".to_string(),
    };
    format!(
        "  {}: {kind}, size {}, mapped {}\n",
        v.name,
        gib(v.size),
        gib(v.mapped_bytes)
    )
}

/// The text form of the pool volumes of `status`: one line each with
/// space, client I/O, cache, QoS and vhost socket.
pub fn render_pool_volumes(volumes: &[PoolVolumeStatus]) -> String {
    let mut out = String::new();
    for v in volumes {
        let io = &v.io;
        let qos = if v.qos.limits.any() {
            format!(", qos {}", v.qos.limits.describe())
        } else {
            String::new()
        };
        let vhost = v
            .vhost_socket
            .as_ref()
            .map_or_else(String::new, |s| format!(", vhost-user-blk {s}"));
        out.push_str(&format!(
            "volume {} (pool {}): {} of {} mapped; io {} reads, {} writes, {} errors; cache {}{qos}{vhost}\n",
            v.name,
            v.pool,
            gib(v.mapped_bytes),
            gib(v.size),
            io.reads,
            io.writes,
            io.errors,
            super::status::wire_name(&v.cache.mode),
        ));
    }
    out
}

/// `vraid pool ...`.
pub fn pool(cmd: PoolCommand) -> Result<(), ClientError> {
    match cmd {
        PoolCommand::Create {
            control,
            array,
            cluster_size,
            force,
            split_clusters,
        } => {
            let p = PoolCreateParams {
                array,
                cluster_size: Some(cluster_size),
                force,
                split: split_clusters,
            };
            let reply: PoolListing = call(&socket(&control), "pool.create", &p)?;
            print!("{}", render_pool(&reply));
        }
        PoolCommand::List { control, json } => {
            let reply: Vec<PoolListing> = call(&socket(&control), "pool.list", &())?;
            if json {
                print_json(&reply);
            } else {
                reply.iter().for_each(|p| print!("{}", render_pool(p)));
            }
        }
        PoolCommand::Set {
            control,
            pool,
            fill_events,
        } => {
            let p = PoolSetParams {
                pool,
                fill_events: fill_events.0,
            };
            let reply: PoolListing = call(&socket(&control), "pool.set", &p)?;
            print!("{}", render_pool(&reply));
        }
        PoolCommand::Check {
            control,
            pool,
            repair,
            force,
            json,
        } => {
            let p = PoolParams {
                pool: pool.clone(),
                repair,
                force,
            };
            let reply: CheckReport = call(&socket(&control), "pool.check", &p)?;
            if json {
                print_json(&reply);
            } else {
                println!(
                    "pool {pool}: {} volumes, {} map pages, {} clusters referenced, {} split records",
                    reply.volumes, reply.map_pages, reply.clusters, reply.split_records
                );
                reply
                    .repaired
                    .iter()
                    .for_each(|p| println!("  repaired: {p}"));
                reply.problems.iter().for_each(|p| println!("  {p}"));
            }
            if !reply.clean() {
                return Err(ClientError::Rpc {
                    code: 1,
                    message: format!("pool {pool}: {} problems", reply.problems.len()),
                });
            }
        }
    }
    Ok(())
}

/// `vraid volume ...`.
pub fn volume(cmd: VolumeCommand) -> Result<(), ClientError> {
    let shown: VolumeInfo = match cmd {
        VolumeCommand::Create {
            control,
            pool,
            name,
            size,
            vhost_socket,
            vhost_queues,
        } => {
            let p = VolumeCreateParams {
                pool,
                name,
                size,
                vhost_socket: vhost_socket.map(|s| std::path::absolute(&s).unwrap_or(s)),
                num_queues: vhost_queues,
            };
            return create_volume(&control, &p);
        }
        VolumeCommand::Delete { control, name } => {
            let _: DeletedReply = call(
                &socket(&control),
                "volume.delete",
                &VolumeNameParams { name: name.clone() },
            )?;
            println!("{name}: deleted");
            return Ok(());
        }
        VolumeCommand::List { control, json } => {
            return pool(PoolCommand::List { control, json });
        }
        VolumeCommand::Resize {
            control,
            name,
            size,
            force,
        } => call(
            &socket(&control),
            "volume.resize",
            &VolumeResizeParams { name, size, force },
        )?,
        VolumeCommand::Revert {
            control,
            name,
            snapshot,
            force,
        } => {
            let p = VolumeRevertParams {
                name,
                snapshot,
                force,
            };
            call(&socket(&control), "volume.revert", &p)?
        }
        VolumeCommand::Rename {
            control,
            name,
            new_name,
        } => call(
            &socket(&control),
            "volume.rename",
            &VolumeNewNameParams { name, new_name },
        )?,
        VolumeCommand::Snapshot {
            control,
            name,
            snapshot,
        } => share(&control, "volume.snapshot", name, snapshot)?,
        VolumeCommand::Clone {
            control,
            name,
            clone,
        } => share(&control, "volume.clone", name, clone)?,
    };
    print!("{}", render_volume(&shown));
    Ok(())
}

/// `vraid volume create`: the new volume and its vhost socket if any.
fn create_volume(
    control: &crate::cli::ControlArg,
    p: &VolumeCreateParams,
) -> Result<(), ClientError> {
    let shown: VolumeInfo = call(&socket(control), "volume.create", p)?;
    print!("{}", render_volume(&shown));
    if let Some(s) = &p.vhost_socket {
        println!("  vhost-user-blk: {}", s.display());
    }
    Ok(())
}

/// `vraid volume snapshot` / `clone`.
fn share(
    control: &crate::cli::ControlArg,
    method: &str,
    name: String,
    new_name: String,
) -> Result<VolumeInfo, ClientError> {
    call(
        &socket(control),
        method,
        &VolumeNewNameParams { name, new_name },
    )
}
