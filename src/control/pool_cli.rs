//! `vraid pool ...` and `vraid volume ...`: the client side of the pool
//! methods (`pool_methods`), with their text output.

use super::cli::{print_json, socket};
use super::client::{call, ClientError};
use super::pool_methods::{
    DeletedReply, PoolCreateParams, PoolParams, VolumeCreateParams, VolumeNameParams,
    VolumeNewNameParams, VolumeResizeParams, VolumeRevertParams,
};
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
    let mut out = format!(
        "pool {}: cluster {} KiB, used {} of {}, free {}, provisioned {} ({} volumes)\n",
        p.pool,
        s.cluster_size >> 10,
        gib(s.used_bytes),
        gib(s.total_bytes),
        gib(s.free_bytes),
        gib(s.provisioned_bytes),
        p.volumes.len()
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

/// `vraid pool ...`.
pub fn pool(cmd: PoolCommand) -> Result<(), ClientError> {
    match cmd {
        PoolCommand::Create {
            control,
            array,
            cluster_size,
            force,
        } => {
            let p = PoolCreateParams {
                array,
                cluster_size: Some(cluster_size),
                force,
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
                    "pool {pool}: {} volumes, {} map pages, {} clusters referenced",
                    reply.volumes, reply.map_pages, reply.clusters
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
        } => call(
            &socket(&control),
            "volume.create",
            &VolumeCreateParams { pool, name, size },
        )?,
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
