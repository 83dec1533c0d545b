//! Command-line definitions (clap). Parsing only; `main.rs` dispatches.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::raid::Level;
use crate::units::parse_size;

/// Userspace software RAID 0/1/5, exported over NBD.
#[derive(Debug, Parser)]
#[command(name = "vraid", version, about, propagate_version = true)]
pub struct Cli {
    /// Log filter (tracing env-filter syntax); overrides RUST_LOG.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log: Option<String>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an array: write superblocks to MEMBERs (files are created sparse if missing).
    Create(CreateArgs),
    /// Print a member's superblock.
    Examine(ExamineArgs),
    /// Assemble arrays and export them over NBD.
    Serve(ServeArgs),
}

/// `vraid create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// RAID level: 0, 1 or 5.
    #[arg(long, value_parser = parse_level)]
    pub level: Level,
    /// Chunk size (power of two, 4K to 16M).
    #[arg(long, default_value = "64K", value_parser = parse_size_arg)]
    pub chunk_size: u64,
    /// Size of member files created because they do not exist.
    #[arg(long, default_value = "256M", value_parser = parse_size_arg)]
    pub member_size: u64,
    /// Array name (the NBD export name).
    #[arg(long, default_value = "vol0")]
    pub name: String,
    /// Overwrite members that already hold a vraid superblock.
    #[arg(long)]
    pub force: bool,
    /// Member files or block devices, in role order.
    #[arg(required = true, value_name = "MEMBER")]
    pub members: Vec<PathBuf>,
}

/// `vraid examine`.
#[derive(Debug, Args)]
pub struct ExamineArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Member file or block device.
    #[arg(value_name = "MEMBER")]
    pub member: PathBuf,
}

/// Which member I/O engine to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EngineArg {
    /// io_uring, falling back to pread/pwrite if unavailable.
    Auto,
    /// io_uring only.
    Uring,
    /// pread/pwrite on a thread pool.
    Sync,
}

/// `vraid serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Serve every volume in this TOML file.
    #[arg(long, value_name = "FILE", conflicts_with = "members")]
    pub config: Option<PathBuf>,
    /// NBD TCP listen address (default 127.0.0.1:10809 unless only --nbd-socket is given).
    #[arg(long, value_name = "HOST:PORT")]
    pub nbd: Option<SocketAddr>,
    /// NBD Unix socket path.
    #[arg(long, value_name = "PATH")]
    pub nbd_socket: Option<PathBuf>,
    /// Member I/O engine (also VRAID_IO_ENGINE).
    #[arg(long, value_enum)]
    pub io_engine: Option<EngineArg>,
    /// Export read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Directory for the built-in demo (used when no members and no config are given).
    #[arg(long, value_name = "DIR", default_value = "vraid-data")]
    pub demo_dir: PathBuf,
    /// Also export the volume over vhost-user-blk on this Unix socket
    /// (the demo uses DIR/vol0.sock unless given). Config files use the
    /// per-volume `vhost_user_blk` key instead.
    #[arg(long, value_name = "PATH", conflicts_with = "config")]
    pub vhost_user_blk: Option<PathBuf>,
    /// Request queues of the vhost-user-blk export (1 to 16).
    #[arg(long, value_name = "N", default_value_t = crate::config::DEFAULT_NUM_QUEUES,
          value_parser = clap::value_parser!(u16).range(1..=16))]
    pub vhost_queues: u16,
    /// Members of one array to assemble and serve (any order).
    #[arg(value_name = "MEMBER")]
    pub members: Vec<PathBuf>,
}

fn parse_level(s: &str) -> Result<Level, String> {
    s.parse()
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn create_parses_sizes_and_level() {
        let cli = Cli::try_parse_from([
            "vraid",
            "create",
            "--level",
            "5",
            "--chunk-size",
            "128K",
            "a",
            "b",
            "c",
        ])
        .unwrap();
        let Command::Create(args) = cli.command else {
            panic!("not create")
        };
        assert_eq!(args.level, Level::Raid5);
        assert_eq!(args.chunk_size, 128 << 10);
        assert_eq!(args.member_size, 256 << 20);
        assert_eq!(args.members.len(), 3);
    }

    #[test]
    fn serve_takes_vhost_socket_and_queue_count() {
        let cli = Cli::try_parse_from([
            "vraid",
            "serve",
            "--vhost-user-blk",
            "/tmp/v.sock",
            "--vhost-queues",
            "2",
            "m0",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(args.vhost_user_blk, Some(PathBuf::from("/tmp/v.sock")));
        assert_eq!(args.vhost_queues, 2);
        assert!(Cli::try_parse_from(["vraid", "serve", "--vhost-queues", "0"]).is_err());
        assert!(Cli::try_parse_from(["vraid", "serve", "--vhost-queues", "17"]).is_err());
    }

    #[test]
    fn create_rejects_bad_level_and_size() {
        assert!(Cli::try_parse_from(["vraid", "create", "--level", "6", "a"]).is_err());
        assert!(
            Cli::try_parse_from(["vraid", "create", "--level", "1", "--chunk-size", "x", "a"])
                .is_err()
        );
    }
}
